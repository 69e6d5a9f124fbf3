"""`python -m bitnas ...` (used by torchrun)."""
import sys

from bitnas.cli import main

sys.exit(main())
