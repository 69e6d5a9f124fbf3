"""bitnas: neural architecture search for binary (1-bit) neural networks."""

__version__ = "0.1.0"
