"""The training loop, `fit`, read in one sitting as torchvision's train.py reads: build (setup: build.build_run,
loaders, TrainState, resume), then for each epoch train (epoch.train_epoch) -> test (evaluate.evaluate) ->
summarise (report.metrics) -> log (report.tensorboard) -> save (checkpoint.py).

Beside it in train/: checkpoint.py (TrainState, save / load), resume.py (what a resume may change, catching up a run
folder), memory.py (will a step fit), diagnose.py (gradient norms, where a NaN first appears), session.py
(run_info.json, stop signals, the run folder's lock), distributed.py (data parallel).
"""
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from snnexp.errors import CheckpointError, ConfigError, NonFiniteError
from snnexp.nn import delays, fusion
from snnexp.report.metrics import (
    LayerTags,
    TestSummary,
    TrainSummary,
    chosen_epoch,
    epoch_metrics,
    epoch_scalars,
    metrics_scalars,
)
from snnexp.report.tensorboard import RunLogger
from snnexp.train import checkpoint, distributed
from snnexp.train.build import Run, build_run, make_loader, resolve_device, seed_everything
from snnexp.train.checkpoint import TrainState
from snnexp.train.epoch import train_epoch
from snnexp.train.evaluate import evaluate
from snnexp.train.memory import check_step_fits
from snnexp.train.resume import reconcile, resume_from
from snnexp.train.session import RunLock, StopSignals, record

log = logging.getLogger("snnexp")


def setup(cfg: DictConfig) -> Run:
    """Seeds, determinism, device and the run's objects, for this process (of a data-parallel run too)."""
    ddp = cfg.trainer.strategy == "ddp"
    seed_everything(cfg.trainer.seed + distributed.rank())  # rank 0's weights are everyone's (DDP broadcasts them)
    if cfg.trainer.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic results
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    device = distributed.device(cfg.trainer.device) if ddp else resolve_device(cfg.trainer.device)
    run = build_run(cfg, device, ddp)
    check_step_fits(run)  # before the first step: a setting that cannot fit is refused, not an allocator's traceback
    if ddp and len(run.splits.test) < distributed.world():  # a process without test samples would wait for the others
        raise ConfigError(f"the test set has {len(run.splits.test)} samples, fewer than the {distributed.world()} "
                          "processes: use fewer processes (torchrun --nproc_per_node)")
    return run


def new_train_state(run: Run) -> TrainState:
    """The optimizer (its parameters in the checkpoints' order; learned delays' positions in a group of their own, at
    their own learning rate: nn.delays.param_groups), schedule and loss scaler of a new run."""
    params = delays.param_groups(fusion.parameters(run.model), run.model, run.cfg.optim.lr)
    optimizer = instantiate(run.cfg.optim, params=params, _convert_="all")  # "all": groups as plain dicts
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.cfg.trainer.amp and run.device.type == "cuda")
    return TrainState(run.model, optimizer, instantiate(run.cfg.sched, optimizer=optimizer), scaler)


