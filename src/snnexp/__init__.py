"""snnexp: config-driven spiking neural network experiments."""

import os
from pathlib import Path

from snnexp import moved

__version__ = "0.1.0"

# The CPU kernels (snnexp/ops/kernels) run on Python threads beside PyTorch's OpenMP threads. Left to its default
# wait policy, an OpenMP thread spins for a while after each parallel region (a convolution, a BN) and holds a core
# the kernels need: the passive policy makes the default convnet's training step faster, and SpikingJelly's no
# slower (bench/bench_train_step.py; docs/performance.md, "Figures behind the code"). The
# OpenMP runtime reads the variable when torch loads it, so this works where snnexp is imported before torch (the
# `snnexp` command does; a script can `import snnexp` first). A policy the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

moved.install()  # old module paths (snnexp.neurons, snnexp.layers, ...) still import, naming the new place


def __getattr__(name: str):
    """snnexp.compose, snnexp.fit, snnexp.load (snnexp.api): imported when first used, so that `import snnexp` and
    the command's config checks stay free of torch."""
    if name in ("compose", "fit", "load"):
        from snnexp import api

        return getattr(api, name)
    raise AttributeError(f"module 'snnexp' has no attribute {name!r}")


def cache_home() -> Path:
    """Where snnexp keeps what it can rebuild (compiled kernels, event frames, the digits split):
    $XDG_CACHE_HOME/snnexp, else ~/.cache/snnexp."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "snnexp"


def conf_dir() -> Path:
    """snnexp's own config folder. conf/ travels inside the wheel (snnexp/conf); in a source checkout or editable
    install it is the repository's conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise SystemExit("snnexp: cannot find its configs (conf/train.yaml); reinstall snnexp")
