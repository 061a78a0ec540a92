"""snnexp: config-driven spiking neural network experiments."""

__version__ = "0.1.0"
