"""snnexp from Python (a notebook, a script): the same configs, runs and checkpoints as the command line.

    cfg = snnexp.compose(["neuron=lif", "trainer.epochs=2"])   # composed from conf/ and checked, as `snnexp train`
    metrics = snnexp.fit(cfg, "outputs/notebook/lif")           # trains into that run folder, as `snnexp train`
    run = snnexp.load("outputs/notebook/lif")                   # a run folder or a checkpoint file
    run.metrics["best_test_acc"], run.model, run.config.neuron
    run.scalars("test/acc")                                     # [(epoch, value)], as TensorBoard draws them
    run.evaluate()                                              # a test pass, as `snnexp eval`

A loaded checkpoint is data: its config is checked as `snnexp eval` checks it (only targets our config folders
name; snnexp.trust) before anything is built from it. docs/python.md shows the example script examples/python_api.py.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig, OmegaConf

from snnexp import conf_dir
from snnexp.config import validate
from snnexp.errors import CheckpointError, ConfigError

PathLike = Union[str, Path]


def compose(overrides: Sequence[str] = (), config_dir: Optional[PathLike] = None) -> DictConfig:
    """The config `snnexp train <overrides>` would run with, checked as the command checks it (value ranges, parts
    that do not go together): ConfigError otherwise. `config_dir`: a folder of your own configs searched before
    snnexp's (as --config-dir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    from snnexp.train.build import part_problems

    search = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3", job_name="train"):
            cfg = hydra_compose("train", overrides=[*search, *overrides])
    except HydraException as e:  # an unknown option or key: Hydra's message names it
        raise ConfigError(str(e).splitlines()[0]) from None
    validate(cfg)
    problems = part_problems(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return cfg


def fit(cfg: DictConfig, run_dir: PathLike, resume: bool = False) -> Dict[str, Any]:
    """Train `cfg` (from `compose`) into `run_dir`, as `snnexp train` does (checkpoints, metrics.json, TensorBoard
    events); with `resume`, go on from its checkpoints/last.pt. Returns metrics.json. The run's log lines go to the
    "snnexp" logger (logging.basicConfig(level=logging.INFO) shows them)."""
    from snnexp.train.loop import fit as train

    run_dir = Path(run_dir)
    hparams = {key: OmegaConf.select(cfg, key) for key in ("trainer.T", "trainer.batch_size", "trainer.epochs",
                                                           "trainer.seed", "optim.lr")}
    return train(cfg, run_dir, hparams, resume=run_dir / "checkpoints" / "last.pt" if resume else None)


@dataclass
class Loaded:
    """A run folder or a checkpoint, loaded: its checkpoint file, config (checked), network (trained weights, eval
    mode, unfused as its spec reads), metrics (the run's metrics.json; a lone checkpoint's own record of them) and
    the epoch its weights are from."""

    checkpoint: Path
    run_dir: Optional[Path]
    config: DictConfig
    model: Any
    metrics: Dict[str, Any]
    epoch: int
    input_shape: List[int] = field(default_factory=list)
    num_classes: int = 0

    def evaluate(self, device: str = "auto", data_dir: Optional[str] = None,
                 batch_size: Optional[int] = None) -> Dict[str, Any]:
        """A test pass of the checkpoint on its dataset's test set, as `snnexp eval` (the same numbers)."""
        from snnexp.train.evaluate import evaluate_checkpoint

        return evaluate_checkpoint(self.checkpoint, device, data_dir, batch_size, progress=False)

    def scalars(self, tag: str) -> List[Tuple[int, float]]:
        """Every (step, value) of a TensorBoard scalar the run logged (test/acc, train/loss, firing_rate/layer1,
        ...; the per-step train/loss_step is in the steps/ sub-run, which this reads too), in step order."""
        if self.run_dir is None:
            raise CheckpointError(f"{self.checkpoint} is not inside a run folder: it has no TensorBoard events")
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        for folder in (self.run_dir, self.run_dir / "steps"):
            if not folder.is_dir():  # a run written before the per-step loss: no steps/
                continue
            events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
            events.Reload()
            if tag in events.Tags()["scalars"]:
                return [(e.step, e.value) for e in events.Scalars(tag)]
        raise KeyError(f"{self.run_dir} logged no scalar {tag!r}")


def load(path: PathLike) -> Loaded:
    """A run folder (its checkpoints/best.pt, else last.pt) or a checkpoint file, loaded and checked as `snnexp eval`
    loads it. CheckpointError names what is missing or wrong."""
    from snnexp.train import checkpoint
    from snnexp.train.build import model_from_checkpoint

    path = Path(path).expanduser()
    ckpt, run_dir = _checkpoint_of(path)
    state = checkpoint.load(ckpt)
    model, info = model_from_checkpoint(state, ckpt)
    metrics = state.get("metrics") or {}
    if run_dir is not None and (run_dir / "metrics.json").is_file():
        metrics = _read_metrics(run_dir / "metrics.json")
    return Loaded(ckpt, run_dir, info["cfg"], model, metrics, state["epoch"], info["input_shape"],
                  info["num_classes"])


def _checkpoint_of(path: Path) -> Tuple[Path, Optional[Path]]:
    """(the checkpoint file, the run folder it belongs to, if any) of a path to either."""
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name, path
        raise CheckpointError(f"{path} holds no checkpoints/best.pt or last.pt: give a run folder of snnexp train "
                              "or a checkpoint file")
    return path, path.parent.parent if path.parent.name == "checkpoints" else None


def _read_metrics(path: Path) -> Dict[str, Any]:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read as JSON: {e}") from None
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{path} holds no metrics object: not written by snnexp train")
    return metrics
