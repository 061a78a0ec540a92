"""The training engine: build a run from its config, train, test, and `fit`, the loop that ties them together.
It knows nothing about which dataset, neuron or network it runs: they arrive as objects that Hydra instantiated
from the config, and the model reports its own scalars.

    fit:  set up (build_run, loaders, TrainState, resume)
          for each epoch: train_epoch -> evaluate -> summarise (metrics.py) -> log (logging.py) -> save (checkpoint.py)

Beside it, one module per concern: checkpoint.py (TrainState, save / load), resume.py (what a resume may change,
catching up a run folder), memory.py (will a step fit), metrics.py (an epoch's numbers), diagnose.py (gradient norms,
where a NaN first appears), session.py (run_info.json, stop signals, the run folder's lock), activity.py (spikes and
synaptic operations), distributed.py (data parallel), logging.py (TensorBoard).
"""

import logging
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from snnexp import checkpoint, distributed, fusion
from snnexp.activity import Activity, spiking_layers
from snnexp.checkpoint import EpochTotals, TrainState
from snnexp.config import EnergyConfig, TrainerConfig
from snnexp.cost import energy_pj, static_metrics
from snnexp.diagnose import all_finite, diagnose_nonfinite, layer_grad_norms
from snnexp.errors import CheckpointError, ConfigError, DatasetError, NonFiniteError
from snnexp.logging import RunLogger
from snnexp.memory import check_step_fits
from snnexp.metrics import epoch_metrics, epoch_scalars, metrics_scalars, test_metrics, train_summary
from snnexp.models import with_output_layer
from snnexp.resume import reconcile, resume_from
from snnexp.session import RunLock, StopSignals, record

__all__ = ["EpochOrder", "Run", "build_model", "build_run", "evaluate", "evaluate_checkpoint",
           "fit", "forward", "make_loader", "neurobench_results", "require_neurobench", "train_epoch"]

log = logging.getLogger("snnexp")

EVAL_SEED = 1234  # the stochastic encoders draw from their own seeded generator at test time, so a
# checkpoint's test accuracy is the same number during training and in `snnexp eval`


@dataclass
class Run:
    """Everything the loops need, built from one config."""

    cfg: DictConfig
    splits: Any
    encoder: Any
    model: nn.Module
    readout: nn.Module
    loss_fn: nn.Module
    device: torch.device
    net: Optional[Any] = None  # what forward() calls in training: the model, wrapped in DDP (trainer.strategy=ddp)
    # and/or compiled (trainer.compile); the checkpoint keeps the model's own state_dict keys
    eval_net: Optional[Any] = None  # in eval mode: the same without DDP (a test pass needs no gradient sync)

    def __post_init__(self):
        if self.net is None:
            self.net = self.model
        if self.eval_net is None:
            self.eval_net = self.net

    def checkpoint_meta(self) -> Dict[str, Any]:
        """What a checkpoint keeps beside the training state, so that eval and export rebuild the network."""
        return {"config": OmegaConf.to_container(self.cfg, resolve=True),
                "input_shape": list(self.splits.input_shape), "num_classes": self.splits.num_classes,
                "data_sizes": {"train": len(self.splits.train), "test": len(self.splits.test)}}  # checked on resume


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but no CUDA device is available: use device=cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: DictConfig, input_shape, num_classes: int) -> nn.Module:
    """The network of the config, with the configured neuron, surrogate and norm, for inputs of `input_shape`
    and num_classes x readout.population outputs."""
    readout = instantiate(cfg.readout)
    model = instantiate(
        cfg.model,
        input_shape=list(input_shape),
        num_outputs=num_classes * readout.population,
        neuron=instantiate(cfg.neuron, surrogate=instantiate(cfg.surrogate)),
        norm=instantiate(cfg.norm),
    )
    if hasattr(readout, "output_layer"):  # a membrane readout: non-spiking output neurons
        model = with_output_layer(model, readout.output_layer(), f"readout={type(readout).__name__}")
    return model


