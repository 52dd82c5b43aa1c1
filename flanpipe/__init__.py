"""flanpipe: templates + taxonomy -> packed instruction-tuning mixtures."""

__version__ = "0.1.0"
