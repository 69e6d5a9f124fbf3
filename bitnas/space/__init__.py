"""Search spaces: operations (fp32/binary twins), module structures, spaces, genotypes."""
from bitnas.space.config import OpConfig
from bitnas.space.operations import OPS, build_op
from bitnas.space.spaces import SPACES, SearchSpace, get_space
from bitnas.space.structures import STRUCTURES

__all__ = ["OPS", "OpConfig", "SPACES", "STRUCTURES", "SearchSpace", "build_op", "get_space"]
