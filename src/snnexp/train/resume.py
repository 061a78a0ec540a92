"""Going on with a run from its last.pt (`snnexp train resume=RUN_DIR`): what may differ from the stored run and what
is refused (checkpoint.MAY_CHANGE, the data's sizes), the schedule when trainer.epochs grows, and bringing the run
folder up to the state resumed (best.pt, metrics.json, TensorBoard) when an earlier session died writing them.

`run` below is an engine.Run (this module is imported by the engine, not the other way round)."""

import json
import logging
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

from hydra.utils import instantiate
from omegaconf import OmegaConf

from snnexp.errors import CheckpointError
from snnexp.report.metrics import chosen_epoch
from snnexp.train import checkpoint, distributed
from snnexp.train.build import data_sizes
from snnexp.train.checkpoint import TrainState

log = logging.getLogger("snnexp")


def resume_from(run, state: TrainState, path: Path) -> None:
    """Load the checkpoint into `state`, refusing a config that changes what the run computes
    (checkpoint.MAY_CHANGE) or data of other sizes; a changed trainer.epochs moves the schedule (_schedule_again)."""
    saved = checkpoint.resume(path, state, run.cfg)
    _check_data(run, saved, path)
    stored, now = (saved.get("config") or {}).get("sched"), OmegaConf.to_container(run.cfg.sched, resolve=True)
    if isinstance(stored, dict) and stored != now:
        state.scheduler = _schedule_again(run, state)
        log.info("resume: the schedule follows (%s), stepped to epoch %d: learning rate %.4g", "; ".join(
            f"sched.{k}: {stored.get(k)} -> {v}" for k, v in now.items() if stored.get(k) != v), state.epoch,
            state.optimizer.param_groups[0]["lr"])


def _check_data(run, saved: Dict[str, Any], path: Path) -> None:
    """A resumed run goes on with the data it was trained on: a mid-epoch position is an index into that epoch's
    order of exactly those samples. Checked by their numbers (a checkpoint from before they were stored: the
    position only)."""
    now = data_sizes(run.splits)
    stored = saved.get("data_sizes") or {}
    changed = [f"{split}: {stored[split]} -> {n} samples" for split, n in now.items() if stored.get(split, n) != n]
    position = saved["batch"] * run.cfg.trainer.batch_size
    if not changed and position >= now["train"] > 0 and saved["batch"]:
        changed = [f"it stopped after {position} samples of an epoch, the training set now has {now['train']}"]
    if changed:
        raise CheckpointError(f"{path}: the data changed since this checkpoint was saved ({'; '.join(changed)}): "
                              "resume with the run's own data (dataset.data_dir), or start a new run")


def _schedule_again(run, state: TrainState):
    """The resumed config's schedule (cosine's T_max follows trainer.epochs), stepped to the epochs done: the
    learning rate from here on is that of a run made with this config from the start."""
    for group in state.optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])  # where a new scheduler starts from
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": no training step is meant
        warnings.simplefilter("ignore")
        scheduler = instantiate(run.cfg.sched, optimizer=state.optimizer)
        for _ in range(state.epoch):
            scheduler.step()
    return scheduler


def reconcile(run_dir: Path, state: TrainState, meta: Dict[str, Any]) -> bool:
    """Bring the run folder up to the state resumed from last.pt, before any training: a run that died writing
    best.pt or metrics.json (a full disk) left them behind it. Returns whether metrics.json was an epoch behind
    (then so is TensorBoard, written after it)."""
    if "test_acc" not in state.metrics:  # no epoch finished yet: nothing to catch up with
        return False
    _reconcile_best(run_dir / "checkpoints" / "best.pt", state, meta)
    if not distributed.is_main():
        return False
    path = run_dir / "metrics.json"
    try:
        written = json.loads(path.read_text())
    except (OSError, ValueError):  # missing or damaged
        written = None
    if written != state.metrics:
        log.info("resume: %s is behind last.pt: written again (epoch %d)", path, state.metrics["epoch"])
        checkpoint.write_json(path, state.metrics)
    return isinstance(written, dict) and written.get("epoch") != state.metrics["epoch"]


def _reconcile_best(best: Path, state: TrainState, meta: Dict[str, Any]) -> None:
    """best.pt must hold the best epoch's weights. Missing or stale, it is written from last.pt's state when that is
    the end of the best epoch; otherwise those weights are gone, which is said (never a wrong best.pt)."""
    wanted, acc, chosen_on = chosen_epoch(state.metrics)
    held = distributed.from_main(_epoch_of(best) if distributed.is_main() else None)  # every process decides alike
    if wanted is None or held == wanted or acc == 0:  # acc 0: no epoch was better than nothing, no best.pt
        return
    holds = "is missing or unreadable" if held is None else f"holds epoch {held}"
    if state.epoch == wanted and state.totals is None:
        log.info("resume: %s %s; the best epoch is %d, which last.pt holds: written again", best, holds, wanted)
        checkpoint.save(best, state, meta, end_of_epoch=wanted)
    else:
        log.warning("resume: %s %s, but the best epoch was %d (%s acc %.2f%%) and last.pt is from epoch %d: the "
                    "best weights are lost; best.pt is written again when an epoch beats %.2f%%", best, holds, wanted,
                    chosen_on, 100 * acc, state.epoch, 100 * acc)


def _epoch_of(path: Path) -> Optional[int]:
    """The epoch a checkpoint holds; None if it is missing or cannot be read."""
    try:
        return checkpoint.load(path)["epoch"] if path.is_file() else None
    except CheckpointError:
        return None

