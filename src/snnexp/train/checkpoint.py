"""Checkpoints: what a run saves and how it is read back.

`TrainState` is everything a resumed run needs to go on exactly as if never stopped: the model, optimizer,
schedule and loss scaler, how far training went (epochs done, optimizer steps, and the batches of the next epoch
already trained on with their running sums), the metrics so far and every random generator's state. Its
`state_dict()` / `load_state_dict()` are what `save` writes and `resume` reads.

    save(path, state, meta)    atomic: a crash or a full disk mid-write leaves the previous file intact
    load(path)                 weights_only (never runs code from the file), checked to be a snnexp checkpoint
    stored_config(state, ...)  the config it was trained with, checked (snnexp.trust) before anything is built
    resume(path, state, cfg)   load + state.load_state_dict, with messages for a checkpoint that does not fit
                               and a refusal, by key, of a config that changes what the run computes

`snnexp eval` and `snnexp export` read checkpoints through `load` and rebuild the network from `stored_config`:
a checkpoint may come from someone else, so its config may name only the targets our own config folders name.
The run's other files (metrics.json, run_info.json) are written with `write_json`, which fails with the same
advice as a checkpoint write.
"""

import copy
import logging
import random
import stat
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from snnexp import conf_dir
from snnexp.errors import CheckpointError
from snnexp.files import WRITE_ADVICE, atomic_path, write_json_atomic
from snnexp.moved import new_targets
from snnexp.train import distributed
from snnexp.trust import check_stored_config

log = logging.getLogger("snnexp")

FORMAT = 2  # 2: RNG states and the position within an epoch, for exact resume


@dataclass
class EpochTotals:
    """Sums over the batches of an epoch so far: saved with a mid-epoch checkpoint, so that a resumed epoch
    reports the same metrics as one never interrupted."""

    batches: int = 0  # batches taken from the epoch's order (skipped ones included)
    steps: int = 0    # optimizer steps
    loss: float = 0.0
    correct: int = 0
    seen: int = 0
    skipped: int = 0  # batches with a non-finite loss or gradient, left out (trainer.on_nonfinite=skip)
    grad_norm: Dict[str, float] = field(default_factory=dict)


