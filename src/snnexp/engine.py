"""Build, train, evaluate, checkpoint. Knows nothing about which dataset, neuron or network it runs:
everything arrives as objects that Hydra instantiated from the config.

    config -> build_run (data, encoder, model, readout, loss) -> fit (epochs of train_epoch + evaluate)
           -> run dir: metrics.json, checkpoints/{last,best}.pt, TensorBoard events
"""

import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from snnexp.config import ConfigError
from snnexp.encoders import DirectEncoder
from snnexp.logging import RunLogger
from snnexp.neurons import PLIF, SpikingNeuron

log = logging.getLogger("snnexp")

CHECKPOINT_FORMAT = 1
EVAL_SEED = 1234  # the stochastic encoders draw from their own seeded generator at test time, so a
# checkpoint's test accuracy is the same number during training and in `snnexp eval`


class CheckpointError(RuntimeError):
    """A file that is missing, unreadable or not a snnexp checkpoint."""


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
    net: Optional[Any] = None  # what forward() calls: the model, or torch.compile of it (trainer.compile)

    def __post_init__(self):
        if self.net is None:
            self.net = self.model


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


def build_run(cfg: DictConfig, device: torch.device) -> Run:
    """Instantiate data, encoder, network, readout and loss from the config."""
    splits = instantiate(cfg.dataset)
    encoder = instantiate(cfg.encoder)
    if splits.sequence and not isinstance(encoder, DirectEncoder):
        raise ConfigError(f"this dataset gives event frames, which are fed as they are: use encoder=direct, "
                          f"not {type(encoder).__name__}")
    readout = instantiate(cfg.readout)
    surrogate = instantiate(cfg.surrogate)
    model = instantiate(
        cfg.model,
        input_shape=list(splits.input_shape),
        num_outputs=splits.num_classes * readout.population,
        neuron=instantiate(cfg.neuron, surrogate=surrogate),
        norm=instantiate(cfg.norm),
    )
    model = model.to(device)
    if cfg.trainer.get("channels_last", False):
        model = model.to(memory_format=torch.channels_last)  # conv weights; their outputs follow
    # the checkpoint keeps the model's own state_dict keys; only forward() goes through the compiled net
    # dynamic=False: one graph per input shape (train, last batch, test); with symbolic shapes inductor cannot
    # order the strides of the neuron op's output (InductorError "cannot determine truth value of Relational")
    net = torch.compile(model, dynamic=False) if cfg.trainer.get("compile", False) else model
    return Run(cfg, splits, encoder, model, readout, instantiate(cfg.loss), device, net)


