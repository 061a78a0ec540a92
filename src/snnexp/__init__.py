"""snnexp: config-driven spiking neural network experiments."""

import os
from pathlib import Path

__version__ = "0.1.0"


def cache_home() -> Path:
    """Where snnexp keeps what it can rebuild (compiled kernels, event frames, the digits split):
    $XDG_CACHE_HOME/snnexp, else ~/.cache/snnexp."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "snnexp"