def describe(run: Run, run_dir: Path, state: TrainState, resumed_from: Optional[Path]) -> None:
    """The log lines a run starts with: where it writes, the network, the data, where a resumed run goes on."""
    cfg = run.cfg
    log.info("run dir: %s", run_dir)
    parameters = sum(p.numel() for p in run.model.parameters())
    network = f"network ({parameters} parameters) on {run.device}:\n{run.model}"
    files = [] if cfg.trainer.print_network else to_log_files(network)  # some 40 lines: one on the screen
    if files:
        log.info("network: %d parameters on %s (printed in %s; trainer.print_network=true shows it here)",
                 parameters, run.device, files[0])
    else:
        log.info("%s", network)
    val = f"{len(run.splits.val)} validation / " if run.splits.val is not None else ""
    log.info("data: %d train / %s%d test samples", len(run.splits.train), val, len(run.splits.test))
    if cfg.trainer.strategy == "ddp":
        log.info("data parallel: %d processes, %d samples each per step (global batch %d)", distributed.world(),
                 cfg.trainer.batch_size // distributed.world(), cfg.trainer.batch_size)
    if resumed_from is None:
        return
    if state.epoch >= cfg.trainer.epochs:
        log.info("resume: %s is from the end of epoch %d of %d; nothing left to train", resumed_from, state.epoch,
                 cfg.trainer.epochs)
    else:
        log.info("resumed from %s: epoch %d, batch %d, step %d", resumed_from, state.epoch + 1,
                 state.totals.batches if state.totals else 0, state.step)


def to_log_files(message: str) -> List[str]:
    """An INFO line for the run's log file (train.log: Hydra's file handler on the root logger), not the screen.
    Returns the files written: none where no log file is open (snnexp used from Python)."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None)
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for handler in files:
        handler.handle(record)
    return [h.baseFilename for h in files]


def fit(cfg: DictConfig, run_dir: Path, hparams: Dict[str, Any], resume: Optional[Path] = None) -> Dict[str, Any]:
    """Train for trainer.epochs (or trainer.max_steps), testing after every epoch. Returns metrics.json.
    With `resume` (a checkpoint), go on exactly from where it was written. The run directory is locked meanwhile
    (session.RunLock): a second training there is refused."""
    with RunLock(run_dir):
        return _fit(cfg, run_dir, hparams, resume)


def _fit(cfg: DictConfig, run_dir: Path, hparams: Dict[str, Any], resume: Optional[Path]) -> Dict[str, Any]:
    t0 = time.perf_counter()
    run = setup(cfg)
    train_loader, test_loader = make_loader(run.splits.train, cfg, train=True), make_loader(run.splits.test, cfg)
    val_loader = make_loader(run.splits.val, cfg) if run.splits.val is not None else None
    state = new_train_state(run)
    if resume is not None:
        resume_from(run, state, resume)
        t0 -= state.metrics.get("wall_s", 0.0)  # wall_s counts the earlier sessions (up to their last epoch)
    last, best, meta = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt", run.checkpoint_meta()
    last.parent.mkdir(parents=True, exist_ok=True)
    record(run_dir, cfg, resume)
    describe(run, run_dir, state, resume)
    behind = resume is not None and reconcile(run_dir, state, meta)  # metrics.json was behind last.pt
    paper_acc = OmegaConf.select(cfg, "paper.test_acc", default=None)  # a reproduction's published result
    # a resumed run rewrites TensorBoard from its first unfinished epoch: no duplicate or stale points
    logger = RunLogger(run_dir, purge_step=state.epoch + 1 if resume else None,
                       purge_train_step=state.step + 1 if resume else None) if distributed.is_main() else None
    with StopSignals() as signals, logger or nullcontext():
        if logger:
            logger.start(hparams)
            if behind:  # the epoch whose metrics.json write failed (or never came) has no TensorBoard points either
                logger.scalars(metrics_scalars(state.metrics, run.model), state.epoch)
        for epoch in range(state.epoch + 1, cfg.trainer.epochs + 1):
            train_m = _train_saving(run, train_loader, state, epoch, signals, last, meta, logger)
            distributed.sync_buffers(run.model)  # rank 0's BN statistics, the ones its checkpoint keeps
            test_m = evaluate(run, test_loader)
            val_m = evaluate(run, val_loader, "validation") if val_loader else None  # it chooses best.pt, if any
            lr = state.optimizer.param_groups[0]["lr"]
            if state.totals is None:  # a whole epoch (not one cut by trainer.max_steps): the schedules move on
                state.scheduler.step()
                delays.end_epoch(run.model, epoch, cfg.trainer.epochs)  # learned delays' kernel width
            state.metrics = epoch_metrics(state.metrics, epoch, state.step, train_m, test_m, time.perf_counter() - t0,
                                          paper_acc, val_m)
            chosen, chosen_acc, _ = chosen_epoch(state.metrics)
            checkpoint.save(last, state, meta)
            if chosen == epoch and chosen_acc > 0:  # the best epoch so far (an accuracy of 0 is no better than none)
                _save_best(best, last, state, meta, epoch)
            if distributed.is_main():
                checkpoint.write_json(run_dir / "metrics.json", state.metrics)
            if logger:  # after the checkpoint: a TensorBoard write that fails (a full disk) loses no training
                logger.scalars(epoch_scalars(state.metrics, train_m, test_m, lr, run.model), epoch)
                logger.activity(test_m, epoch, LayerTags(run.model))
            _log_epoch(epoch, cfg.trainer.epochs, train_m, test_m, val_m, state.metrics)
            _warn_if_silent(run, test_m, epoch)
            if signals.requested():  # arrived in the test pass: the epoch is saved
                raise signals.interrupted(f"after epoch {epoch}: saved {last}")
            if cfg.trainer.max_steps is not None and state.step >= cfg.trainer.max_steps:
                log.info("reached trainer.max_steps=%d", cfg.trainer.max_steps)
                break
    if "test_acc" not in state.metrics:  # resumed a run that had nothing left to do before its first epoch ended
        raise CheckpointError(f"{resume}: nothing left to train (trainer.epochs={cfg.trainer.epochs})")
    log.info("done in %.1f s: %s; %s", time.perf_counter() - t0, _result(state.metrics, paper_acc), run_dir)
    return state.metrics


def _result(metrics: Dict[str, Any], paper_acc: Optional[float]) -> str:
    """The log's last line: the final test accuracy, the best (chosen on the test set, "A"), with a validation set
    the test accuracy of the epoch it chose ("B"), and a reproduction's published number."""
    result = f"test acc {100 * metrics['test_acc']:.2f}%, best {100 * metrics['best_test_acc']:.2f}%"
    if "best_val_acc" in metrics:
        result += (f" (epoch {metrics['best_epoch']}, chosen on the test set: A); at the epoch the validation set "
                   f"chose ({metrics['best_val_epoch']}, val acc {100 * metrics['best_val_acc']:.2f}%): "
                   f"{100 * metrics['val_chosen_test_acc']:.2f}% (B, best.pt)")
    return result + (f" (paper: {100 * paper_acc:.2f}%)" if paper_acc is not None else "")


def _save_best(best: Path, last: Path, state: TrainState, meta: Dict[str, Any], epoch: int) -> None:
    """checkpoint.save of best.pt; if it fails, last.pt (written just before) holds this best epoch, from which a
    resume writes best.pt again (resume.reconcile)."""
    try:
        checkpoint.save(best, state, meta, end_of_epoch=epoch)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; {last} holds epoch {epoch}, the best so far: resuming the run (snnexp train "
                              f"resume={last.parent.parent}) writes {best.name} from it") from None


def _train_saving(run: Run, loader, state: TrainState, epoch: int, signals: StopSignals, last: Path,
                  meta: Dict[str, Any], logger: Optional[RunLogger]) -> TrainSummary:
    """train_epoch, logging each step's loss, saving `last` every trainer.ckpt_every_steps steps and when a stop is
    asked for (then Interrupted); a non-finite loss or gradient says which checkpoint is kept."""
    every = run.cfg.trainer.ckpt_every_steps

    def after_step(last_batch: bool, loss: Optional[float]) -> None:
        if logger and loss is not None:
            logger.step_loss(loss, state.step)
        stop = signals.requested()
        if stop or (every and state.step % every == 0 and not last_batch):  # the epoch's end saves anyway
            checkpoint.save(last, state, meta)
            if logger:  # the losses up to the checkpoint: a resume from it logs the steps after it
                logger.write_step_losses()
        if stop:
            raise signals.interrupted(f"at step {state.step} (epoch {epoch}, batch {state.totals.batches}): saved "
                                      f"{last}")

    try:
        return train_epoch(run, loader, state, epoch, after_step)
    except NonFiniteError as e:
        kept = f"the last good checkpoint is kept: {last}" if last.is_file() else "no checkpoint had been written yet"
        raise NonFiniteError(f"{e}; {kept}") from None


def _warn_if_silent(run: Run, test_m: TestSummary, epoch: int) -> None:
    """One warning when the class scores are firing rates and the output layer never fired on the test set: every
    class then scores 0 and the accuracy is chance, which looks like a broken tool or equal models."""
    if getattr(run.readout, "scores", None) != "rates" or not test_m.firing_rate:
        return
    layer, rate = list(test_m.firing_rate.items())[-1]
    if rate == 0:
        log.warning("epoch %d: the output layer (%s) never fired on the test set, so every class scored 0 and the "
                    "accuracy is chance: train longer (trainer.epochs), or lower neuron.v_threshold; a membrane "
                    "readout (readout=membrane_max, loss=ce_rate) scores without spikes", epoch, layer)


def _log_epoch(epoch: int, epochs: int, train_m: TrainSummary, test_m: TestSummary, val_m: Optional[TestSummary],
               metrics: Dict[str, Any]):
    val = f"val loss {val_m.loss:.4f} acc {100 * val_m.acc:.2f}%  " if val_m is not None else ""
    log.info("epoch %d/%d  train loss %.4f acc %.2f%%  %stest loss %.4f acc %.2f%% (best %.2f%%)  %.0f samples/s",
             epoch, epochs, train_m.loss, 100 * train_m.acc, val, test_m.loss, 100 * test_m.acc,
             100 * metrics["best_test_acc"], train_m.samples_per_s)
    if train_m.skipped:
        log.warning("epoch %d: %d batches with a non-finite loss or gradient were skipped", epoch, train_m.skipped)