def rng_state() -> Dict[str, Any]:
    """Every random generator a run draws from, in types that load with weights_only."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainState:
    """The training state of a run (module docstring). `epoch` counts finished epochs; `totals` is the position
    within the next one (None at an epoch's start)."""

    def __init__(self, model, optimizer, scheduler, scaler):
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.epoch = 0
        self.step = 0
        self.totals: Optional[EpochTotals] = None
        self.metrics: Dict[str, Any] = {"best_test_acc": 0.0}

    def state_dict(self, end_of_epoch: Optional[int] = None) -> Dict[str, Any]:
        """`end_of_epoch`: the state as at the end of that epoch, however far into it training went (best.pt,
        which is tested and exported, never resumed). Data parallel: every process calls it (their RNG states
        are gathered and their sums added)."""
        rngs = distributed.gather(rng_state())
        totals = None if end_of_epoch is not None else self.totals
        if totals is not None and distributed.world() > 1:  # the sums over all processes; a resume gives them to rank 0
            loss, correct, seen = distributed.sum_all([totals.loss, totals.correct, totals.seen])
            totals = replace(totals, loss=loss, correct=int(correct), seen=int(seen))
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch if end_of_epoch is None else end_of_epoch,
            "batch": totals.batches if totals else 0,
            "totals": asdict(totals) if totals else None,
            "step": self.step,
            "metrics": self.metrics,
            "rng": rngs[0],
            "rng_per_process": rngs if len(rngs) > 1 else None,  # data parallel: rank r's states at r
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Raises RuntimeError, ValueError or KeyError when the weights or optimizer do not fit (see `resume`)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rngs = state.get("rng_per_process") or [state["rng"]]
        if len(rngs) == distributed.world():
            set_rng_state(rngs[distributed.rank()])
        else:  # the data order depends on (seed, epoch) alone and goes on where it stopped
            log.warning("the checkpoint was saved by %d processes and is resumed by %d: the random draws (dropout, "
                        "Poisson spikes) start afresh from the seed", len(rngs), distributed.world())
        self.metrics = state["metrics"] or self.metrics
        self.epoch, self.step = state["epoch"], state["step"]
        self.totals = EpochTotals(**state["totals"]) if state["totals"] else None
        if self.totals and not distributed.is_main():  # the saved sums are over all processes: rank 0 carries them
            self.totals.loss, self.totals.correct, self.totals.seen = 0.0, 0, 0


def save(path: Path, state: TrainState, meta: Dict[str, Any], end_of_epoch: Optional[int] = None) -> None:
    """Write `state` (and `meta`: the config, input shape and class count that rebuild the network) to `path`,
    atomically. Data parallel: every process calls it; rank 0 writes and all raise if it failed."""
    contents = {"snnexp_checkpoint": FORMAT, **state.state_dict(end_of_epoch), **meta}
    error = None
    if distributed.is_main():
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                _torch_save(contents, f)
        except OSError as e:
            kept = "the previous checkpoint is intact" if path.is_file() else f"no {path.name} was written before"
            error = f"cannot write checkpoint {path}: {e.strerror or e} {WRITE_ADVICE}; {kept}"
    error = distributed.from_main(error)
    if error:
        raise CheckpointError(error)


class _Recorded:
    """The file torch.save writes to, keeping what stopped a write or flush (torch.save's documented file
    interface): torch's zip writer swallows it and raises RuntimeError ('unexpected pos') instead."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        return self._call(self.file.write, data)

    def flush(self):
        return self._call(self.file.flush)

    def _call(self, method, *args):
        if self.error is not None:  # torch's writer goes on after a failed write: end it at once
            raise self.error
        try:
            return method(*args)
        except BaseException as e:  # OSError (a full disk), or KeyboardInterrupt (a second Ctrl-C)
            self.error = e
            raise


def _torch_save(contents, f) -> None:
    """torch.save to the open file `f`; a failed write raises its own error (OSError for a full disk), and a
    RuntimeError that no write caused (a bug) stays one. Costs no copy, where saving to memory first and then writing
    the bytes would hold the checkpoint twice (docs/performance.md, "Figures behind the code")."""
    recorded = _Recorded(f)
    try:
        torch.save(contents, recorded)
    except RuntimeError:
        if recorded.error is None:
            raise
        raise recorded.error from None


def load(path) -> Dict[str, Any]:
    """Load without executing code from the file (weights_only) and check it is a snnexp checkpoint."""
    path = Path(path).expanduser()
    _check_regular_file(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a file
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or a pickle that needs arbitrary code
        raise CheckpointError(_unreadable(path, str(e))) from None
    if not isinstance(state, dict) or "snnexp_checkpoint" not in state:
        raise CheckpointError(f"{path} is a torch file but not a snnexp checkpoint (no 'snnexp_checkpoint' key)")
    if state["snnexp_checkpoint"] > FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state['snnexp_checkpoint']}: upgrade snnexp")
    return state


def _check_regular_file(path: Path) -> None:
    """A missing path, a folder, a FIFO or a device as checkpoint is named for what it is (stat only: a FIFO is
    never opened, so nothing blocks)."""
    try:
        mode = path.stat().st_mode
    except OSError:  # missing, or a link to nothing
        raise CheckpointError(f"checkpoint not found: {path}") from None
    if stat.S_ISDIR(mode):
        inside = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        raise CheckpointError(f"checkpoint {path} is a directory: give the checkpoint file inside, e.g. "
                              f"checkpoint={inside / 'best.pt'}")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise CheckpointError(f"checkpoint {path} is {kind}, not a regular file: give a checkpoint file written by "
                              "snnexp train (.../checkpoints/best.pt)")


def stored_config(state: Dict[str, Any], source, config_dirs: Optional[Sequence[Path]] = None) -> DictConfig:
    """The config a loaded checkpoint (from `source`) was trained with, once snnexp.trust has checked that it names
    only targets that `config_dirs` (default: snnexp's own conf/) name. Raises CheckpointError. Where this machine
    writes is not the file's to say: the dataset's frame cache goes to this machine's default folder, and nothing
    is downloaded into the data folder it names (`snnexp eval data_dir=...` points it at local data)."""
    stored = new_targets(state.get("config"))  # written before the modules moved: their new places
    check_stored_config(stored, str(source), config_dirs or [conf_dir()])
    cfg = OmegaConf.create(stored)
    dataset = cfg.get("dataset") or {}
    for key, here in (("cache_dir", None), ("download", False)):
        if key in dataset:
            cfg.dataset[key] = here
    return cfg


def _unreadable(path: Path, text: str) -> str:
    """Why torch.load refused the file, in a line: code it would have to run (torch's words), or damage."""
    if "Weights only load failed" in text:
        rest = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text \
            else text.split("\n", 1)[-1]
        detail = [line.strip() for line in rest.splitlines()
                  if line.strip() and not line.startswith(("Please file", "Check the documentation"))]
        needs = detail[0].split(". ")[0].rstrip(".") if detail else ""  # what it asked for, in torch's words
        return (f"cannot read checkpoint {path}: it is not a snnexp checkpoint: loading it would run Python code "
                f"from the file, which snnexp never does{' (' + needs + ')' if needs else ''}")
    return (f"cannot read checkpoint {path}: not a valid snnexp checkpoint (truncated, or not written by snnexp "
            f"train): {text.splitlines()[0].split('. ')[0]}")


# What a resumed run may set otherwise than the run it goes on: how long it trains, where, how fast and how verbosely
# it runs (trainer.micro_batch: the same step in pieces), where its data lie (the same data: resume.py checks their
# sizes). Never what it computes (network, data, encoding, T, batch size, seed, optimizer, schedule): a changed one
# would apply only from the resume on, and to the parts rebuilt from the config but not to those restored from the
# checkpoint (the optimizer's lr).
MAY_CHANGE = ("resume", "trainer.epochs", "trainer.max_steps", "trainer.micro_batch", "trainer.progress",
              "trainer.device", "trainer.num_workers", "trainer.threads", "trainer.ckpt_every_steps",
              "trainer.on_nonfinite", "trainer.strategy", "trainer.compile", "trainer.deterministic",
              "dataset.data_dir", "dataset.cache_dir", "dataset.download")
_ABSENT = "(none)"


def _flat(tree, prefix: str = "") -> Dict[str, Any]:
    """A nested config as {dotted key: value}; lists and empty mappings are values."""
    if not isinstance(tree, dict) or not tree:
        return {prefix[:-1]: tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


def config_changes(stored: Dict[str, Any], cfg: DictConfig) -> Dict[str, tuple]:
    """{key: (stored, given)} for every setting of `cfg` that differs from a checkpoint's stored (resolved) config,
    MAY_CHANGE keys included. A value that follows from a MAY_CHANGE key (cosine's T_max: ${trainer.epochs}) counts
    as that key's change alone. Keys the stored config lacks (added to snnexp since) are not compared."""
    given, back = OmegaConf.to_container(cfg, resolve=True), copy.deepcopy(cfg)
    OmegaConf.set_struct(back, False)
    old = _flat(stored)
    for key in MAY_CHANGE:  # set back to the stored values, so that what follows from them resolves as stored
        if key in old:
            OmegaConf.update(back, key, old[key], merge=False)
    new, now = _flat(OmegaConf.to_container(back, resolve=True)), _flat(given)
    changes = {k: (old[k], new.get(k, _ABSENT)) for k in old if k not in MAY_CHANGE and new.get(k, _ABSENT) != old[k]}
    changes.update({k: (old[k], now.get(k, _ABSENT)) for k in MAY_CHANGE if k in old and now.get(k, _ABSENT) != old[k]})
    return changes


def _check_changes(path: Path, stored, cfg: DictConfig) -> None:
    """Refuse a resume whose config differs from the checkpoint's other than in MAY_CHANGE, listing every
    difference; log the allowed ones."""
    if not isinstance(stored, dict):
        return  # a checkpoint without a stored config: nothing to compare with
    changes = config_changes(stored, cfg)
    refused = [f"{k}: {a} -> {b}" for k, (a, b) in changes.items() if k not in MAY_CHANGE]
    if refused:
        allowed = ", ".join(k for k in MAY_CHANGE if k != "resume")
        raise CheckpointError(f"{path}: this resume changes what the run computes ({'; '.join(refused)}); a resume "
                              f"may change only {allowed}: give the run's own values, or start a new run")
    for key, (a, b) in changes.items():
        if key != "resume":
            log.info("resume: %s changed: %s -> %s", key, a, b)


def resume(path: Path, state: TrainState, cfg: Optional[DictConfig] = None) -> Dict[str, Any]:
    """Load the checkpoint at `path` into `state`, or say why it cannot be resumed: with `cfg` (the resumed
    session's config), a config that changes more than MAY_CHANGE is refused before anything is loaded. Returns
    the checkpoint's contents."""
    saved = load(path)
    if "rng" not in saved:
        raise CheckpointError(f"{path} was written by an older snnexp (format {saved['snnexp_checkpoint']}) "
                              "without the state a resume needs; start a new run")
    if cfg is not None:
        _check_changes(path, new_targets(saved.get("config")), cfg)  # targets at their new places
    try:
        state.load_state_dict(saved)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} does not fit this config's network or optimizer (resume with the same "
                              f"overrides as the run): {str(e).splitlines()[0]}") from None
    return saved


def write_json(path: Path, data) -> None:
    """A run file (metrics.json, run_info.json), atomically."""
    try:
        write_json_atomic(path, data)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e} {WRITE_ADVICE}") from None
