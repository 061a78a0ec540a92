"""Where modules moved when the package took the shape of conf/ (issue 30): old import paths and the targets that
older checkpoints name still work.

- `import snnexp.neurons`, `from snnexp.layers import BatchNormThroughTime`: an import hook (installed by
  snnexp/__init__.py) gives a stand-in module whose names are those of the new place, with a FutureWarning that names
  the new place once per old module.
- A checkpoint's stored config names the old places (`snnexp.neurons.PLIF`): `new_targets` maps them to the new ones
  before snnexp.trust checks them against our config groups (train/checkpoint.py, stored_config).
- Classes renamed in place (RENAMED): norm=bn's BN, `snnexp.nn.norms.BatchNormThroughTime`, is BatchNormOverTime since
  issue 33 (BNTT, SpikingJelly's BatchNormThroughTime2d, is a BN per time step: BatchNormPerTimeStep). The old name
  imports from its module with a FutureWarning (snnexp/nn/norms.py); a stored config naming it, at either of its
  places, is mapped to the new name by `new_targets`.

Torch-free, like trust.py.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any, Dict, Optional

MODULES = {  # old module -> new module
    "snnexp.neurons.kernels": "snnexp.ops.kernels", "snnexp.neurons.fused": "snnexp.ops.fused",
    "snnexp.neurons.pooled": "snnexp.ops.pooled", "snnexp.neurons.normalised": "snnexp.ops.normalised",
    "snnexp.neurons": "snnexp.nn.neurons", "snnexp.models": "snnexp.nn.models", "snnexp.fusion": "snnexp.nn.fusion",
    "snnexp.pooling": "snnexp.nn.pooling", "snnexp.recurrent": "snnexp.nn.recurrent",
    "snnexp.encoders": "snnexp.nn.encoders", "snnexp.surrogate": "snnexp.nn.surrogate",
    "snnexp.losses": "snnexp.nn.losses", "snnexp.checkpoint": "snnexp.train.checkpoint",
    "snnexp.resume": "snnexp.train.resume", "snnexp.distributed": "snnexp.train.distributed",
    "snnexp.session": "snnexp.train.session", "snnexp.memory": "snnexp.train.memory",
    "snnexp.diagnose": "snnexp.train.diagnose", "snnexp.metrics": "snnexp.report.metrics",
    "snnexp.logging": "snnexp.report.tensorboard", "snnexp.activity": "snnexp.report.activity",
    "snnexp.cost": "snnexp.report.cost", "snnexp.compare": "snnexp.report.compare",
    "snnexp.harness": "snnexp.report.neurobench",
}
SPLIT = {  # an old module whose names went to several new ones: name -> new module
    "snnexp.layers": {
        **dict.fromkeys(["run_layers", "feed", "SeqToANN", "SeqFlatten", "SeqDropout", "Repeated", "repeat_in_time",
                         "repeated_in_time"], "snnexp.nn.layers"),
        **dict.fromkeys(["BatchNormThroughTime", "ThresholdDependentBatchNorm", "NeuNorm", "NoNorm"],
                        "snnexp.nn.norms"),
        **dict.fromkeys(["RateReadout", "VotingReadout", "LeakyIntegrator", "MembraneReadout"], "snnexp.nn.readouts"),
    },
    "snnexp.engine": {
        **dict.fromkeys(["Run", "EVAL_SEED", "resolve_device", "seed_everything", "build_model", "build_run",
                         "EpochOrder", "make_loader"], "snnexp.train.build"),
        **dict.fromkeys(["autocast", "forward", "train_epoch"], "snnexp.train.epoch"),
        **dict.fromkeys(["evaluate", "evaluate_checkpoint", "require_neurobench", "neurobench_results"],
                        "snnexp.train.evaluate"),
        **dict.fromkeys(["setup", "new_train_state", "describe", "fit"], "snnexp.train.loop"),
    },
}

RENAMED = {  # old target -> new target, after the move above
    "snnexp.nn.norms.BatchNormThroughTime": "snnexp.nn.norms.BatchNormOverTime",
}


def new_module(old: str) -> Optional[str]:
    """The new place of module `old` (or of a module inside it), or None where it did not move."""
    for prefix, new in MODULES.items():  # the longer prefixes come first
        if old == prefix or old.startswith(prefix + "."):
            return new + old[len(prefix):]
    return None


def new_target(target: str) -> str:
    """A `_target_` (module.name) at its new place and under its new name; anything else as it is."""
    module, _, name = target.rpartition(".")
    if module in SPLIT and name in SPLIT[module]:
        target = f"{SPLIT[module][name]}.{name}"
    elif new_module(module):
        target = f"{new_module(module)}.{name}"
    return RENAMED.get(target, target)


def new_targets(node: Any) -> Any:
    """A copy of a stored config (dicts and lists) with every `_target_` string at its new place."""
    if isinstance(node, dict):
        return {k: new_target(v) if k == "_target_" and isinstance(v, str) else new_targets(v) for k, v in node.items()}
    if isinstance(node, list):
        return [new_targets(v) for v in node]
    return node


class _StandIn(importlib.abc.Loader):
    """Loads an old module path as a module whose names are looked up at the new place(s)."""

    def create_module(self, spec):
        old = spec.name
        module = types.ModuleType(old)
        module.__path__ = []  # a package, so that an old submodule path imports too
        if old in SPLIT:
            places: Dict[str, str] = SPLIT[old]
            where = ", ".join(sorted(set(places.values())))
            module.__getattr__ = lambda name: _name_from(old, places, name)
        else:
            where = new_module(old)
            module.__getattr__ = lambda name: getattr(importlib.import_module(where), name)
        warnings.warn(f"{old} moved: import from {where} instead", FutureWarning, stacklevel=2)
        return module

    def exec_module(self, module):
        pass


def _name_from(old: str, places: Dict[str, str], name: str):
    if name not in places:
        raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved: see snnexp/moved.py)")
    return getattr(importlib.import_module(places[name]), name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in SPLIT or new_module(fullname):
            return importlib.machinery.ModuleSpec(fullname, _StandIn(), is_package=True)
        return None


def install() -> None:
    """Put the finder first on sys.meta_path (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