def build_run(cfg: DictConfig, device: torch.device, ddp: bool = False) -> Run:
    """Instantiate data, encoder, network, readout and loss from the config (`ddp`: for a process of a
    data-parallel run)."""
    splits = instantiate(cfg.dataset)
    _check_not_empty(splits)
    model = build_model(cfg, splits.input_shape, splits.num_classes).to(device)
    if cfg.trainer.join_layers and device.type == "cpu":  # the joined ops are CPU kernels
        fusion.fuse_blocks(model)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)  # conv weights; their outputs follow
    # dynamic=False: one graph per input shape (train, last batch, test); with symbolic shapes inductor cannot
    # order the strides of the neuron op's output (InductorError "cannot determine truth value of Relational")
    compiled = torch.compile(model, dynamic=False) if cfg.trainer.compile else model
    net = distributed.wrap(model, device) if ddp else compiled
    if ddp and cfg.trainer.compile:
        net = torch.compile(net, dynamic=False)
    return Run(cfg, splits, instantiate(cfg.encoder), model, instantiate(cfg.readout), instantiate(cfg.loss), device,
               net, eval_net=compiled)


def _check_not_empty(splits) -> None:
    """A training or test set without samples stops the run before it starts (nothing could be trained on or
    tested: the counts would divide by zero)."""
    if len(splits.train) and len(splits.test):
        return
    if splits.empty_reason:
        raise DatasetError(splits.empty_reason)
    empty = "test" if len(splits.train) else "training"
    raise DatasetError(f"the {empty} set is empty ({len(splits.train)} training / {len(splits.test)} test samples): "
                       "check that dataset.data_dir holds both splits' files (and, with dataset.on_corrupt=skip, "
                       "how many were skipped)")