def make_loader(dataset, cfg: DictConfig, train: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(cfg.trainer.seed)
    return DataLoader(
        dataset,
        batch_size=cfg.trainer.batch_size,
        shuffle=train,
        generator=generator if train else None,
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
        spikes = run.net(x_seq)
    return run.readout(spikes.float())


def train_epoch(run, loader, optimizer, scaler, epoch: int, step: int, max_steps: Optional[int]):
    """One pass over the training set. Returns (metrics, global step)."""
    run.model.train()
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    grad_norms: Dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}/{run.cfg.trainer.epochs}", leave=False,
               disable=None if run.cfg.trainer.progress else True, dynamic_ncols=True)
    timed = 0  # samples counted in samples/s: with trainer.compile, not the first step's (it compiles)
    for x, y in bar:
        if steps == 1 and run.cfg.trainer.get("compile", False):
            start, timed = time.perf_counter(), 0
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        scores = forward(run, x)
        loss = run.loss_fn(scores, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # true gradients for the norms below (a no-op without AMP on CUDA)
        for layer, norm in layer_grad_norms(run.model).items():
            grad_norms[layer] = grad_norms.get(layer, 0.0) + norm
        scaler.step(optimizer)
        scaler.update()
        step += 1
        steps += 1
        n = y.numel()
        total_loss += loss.item() * n
        correct += (scores.argmax(1) == y).sum().item()
        seen += n
        timed += n
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{100 * correct / seen:.2f}%")
        if max_steps is not None and step >= max_steps:
            break
    elapsed = time.perf_counter() - start
    return {"loss": total_loss / seen, "acc": correct / seen, "samples_per_s": timed / elapsed,
            "grad_norm": {k: v.item() / steps for k, v in grad_norms.items()}}, step


def layer_grad_norms(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The gradient norm of each layer's parameters (a layer: the name before the last '.'), so that
    exploding or vanishing gradients through depth (Ledinauskas 2020) show in TensorBoard."""
    squares: Dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            layer = name.rsplit(".", 1)[0]
            squares[layer] = squares.get(layer, 0.0) + p.grad.detach().float().pow(2).sum()
    return {layer: sq.sqrt() for layer, sq in squares.items()}


@torch.no_grad()
def evaluate(run: Run, loader) -> Dict[str, Any]:
    """Test loss, accuracy and the mean firing rate of every spiking layer."""
    run.model.eval()
    generator = torch.Generator(run.device).manual_seed(EVAL_SEED)
    rates: Dict[str, float] = {}
    hooks = []
    for name, module in spiking_layers(run.model).items():
        def record(mod, inputs, spikes, name=name):
            rates[name] = rates.get(name, 0.0) + spikes.float().mean().item() * spikes.shape[1]
        hooks.append(module.register_forward_hook(record))
    total_loss, correct, seen = 0.0, 0, 0
    try:
        for x, y in loader:
            x, y = x.to(run.device), y.to(run.device)
            scores = forward(run, x, generator)
            total_loss += run.loss_fn(scores, y).item() * y.numel()
            correct += (scores.argmax(1) == y).sum().item()
            seen += y.numel()
    finally:
        for h in hooks:
            h.remove()
    return {"loss": total_loss / seen, "acc": correct / seen, "firing_rate": {k: v / seen for k, v in rates.items()}}


def spiking_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """Spiking layers by a readable name: position in the network and type, e.g. '03_PLIF'."""
    return {f"{int(name):02d}_{type(m).__name__}" if name.isdigit() else f"{name}_{type(m).__name__}": m
            for name, m in model.named_modules() if isinstance(m, SpikingNeuron)}


def save_checkpoint(path: Path, run: Run, optimizer, scheduler, scaler, epoch: int, step: int, metrics) -> None:
    """Write atomically: a crash mid-write leaves the previous file intact."""
    state = {
        "snnexp_checkpoint": CHECKPOINT_FORMAT,
        "model": run.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "metrics": metrics,
        "config": OmegaConf.to_container(run.cfg, resolve=True),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> Dict[str, Any]:
    """Load without executing code from the file (weights_only) and check it is a snnexp checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or a pickle that needs arbitrary code
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a valid snnexp checkpoint (truncated, or not written by "
            f"snnexp train): {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(state, dict) or "snnexp_checkpoint" not in state:
        raise CheckpointError(f"{path} is a torch file but not a snnexp checkpoint (no 'snnexp_checkpoint' key)")
    if state["snnexp_checkpoint"] > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state['snnexp_checkpoint']}: upgrade snnexp")
    return state


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def fit(cfg: DictConfig, run_dir: Path, hparams: Dict[str, Any]) -> Dict[str, Any]:
    """Train for trainer.epochs (or trainer.max_steps), testing after every epoch. Returns metrics.json."""
    t0 = time.perf_counter()
    seed_everything(cfg.trainer.seed)
    device = resolve_device(cfg.trainer.device)
    run = build_run(cfg, device)
    train_loader = make_loader(run.splits.train, cfg, train=True)
    test_loader = make_loader(run.splits.test, cfg, train=False)
    optimizer = instantiate(cfg.optim, params=run.model.parameters())
    scheduler = instantiate(cfg.sched, optimizer=optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=bool(cfg.trainer.amp) and device.type == "cuda")

    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in run.model.parameters())
    log.info("run dir: %s", run_dir)
    log.info("network (%d parameters) on %s:\n%s", n_params, device, run.model)
    log.info("data: %d train / %d test samples", len(run.splits.train), len(run.splits.test))

    logger = RunLogger(run_dir)
    logger.start(hparams)
    metrics: Dict[str, Any] = {"best_test_acc": 0.0}
    paper_acc = OmegaConf.select(cfg, "paper.test_acc", default=None)  # a reproduction's published result
    step, success = 0, False
    try:
        for epoch in range(1, cfg.trainer.epochs + 1):
            train_m, step = train_epoch(run, train_loader, optimizer, scaler, epoch, step, cfg.trainer.max_steps)
            test_m = evaluate(run, test_loader)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            if not math.isfinite(train_m["loss"]):
                raise FloatingPointError(
                    f"training loss is {train_m['loss']} in epoch {epoch}: lower optim.lr or the surrogate's scale"
                )
            is_best = test_m["acc"] > metrics["best_test_acc"]
            metrics = {
                "test_acc": test_m["acc"],
                "test_loss": test_m["loss"],
                "best_test_acc": max(test_m["acc"], metrics["best_test_acc"]),
                "best_epoch": epoch if is_best else metrics.get("best_epoch", epoch),
                "train_acc": train_m["acc"],
                "train_loss": train_m["loss"],
                "epoch": epoch,
                "step": step,
                "train_samples_per_s": train_m["samples_per_s"],
                "wall_s": time.perf_counter() - t0,
                "firing_rate": test_m["firing_rate"],
            }
            scalars = {
                "train/loss": train_m["loss"], "train/acc": train_m["acc"],
                "test/loss": test_m["loss"], "test/acc": test_m["acc"], "test/best_acc": metrics["best_test_acc"],
                "lr": lr, "train/samples_per_s": train_m["samples_per_s"],
            }
            if paper_acc is not None:  # in TensorBoard a flat line beside test/acc and a column in HPARAMS
                metrics["paper_test_acc"] = scalars["paper/test_acc"] = paper_acc
            scalars.update({f"firing_rate/{k}": v for k, v in test_m["firing_rate"].items()})
            scalars.update({f"grad_norm/{k}": v for k, v in train_m["grad_norm"].items()})
            scalars.update({f"tau/{k}": m.tau for k, m in spiking_layers(run.model).items() if isinstance(m, PLIF)})
            logger.scalars(scalars, epoch)
            save_checkpoint(ckpt_dir / "last.pt", run, optimizer, scheduler, scaler, epoch, step, metrics)
            if is_best:
                save_checkpoint(ckpt_dir / "best.pt", run, optimizer, scheduler, scaler, epoch, step, metrics)
            write_json(run_dir / "metrics.json", metrics)
            log.info(
                "epoch %d/%d  train loss %.4f acc %.2f%%  test loss %.4f acc %.2f%% (best %.2f%%)  %.0f samples/s",
                epoch, cfg.trainer.epochs, train_m["loss"], 100 * train_m["acc"], test_m["loss"],
                100 * test_m["acc"], 100 * metrics["best_test_acc"], train_m["samples_per_s"],
            )
            if cfg.trainer.max_steps is not None and step >= cfg.trainer.max_steps:
                log.info("reached trainer.max_steps=%d", cfg.trainer.max_steps)
                break
        success = True
    finally:
        logger.close(success)
    paper = f" (paper: {100 * paper_acc:.2f}%)" if paper_acc is not None else ""
    log.info("done in %.1f s: test acc %.2f%%, best %.2f%%%s; %s", metrics["wall_s"], 100 * metrics["test_acc"],
             100 * metrics["best_test_acc"], paper, run_dir)
    return metrics


def evaluate_checkpoint(path, device_name: str = "auto", data_dir: Optional[str] = None,
                        batch_size: Optional[int] = None) -> Dict[str, Any]:
    """Rebuild the network from the config stored in a checkpoint and test it."""
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    if data_dir is not None:
        if "data_dir" not in cfg.dataset:
            raise CheckpointError(f"data_dir given, but the checkpoint's dataset ({cfg.dataset._target_}) takes none")
        cfg.dataset.data_dir = str(Path(data_dir).expanduser().resolve())
    if batch_size is not None:
        cfg.trainer.batch_size = batch_size
    device = resolve_device(device_name)
    run = build_run(cfg, device)
    try:
        run.model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the network of its own config: {e}") from None
    test = evaluate(run, make_loader(run.splits.test, cfg, train=False))
    metrics = {"test_acc": test["acc"], "test_loss": test["loss"], "epoch": state["epoch"],
               "firing_rate": test["firing_rate"], "checkpoint": str(Path(path).resolve())}
    paper_acc = OmegaConf.select(cfg, "paper.test_acc", default=None)
    if paper_acc is not None:  # a reproduction's checkpoint
        metrics["paper_test_acc"] = paper_acc
    return metrics
