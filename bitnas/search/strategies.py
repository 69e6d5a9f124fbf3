"""Import every strategy module so each registers itself in STRATEGIES."""
from bitnas.search import cpnas, darts, pcdarts, random_search, ubnas, zero_cost  # noqa: F401