class EpochOrder(torch.utils.data.Sampler):
    """The training order: a permutation drawn from (seed, epoch) alone, so that a resumed run rebuilds the
    order of the epoch it stopped in and starts at the sample where it stopped.

    In a data-parallel run, process `rank` of `world` takes every world-th index from rank on (padded with the
    first ones to a multiple of world, as torch's DistributedSampler does; ours also starts mid-epoch). With a
    local batch of B / world, global step k then sees the samples single-process step k sees with batch B."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world, self.epoch, self.start = n, seed, rank, world, 1, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """`start`: samples of this process's share already trained on."""
        self.epoch, self.start = epoch, start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        if self.world > 1:
            pad = -self.n % self.world
            order = torch.cat([order, order[:pad]])[self.rank::self.world]
        return iter(order[self.start:].tolist())

    def __len__(self):
        return -(-self.n // self.world) - self.start


def make_loader(dataset, cfg: DictConfig, train: bool = False) -> DataLoader:
    """Under trainer.strategy=ddp: this process's share of each batch (batch_size / processes) and of the data
    (the test set split without padding, so every test sample counts once)."""
    rank, world = distributed.rank(), distributed.world()
    test_share = list(range(rank, len(dataset), world)) if world > 1 else None
    return DataLoader(
        dataset,
        batch_size=cfg.trainer.batch_size // world,
        sampler=EpochOrder(len(dataset), cfg.trainer.seed, rank, world) if train else test_share,
        generator=torch.Generator().manual_seed(cfg.trainer.seed),  # worker seeds
        num_workers=cfg.trainer.num_workers,
        pin_memory=False,
        persistent_workers=cfg.trainer.num_workers > 0,
    )


def autocast(run: Run):
    if not run.cfg.trainer.amp:
        return nullcontext()
    dtype = torch.float16 if run.device.type == "cuda" else torch.bfloat16
    return torch.autocast(run.device.type, dtype=dtype)


def forward(run: Run, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """[B, ...] batch -> [B, classes] scores: encode over T steps (event data arrives as frames
    [B, T, ...]), run the network, read out."""
    if run.splits.sequence:
        x_seq = x.transpose(0, 1)
    else:
        x_seq = run.encoder(x, run.cfg.trainer.T, generator=generator)
    with autocast(run):
        spikes = (run.net if run.model.training else run.eval_net)(x_seq)
    return run.readout(spikes.float())



def train_epoch(run: Run, loader: DataLoader, state: TrainState, epoch: int,
                after_step: Optional[Callable[[bool], None]] = None) -> Dict[str, Any]:
    """One pass over the training set, from where `state.totals` left it (a resumed epoch). Updates state.step
    and state.totals; at the end of a whole epoch, state.epoch = epoch and state.totals = None. Returns train_m
    (metrics.train_summary). after_step(last_batch) runs after every batch: checkpoints and stops happen there."""
    run.model.train()
    totals = state.totals = state.totals or EpochTotals()
    loader.sampler.set_epoch(epoch, totals.batches * loader.batch_size)
    epoch_batches = totals.batches + len(loader)
    bar = tqdm(loader, desc=f"epoch {epoch}/{run.cfg.trainer.epochs}", leave=False, initial=totals.batches,
               total=epoch_batches, disable=None if run.cfg.trainer.progress and distributed.is_main() else True,
               dynamic_ncols=True)
    start, timed = time.perf_counter(), 0  # timed: the samples counted in samples/s
    for i, (x, y) in enumerate(bar):
        if i == 1 and run.cfg.trainer.compile:  # the first step compiles: left out of samples/s
            start, timed = time.perf_counter(), 0
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        totals.batches += 1
        learned = _learn(run, state, x, y, epoch)
        if learned is not None:
            scores, loss = learned
            state.step += 1
            totals.steps += 1
            totals.loss += loss * y.numel()
            totals.correct += (scores.argmax(1) == y).sum().item()
            totals.seen += y.numel()
            timed += y.numel()
            bar.set_postfix(loss=f"{totals.loss / totals.seen:.4f}", acc=f"{100 * totals.correct / totals.seen:.2f}%")
        if after_step is not None:
            after_step(totals.batches == epoch_batches)
        if run.cfg.trainer.max_steps is not None and state.step >= run.cfg.trainer.max_steps:
            break
    elapsed = distributed.max_all(time.perf_counter() - start)
    loss_sum, correct, seen, timed = distributed.sum_all([totals.loss, totals.correct, totals.seen, timed])
    if totals.batches == epoch_batches:
        state.epoch, state.totals = epoch, None
    return train_summary(loss_sum, correct, seen, timed, elapsed, totals.skipped, totals.grad_norm, totals.steps)


def _learn(run: Run, state: TrainState, x: torch.Tensor, y: torch.Tensor,
           epoch: int) -> Optional[Tuple[torch.Tensor, float]]:
    """Forward, backward and optimizer step for one batch: its (scores, mean loss). A non-finite loss or gradient
    stops the run with a diagnosis (NonFiniteError) or, with trainer.on_nonfinite=skip, leaves the batch out: None.
    With trainer.micro_batch the batch runs in pieces (_backward_in_pieces), one optimizer step for all."""
    optimizer, scaler, totals = state.optimizer, state.scaler, state.totals
    optimizer.zero_grad(set_to_none=True)
    scores, loss, failed = _backward_in_pieces(run, state, x, y)
    norms = None
    if failed is None:
        scaler.unscale_(optimizer)  # true gradients for the norms below (a no-op without AMP on CUDA)
        norms = layer_grad_norms(run.model)
    # with float16 loss scaling an inf gradient is the scaler's business: it skips the step itself
    if norms is None or (not scaler.is_enabled() and not all_finite(norms)):
        position = f"step {state.step + 1} (epoch {epoch}, batch {totals.batches})"
        if run.cfg.trainer.on_nonfinite == "stop":
            xp, piece_loss = failed or (x, torch.tensor(loss))  # the piece whose loss failed, else the whole batch
            raise NonFiniteError(diagnose_nonfinite(run.model, lambda: forward(run, xp), xp, piece_loss, position,
                                                    OmegaConf.select(run.cfg, "optim.lr")))
        optimizer.zero_grad(set_to_none=True)
        totals.skipped += 1
        log.warning("step %d: non-finite %s, batch skipped (%d so far this epoch)", state.step + 1,
                    "loss" if norms is None else "gradient", totals.skipped)
        return None
    for layer, norm in norms.items():
        totals.grad_norm[layer] = totals.grad_norm.get(layer, 0.0) + norm.item()
    try:
        scaler.step(optimizer)
    except RuntimeError as e:  # e.g. Adam: "value cannot be converted to type float without overflow"
        if "overflow" not in str(e):
            raise
        raise NonFiniteError(f"the optimizer step {state.step + 1} (epoch {epoch}, batch {totals.batches}) "
                             f"overflows: {e}. Likely cause: a learning rate too high (optim.lr="
                             f"{OmegaConf.select(run.cfg, 'optim.lr')})") from None
    scaler.update()
    return scores, loss


def _backward_in_pieces(run: Run, state: TrainState, x: torch.Tensor, y: torch.Tensor):
    """Forward and backward of a batch in pieces of at most trainer.micro_batch samples (one piece without it), each
    piece's mean loss weighted by its share of the batch, so that the gradients add up to the whole batch's: the
    same step with a piece's activation memory. Exact where no layer mixes samples; BatchNorm normalises each piece
    by its own statistics. Returns (scores, the batch's mean loss, None), or, at the first piece whose loss is not
    finite (on any process of a data-parallel run, which all stop there), (None, nan, (that piece, its loss))."""
    size = run.cfg.trainer.micro_batch or len(y)
    pieces = list(zip(x.split(size), y.split(size)))
    scores, total = [], 0.0
    for i, (xp, yp) in enumerate(pieces):
        # data parallel: the processes average their gradients once, at the last piece's backward
        syncing = i == len(pieces) - 1 or not hasattr(run.net, "no_sync")
        with nullcontext() if syncing else run.net.no_sync():
            out = forward(run, xp)
            loss = run.loss_fn(out, yp) * (len(yp) / len(y))
            # data parallel: all processes skip (or stop at) a batch that is non-finite on any, or backward would hang
            if distributed.any_true(not torch.isfinite(loss).item()):
                return None, float("nan"), (xp, loss)
            state.scaler.scale(loss).backward()
        scores.append(out.detach())
        total += loss.item()
    return torch.cat(scores), total, None


@torch.no_grad()
def evaluate(run: Run, loader) -> Dict[str, Any]:
    """Test loss, accuracy and the network's activity (snnexp.activity.Activity.summary): the mean firing rate of
    every spiking layer, spikes, activation sparsity and synaptic operations per sample, per-neuron rates, and the
    spike raster and confusion matrix of the first (fixed) test batch; beside them the static metrics and the
    energy per sample (snnexp.cost)."""
    run.model.eval()
    generator = torch.Generator(run.device).manual_seed(EVAL_SEED)
    total_loss, correct, seen = 0.0, 0, 0
    with Activity(run.model, spiking_layers(run.model)) as activity:
        for x, y in loader:
            x, y = x.to(run.device), y.to(run.device)
            scores = forward(run, x, generator)
            total_loss += run.loss_fn(scores, y).item() * y.numel()
            correct += (scores.argmax(1) == y).sum().item()
            seen += y.numel()
            activity.batch(scores, y)
    if distributed.world() > 1:  # data parallel: each process tested its share; the sums over all of them
        total_loss, correct, seen = distributed.sum_all([total_loss, correct, seen])
        activity.all_reduce()
    if seen == 0:
        raise DatasetError("the test set is empty: there is nothing to test (check dataset.data_dir)")
    summary = activity.summary()
    energy = OmegaConf.merge(OmegaConf.structured(EnergyConfig), run.cfg.get("energy") or {})
    return {"loss": total_loss / seen, "acc": correct / seen, **summary, **static_metrics(run.model),
            "energy_per_sample_pj": energy_pj(summary["effective_acs_per_sample"],
                                              summary["effective_macs_per_sample"], energy.ac_pj, energy.mac_pj)}


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
    optimizer = instantiate(run.cfg.optim, params=fusion.parameters(run.model))  # in the checkpoints' order
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.cfg.trainer.amp and run.device.type == "cuda")
    return TrainState(run.model, optimizer, instantiate(run.cfg.sched, optimizer=optimizer), scaler)


def describe(run: Run, run_dir: Path, state: TrainState, resumed_from: Optional[Path]) -> None:
    """The log lines a run starts with: where it writes, the network, the data, where a resumed run goes on."""
    cfg = run.cfg
    log.info("run dir: %s", run_dir)
    log.info("network (%d parameters) on %s:\n%s", sum(p.numel() for p in run.model.parameters()), run.device,
             run.model)
    log.info("data: %d train / %d test samples", len(run.splits.train), len(run.splits.test))
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
    logger = RunLogger(run_dir, purge_step=state.epoch + 1 if resume else None) if distributed.is_main() else None
    with StopSignals() as signals, logger or nullcontext():
        if logger:
            logger.start(hparams)
            if behind:  # the epoch whose metrics.json write failed (or never came) has no TensorBoard points either
                logger.scalars(metrics_scalars(state.metrics), state.epoch)
        for epoch in range(state.epoch + 1, cfg.trainer.epochs + 1):
            train_m = _train_saving(run, train_loader, state, epoch, signals, last, meta)
            distributed.sync_buffers(run.model)  # rank 0's BN statistics, the ones its checkpoint keeps
            test_m = evaluate(run, test_loader)
            lr = state.optimizer.param_groups[0]["lr"]
            if state.totals is None:  # a whole epoch (not one cut by trainer.max_steps): the schedule moves on
                state.scheduler.step()
            is_best = test_m["acc"] > state.metrics["best_test_acc"]
            state.metrics = epoch_metrics(state.metrics, epoch, state.step, train_m, test_m, time.perf_counter() - t0,
                                          paper_acc)
            checkpoint.save(last, state, meta)
            if is_best:
                _save_best(best, last, state, meta, epoch)
            if distributed.is_main():
                checkpoint.write_json(run_dir / "metrics.json", state.metrics)
            if logger:  # after the checkpoint: a TensorBoard write that fails (a full disk) loses no training
                logger.scalars(epoch_scalars(state.metrics, train_m, test_m, lr, run.model), epoch)
                logger.activity(test_m, epoch)
            _log_epoch(epoch, cfg.trainer.epochs, train_m, test_m, state.metrics)
            if signals.requested():  # arrived in the test pass: the epoch is saved
                raise signals.interrupted(f"after epoch {epoch}: saved {last}")
            if cfg.trainer.max_steps is not None and state.step >= cfg.trainer.max_steps:
                log.info("reached trainer.max_steps=%d", cfg.trainer.max_steps)
                break
    if "test_acc" not in state.metrics:  # resumed a run that had nothing left to do before its first epoch ended
        raise CheckpointError(f"{resume}: nothing left to train (trainer.epochs={cfg.trainer.epochs})")
    paper = f" (paper: {100 * paper_acc:.2f}%)" if paper_acc is not None else ""
    log.info("done in %.1f s: test acc %.2f%%, best %.2f%%%s; %s", time.perf_counter() - t0,
             100 * state.metrics["test_acc"], 100 * state.metrics["best_test_acc"], paper, run_dir)
    return state.metrics


def _save_best(best: Path, last: Path, state: TrainState, meta: Dict[str, Any], epoch: int) -> None:
    """checkpoint.save of best.pt; if it fails, last.pt (written just before) holds this best epoch, from which a
    resume writes best.pt again (resume.reconcile)."""
    try:
        checkpoint.save(best, state, meta, end_of_epoch=epoch)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; {last} holds epoch {epoch}, the best so far: resuming the run (snnexp train "
                              f"resume={last.parent.parent}) writes {best.name} from it") from None


def _train_saving(run: Run, loader, state: TrainState, epoch: int, signals: StopSignals, last: Path,
                  meta: Dict[str, Any]) -> Dict[str, Any]:
    """train_epoch, saving `last` every trainer.ckpt_every_steps steps and when a stop is asked for (then
    Interrupted); a non-finite loss or gradient says which checkpoint is kept."""
    every = run.cfg.trainer.ckpt_every_steps

    def after_step(last_batch: bool) -> None:
        stop = signals.requested()
        if stop or (every and state.step % every == 0 and not last_batch):  # the epoch's end saves anyway
            checkpoint.save(last, state, meta)
        if stop:
            raise signals.interrupted(f"at step {state.step} (epoch {epoch}, batch {state.totals.batches}): saved "
                                      f"{last}")

    try:
        return train_epoch(run, loader, state, epoch, after_step)
    except NonFiniteError as e:
        kept = f"the last good checkpoint is kept: {last}" if last.is_file() else "no checkpoint had been written yet"
        raise NonFiniteError(f"{e}; {kept}") from None


def _log_epoch(epoch: int, epochs: int, train_m: Dict[str, Any], test_m: Dict[str, Any], metrics: Dict[str, Any]):
    log.info("epoch %d/%d  train loss %.4f acc %.2f%%  test loss %.4f acc %.2f%% (best %.2f%%)  %.0f samples/s",
             epoch, epochs, train_m["loss"], 100 * train_m["acc"], test_m["loss"], 100 * test_m["acc"],
             100 * metrics["best_test_acc"], train_m["samples_per_s"])
    if train_m["skipped"]:
        log.warning("epoch %d: %d batches with a non-finite loss or gradient were skipped", epoch, train_m["skipped"])


def evaluate_checkpoint(path, device_name: str = "auto", data_dir: Optional[str] = None,
                        batch_size: Optional[int] = None, neurobench: bool = False,
                        config_dirs: Optional[Sequence[Path]] = None) -> Dict[str, Any]:
    """Rebuild the network from the config stored in a checkpoint and test it. The stored trainer settings are
    read through the schema (TrainerConfig), so a checkpoint written before a setting existed gets its default.
    `neurobench`: also run NeuroBench's Benchmark on it (neurobench_results), under the key "neurobench".
    `config_dirs`: the trusted config folders whose targets the stored config may name (checkpoint.stored_config)."""
    if neurobench:
        require_neurobench()
    state = checkpoint.load(path)
    cfg = checkpoint.stored_config(state, path, config_dirs)
    cfg.trainer = OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg.trainer)
    if data_dir is not None:
        if "data_dir" not in cfg.dataset:
            raise CheckpointError(f"data_dir given, but the checkpoint's dataset ({cfg.dataset._target_}) takes none")
        cfg.dataset.data_dir = str(Path(data_dir).expanduser().resolve())
    if batch_size is not None:
        cfg.trainer.batch_size = batch_size
    run = build_run(cfg, resolve_device(device_name))
    try:
        run.model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the network of its own config: {e}") from None
    loader = make_loader(run.splits.test, cfg)
    test = evaluate(run, loader)
    paper_acc = OmegaConf.select(cfg, "paper.test_acc", default=None)  # a reproduction's checkpoint
    metrics = test_metrics(test, paper_acc)
    metrics.update(epoch=state["epoch"], checkpoint=str(Path(path).resolve()))
    if neurobench:
        metrics["neurobench"] = neurobench_results(run, loader)
    return metrics


def require_neurobench() -> None:
    """ConfigError with the way to install it, when the optional neurobench package is missing."""
    try:
        import neurobench  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"neurobench=true needs the neurobench package, which cannot be imported ({e}): install it "
                          "with pip install 'snnexp[neurobench]' (or pip install neurobench)") from None


def neurobench_results(run: Run, loader) -> Dict[str, Any]:
    """NeuroBench's own results (snnexp.harness.run_benchmark) for the run's network on the test batches of
    `loader`, with the input spikes of our own test pass (the same seeded generator), by NeuroBench's names."""
    from snnexp.harness import Encode, run_benchmark

    generator = torch.Generator(run.device).manual_seed(EVAL_SEED)
    preprocessors = [] if run.splits.sequence else [Encode(run.encoder, run.cfg.trainer.T, generator)]
    return run_benchmark(run.model, loader, preprocessors, run.readout, run.device)
