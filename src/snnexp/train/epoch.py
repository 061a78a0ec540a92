"""One training epoch: forward (encode, network, readout), the loss, the backward (in micro-batches where asked),
the optimizer step, and what the epoch adds up (metrics.train_summary)."""
import logging
import time
from contextlib import contextmanager, nullcontext
from typing import Callable, Optional, Tuple

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from snnexp.errors import NonFiniteError
from snnexp.report.metrics import TrainSummary, train_summary
from snnexp.train import distributed
from snnexp.train.build import Run
from snnexp.train.checkpoint import EpochTotals, TrainState
from snnexp.train.diagnose import all_finite, diagnose_nonfinite, layer_grad_norms

log = logging.getLogger("snnexp")


def autocast(run: Run):
    if not run.cfg.trainer.amp:
        return nullcontext()
    dtype = torch.float16 if run.device.type == "cuda" else torch.bfloat16
    return torch.autocast(run.device.type, dtype=dtype)


def network_output(run: Run, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """[B, ...] batch -> the output layer's spikes (or potentials) [T, B, ...]: encode over T steps (event data
    arrives as frames [B, T, ...]) and run the network."""
    if run.splits.sequence:
        x_seq = x.transpose(0, 1)
    else:
        x_seq = run.encoder(x, run.cfg.trainer.T, generator=generator)
    with autocast(run):
        return (run.net if run.model.training else run.eval_net)(x_seq).float()


def forward(run: Run, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """[B, ...] batch -> [B, classes] scores: the network's output, read out."""
    return run.readout(network_output(run, x, generator))


def scores_and_loss(run: Run, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The class scores [B, classes] of a batch and its loss: of those scores, or, for a loss that takes every time
    step (`per_step`: TET), of the readout's scores at each step [T, B, classes]."""
    out = network_output(run, x, generator)
    scores = run.readout(out)
    per_step = getattr(run.loss_fn, "per_step", False)
    return scores, run.loss_fn(run.readout.per_step(out) if per_step else scores, y)


def train_epoch(run: Run, loader: DataLoader, state: TrainState, epoch: int,
                after_step: Optional[Callable[[bool, Optional[float]], None]] = None) -> TrainSummary:
    """One pass over the training set, from where `state.totals` left it (a resumed epoch). Updates state.step
    and state.totals; at the end of a whole epoch, state.epoch = epoch and state.totals = None. Returns train_m
    (metrics.train_summary). after_step(last_batch, loss) runs after every batch, with the batch's mean loss (None
    for a batch skipped as non-finite): the per-step loss is logged, checkpoints and stops happen there."""
    run.model.train()
    with cumulative_bn_statistics(run.model, epoch == 1):
        return _train_epoch(run, loader, state, epoch, after_step)


@contextmanager
def cumulative_bn_statistics(model: nn.Module, on: bool):
    """While `on` (the first epoch), every BN's running statistics are the cumulative average of the batches so far
    (momentum None) instead of the configured exponential one, which starts from mean 0 and variance 1: after a few
    dozen steps (one epoch of the digits, trainer.max_steps=20) that is still far from the data, the test pass
    normalises with it and the output layer may not fire at all (chance accuracy). Later epochs use the configured
    momentum again, so that a full run's statistics end as they did (docs/science.md, section 3)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
           and m.momentum is not None] if on else []
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.momentum = None
    try:
        yield
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum


def _train_epoch(run: Run, loader: DataLoader, state: TrainState, epoch: int,
                 after_step: Optional[Callable[[bool, Optional[float]], None]]) -> TrainSummary:
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
            after_step(totals.batches == epoch_batches, learned[1] if learned is not None else None)
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
        norms = layer_grad_norms(run.model, run.parameter_layers)
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
    if hasattr(run.learning, "backward_batch"):  # learning=ottt: the rule runs the batch step by step
        return _backward_online(run, state, x, y)
    size = run.cfg.trainer.micro_batch or len(y)
    if run.learning is not None:  # e.g. SLTT-K's time steps with a gradient, drawn for this batch
        run.learning.before_batch(run.model, run.cfg.trainer.seed, state.step, run.cfg.trainer.T)
    pieces = list(zip(x.split(size), y.split(size)))
    scores, total = [], 0.0
    for i, (xp, yp) in enumerate(pieces):
        # data parallel: the processes average their gradients once, at the last piece's backward
        syncing = i == len(pieces) - 1 or not hasattr(run.net, "no_sync")
        with nullcontext() if syncing else run.net.no_sync():
            out, loss = scores_and_loss(run, xp, yp)
            loss = loss * (len(yp) / len(y))
            # data parallel: all processes skip (or stop at) a batch that is non-finite on any, or backward would hang
            if distributed.any_true(not torch.isfinite(loss).item()):
                return None, float("nan"), (xp, loss)
            state.scaler.scale(loss).backward()
        scores.append(out.detach())
        total += loss.item()
    return torch.cat(scores), total, None


def _backward_online(run: Run, state: TrainState, x: torch.Tensor, y: torch.Tensor):
    """_backward_in_pieces' result for a rule that runs a batch one time step at a time (learning=ottt), each step's
    loss (of that step's scores: the readout of one step) backpropagated at once."""
    x_seq = x.transpose(0, 1) if run.splits.sequence else run.encoder(x, run.cfg.trainer.T)
    per_step = getattr(run.loss_fn, "per_step", False)

    def step(x_step):
        with autocast(run):
            return run.model(x_step).float()

    def step_loss(out):
        return run.loss_fn(run.readout.per_step(out) if per_step else run.readout(out), y)

    def backward(loss):
        state.scaler.scale(loss).backward()

    outs, total, bad = run.learning.backward_batch(step, x_seq, step_loss, backward)
    if bad is not None:
        return None, float("nan"), (x, bad)
    return run.readout(outs), total, None
