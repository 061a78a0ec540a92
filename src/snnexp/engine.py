"""Build, train, evaluate, checkpoint. Knows nothing about which dataset, neuron or network it runs:
everything arrives as objects that Hydra instantiated from the config.

    config -> build_run (data, encoder, model, readout, loss) -> fit (epochs of train_epoch + evaluate)
           -> run dir: metrics.json, checkpoints/{last,best}.pt, TensorBoard events
"""

import json
import logging
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from snnexp import distributed
from snnexp.activity import Activity, confusion_image, input_is_spikes, raster_image
from snnexp.config import ConfigError
from snnexp.encoders import DirectEncoder
from snnexp.logging import RunLogger
from snnexp.neurons import PLIF, SpikingNeuron

log = logging.getLogger("snnexp")

CHECKPOINT_FORMAT = 2  # 2: RNG states and the position within an epoch, for exact resume
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
    net: Optional[Any] = None  # what forward() calls in training: the model, wrapped in DDP (trainer.strategy=ddp)
    # and/or compiled (trainer.compile); the checkpoint keeps the model's own state_dict keys
    eval_net: Optional[Any] = None  # in eval mode: the same without DDP (a test pass needs no gradient sync)

    def __post_init__(self):
        if self.net is None:
            self.net = self.model
        if self.eval_net is None:
            self.eval_net = self.net


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
    return instantiate(
        cfg.model,
        input_shape=list(input_shape),
        num_outputs=num_classes * instantiate(cfg.readout).population,
        neuron=instantiate(cfg.neuron, surrogate=instantiate(cfg.surrogate)),
        norm=instantiate(cfg.norm),
    )


def build_run(cfg: DictConfig, device: torch.device, ddp: bool = False) -> Run:
    """Instantiate data, encoder, network, readout and loss from the config (`ddp`: for a process of a
    data-parallel run)."""
    splits = instantiate(cfg.dataset)
    encoder = instantiate(cfg.encoder)
    if splits.sequence and not isinstance(encoder, DirectEncoder):
        raise ConfigError(f"this dataset gives event frames, which are fed as they are: use encoder=direct, "
                          f"not {type(encoder).__name__}")
    readout = instantiate(cfg.readout)
    model = build_model(cfg, splits.input_shape, splits.num_classes).to(device)
    if cfg.trainer.get("channels_last", False):
        model = model.to(memory_format=torch.channels_last)  # conv weights; their outputs follow
    # dynamic=False: one graph per input shape (train, last batch, test); with symbolic shapes inductor cannot
    # order the strides of the neuron op's output (InductorError "cannot determine truth value of Relational")
    compiled = torch.compile(model, dynamic=False) if cfg.trainer.get("compile", False) else model
    if not ddp:
        return Run(cfg, splits, encoder, model, readout, instantiate(cfg.loss), device, compiled)
    net = distributed.wrap(model, device)
    net = torch.compile(net, dynamic=False) if cfg.trainer.get("compile", False) else net
    return Run(cfg, splits, encoder, model, readout, instantiate(cfg.loss), device, net, eval_net=compiled)


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


def make_loader(dataset, cfg: DictConfig, train: bool) -> DataLoader:
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


class NonFiniteError(FloatingPointError):
    """A NaN or inf loss or gradient; the message names the step, the layer and likely causes."""


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


def train_epoch(run, loader, optimizer, scaler, epoch: int, step: int, max_steps: Optional[int],
                totals: Optional[EpochTotals] = None, after_step=None):
    """One pass over the training set (from where `totals` left it). Returns (metrics, global step).
    after_step(step, totals) runs after every batch: checkpoints and interruptions happen there."""
    run.model.train()
    totals = totals or EpochTotals()
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}/{run.cfg.trainer.epochs}", leave=False, initial=totals.batches,
               total=totals.batches + len(loader),
               disable=None if run.cfg.trainer.progress and distributed.is_main() else True,
               dynamic_ncols=True)
    timed, calls = 0, 0  # samples counted in samples/s: with trainer.compile, not the first step's (it compiles)
    for x, y in bar:
        if calls == 1 and run.cfg.trainer.get("compile", False):
            start, timed = time.perf_counter(), 0
        calls += 1
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        scores = forward(run, x)
        loss = run.loss_fn(scores, y)
        optimizer.zero_grad(set_to_none=True)
        totals.batches += 1
        norms = None
        # data parallel: all processes skip (or stop at) a batch that is non-finite on any, or backward would hang
        if not distributed.any_true(not torch.isfinite(loss).item()):
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # true gradients for the norms below (a no-op without AMP on CUDA)
            norms = layer_grad_norms(run.model)
        # with float16 loss scaling an inf gradient is the scaler's business: it skips the step itself
        bad_grad = norms is not None and not scaler.is_enabled() and \
            not torch.isfinite(torch.stack(list(norms.values())).sum() if norms else torch.zeros(())).item()
        if norms is None or bad_grad:
            if run.cfg.trainer.get("on_nonfinite", "stop") != "skip":
                raise NonFiniteError(diagnose_nonfinite(run, x, loss, step + 1, epoch, totals.batches))
            optimizer.zero_grad(set_to_none=True)
            totals.skipped += 1
            log.warning("step %d: non-finite %s, batch skipped (%d so far this epoch)", step + 1,
                        "loss" if norms is None else "gradient", totals.skipped)
        else:
            for layer, norm in norms.items():
                totals.grad_norm[layer] = totals.grad_norm.get(layer, 0.0) + norm.item()
            try:
                scaler.step(optimizer)
            except RuntimeError as e:  # e.g. Adam: "value cannot be converted to type float without overflow"
                if "overflow" not in str(e):
                    raise
                raise NonFiniteError(f"the optimizer step {step + 1} (epoch {epoch}, batch {totals.batches}) "
                                     f"overflows: {e}. Likely cause: a learning rate too high (optim.lr="
                                     f"{OmegaConf.select(run.cfg, 'optim.lr')})") from None
            scaler.update()
            step += 1
            totals.steps += 1
            n = y.numel()
            totals.loss += loss.item() * n
            totals.correct += (scores.argmax(1) == y).sum().item()
            totals.seen += n
            timed += n
            bar.set_postfix(loss=f"{totals.loss / totals.seen:.4f}", acc=f"{100 * totals.correct / totals.seen:.2f}%")
        if after_step is not None:
            after_step(step, totals)
        if max_steps is not None and step >= max_steps:
            break
    elapsed = distributed.max_all(time.perf_counter() - start)
    loss_sum, correct, seen, timed = distributed.sum_all([totals.loss, totals.correct, totals.seen, timed])
    return {"loss": loss_sum / seen if seen else float("nan"), "acc": correct / max(seen, 1),
            "samples_per_s": timed / elapsed if elapsed > 0 else 0.0, "skipped": totals.skipped,
            "grad_norm": {k: v / max(totals.steps, 1) for k, v in totals.grad_norm.items()}}, step


@torch.no_grad()
def diagnose_nonfinite(run: Run, x: torch.Tensor, loss: torch.Tensor, step: int, epoch: int, batch: int) -> str:
    """Where a non-finite loss or gradient first appears: the first layer whose output is not finite when the
    batch runs again, else (a finite forward) the last layer whose gradient is not finite."""
    what = f"non-finite loss ({loss.item()})" if not torch.isfinite(loss) else "non-finite gradient"
    first: list = []
    hooks = []
    for name, module in run.model.named_modules():
        if name and not list(module.children()):
            def check(mod, inputs, out, name=name):
                if not first and isinstance(out, torch.Tensor) and not torch.isfinite(out).all():
                    first.append(f"{name} ({type(mod).__name__})")
            hooks.append(module.register_forward_hook(check))
    bad_params = [n for n, p in run.model.named_parameters()
                  if p.grad is not None and not torch.isfinite(p.grad).all()]
    try:
        forward(run, x)
    finally:
        for h in hooks:
            h.remove()
    if first:
        where = f"it first appears in the output of layer {first[0]}"
    elif not torch.isfinite(x).all():
        where = "the input batch itself holds NaN or inf values"
    elif bad_params:
        where = f"the forward pass is finite; the gradient is first non-finite at {bad_params[-1]}"
    else:
        where = "the forward pass is finite when repeated"
    cfg = run.cfg
    causes = [f"a learning rate too high (optim.lr={OmegaConf.select(cfg, 'optim.lr')})"]
    for key in ("surrogate.alpha", "surrogate.slope", "surrogate.height"):
        if OmegaConf.select(cfg, key, default=None) is not None:
            causes.append(f"a surrogate gradient too steep ({key}={OmegaConf.select(cfg, key)})")
    causes.append("NaN or inf in the data")
    return (f"{what} at step {step} (epoch {epoch}, batch {batch}): {where}. Likely causes: {'; '.join(causes)}. "
            f"To leave such batches out instead of stopping: trainer.on_nonfinite=skip")


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
    """Test loss, accuracy and the network's activity (snnexp.activity.Activity.summary): the mean firing rate of
    every spiking layer, spikes and synaptic operations per sample, per-neuron rates, and the spike raster and
    confusion matrix of the first (fixed) test batch."""
    run.model.eval()
    generator = torch.Generator(run.device).manual_seed(EVAL_SEED)
    total_loss, correct, seen = 0.0, 0, 0
    with Activity(run.model, spiking_layers(run.model), input_is_spikes(run.encoder, run.splits.sequence)) as activity:
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
    return {"loss": total_loss / seen, "acc": correct / seen, **activity.summary()}


def spiking_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """Spiking layers by a readable name: position in the network and type, e.g. '03_PLIF'."""
    return {f"{int(name):02d}_{type(m).__name__}" if name.isdigit() else f"{name}_{type(m).__name__}": m
            for name, m in model.named_modules() if isinstance(m, SpikingNeuron)}


# what evaluate() measures of the network's activity that goes into metrics.json (the arrays go to TensorBoard only)
ACTIVITY_METRICS = ("spikes_per_sample", "sops_per_sample", "layer_spikes_per_sample", "layer_sops_per_sample")


def log_activity(logger: RunLogger, test_m: Dict[str, Any], epoch: int) -> None:
    """TensorBoard images and histograms of a test pass: the spike raster of the fixed test batch's first sample
    per spiking layer, that batch's confusion matrix, and the distribution of per-neuron firing rates per layer."""
    images = {f"spike_raster/{k}": raster_image(v) for k, v in test_m["raster"].items()}
    if test_m["confusion"] is not None:
        images["confusion/test_batch"] = confusion_image(test_m["confusion"])
    logger.images(images, epoch)
    logger.histograms({f"firing_rate_hist/{k}": v for k, v in test_m["neuron_rates"].items()}, epoch)


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


def save_checkpoint(path: Path, run: Run, optimizer, scheduler, scaler, epoch: int, step: int, metrics,
                    totals: Optional[EpochTotals] = None) -> None:
    """Everything a resumed run needs to go on exactly: weights, optimizer, schedule, loss scale, the RNG
    states and the position in the data (`epoch` epochs done, plus `totals.batches` batches of the next).
    Written atomically: a crash or a full disk mid-write leaves the previous file intact.
    Data parallel: every process calls it (their RNG states and metric sums are gathered); rank 0 writes."""
    rngs = distributed.gather(rng_state())
    if totals is not None and distributed.world() > 1:  # the sums over all processes; a resume gives them to rank 0
        loss, correct, seen = distributed.sum_all([totals.loss, totals.correct, totals.seen])
        totals = replace(totals, loss=loss, correct=int(correct), seen=int(seen))
    error = None
    if distributed.is_main():
        error = _write_checkpoint(path, run, optimizer, scheduler, scaler, epoch, step, metrics, totals, rngs)
    error = distributed.from_main(error)
    if error:
        raise CheckpointError(error)


def _write_checkpoint(path, run, optimizer, scheduler, scaler, epoch, step, metrics, totals, rngs) -> Optional[str]:
    state = {
        "snnexp_checkpoint": CHECKPOINT_FORMAT,
        "model": run.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "batch": totals.batches if totals else 0,
        "totals": asdict(totals) if totals else None,
        "step": step,
        "metrics": metrics,
        "rng": rngs[0],
        "rng_per_process": rngs if len(rngs) > 1 else None,  # data parallel: rank r's states at r
        "config": OmegaConf.to_container(run.cfg, resolve=True),
        "input_shape": list(run.splits.input_shape),  # so that snnexp export rebuilds the network without the data
        "num_classes": run.splits.num_classes,
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        return (f"cannot write checkpoint {path}: {e.strerror or e} (free disk space, or give hydra.run.dir=... "
                f"elsewhere); the previous checkpoint is intact")
    return None


def load_checkpoint(path) -> Dict[str, Any]:
    """Load without executing code from the file (weights_only) and check it is a snnexp checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a file
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or a pickle that needs arbitrary code
        text = str(e)
        if "Weights only load failed" in text:
            rest = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text \
                else text.split("\n", 1)[-1]
            detail = [line.strip() for line in rest.splitlines()
                      if line.strip() and not line.startswith(("Please file", "Check the documentation"))]
            needs = detail[0].split(". ")[0].rstrip(".") if detail else ""  # what it asked for, in torch's words
            raise CheckpointError(f"cannot read checkpoint {path}: it is not a snnexp checkpoint: loading it would "
                                  f"run Python code from the file, which snnexp never does"
                                  f"{' (' + needs + ')' if needs else ''}") from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a valid snnexp checkpoint (truncated, or not written by "
            f"snnexp train): {text.splitlines()[0].split('. ')[0]}"
        ) from None
    if not isinstance(state, dict) or "snnexp_checkpoint" not in state:
        raise CheckpointError(f"{path} is a torch file but not a snnexp checkpoint (no 'snnexp_checkpoint' key)")
    if state["snnexp_checkpoint"] > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state['snnexp_checkpoint']}: upgrade snnexp")
    return state


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {e.strerror or e} (free disk space, or give hydra.run.dir=... "
                              "elsewhere)") from None


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the current step finished and the run was saved; `exit_code` is 128 + the signal."""

    def __init__(self, signame: str, exit_code: int, message: str):
        super().__init__(message)
        self.signame, self.exit_code = signame, exit_code


class _StopSignals:
    """While training: the first SIGINT / SIGTERM only asks the loop to stop after the current step (a second
    one interrupts at once, as usual)."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def requested(self) -> bool:
        """A stop was asked for, here or (data parallel) in any other process, so that all stop at the same step;
        a process that got no signal of its own stops as if by SIGTERM."""
        if distributed.any_true(self.received is not None) and self.received is None:
            self.received = signal.SIGTERM
        return self.received is not None

    def interrupted(self, where: str) -> Interrupted:
        name = signal.Signals(self.received).name
        return Interrupted(name, 128 + self.received, f"{name} {where}")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_info(cfg: DictConfig, resumed_from: Optional[Path]) -> Dict[str, Any]:
    """What makes a run reproducible besides its config: command line, versions, the project's commit."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": sys.version.split()[0]}
    for pkg in ("snnexp", "torch", "torchvision", "hydra-core", "omegaconf", "tonic", "numpy", "tensorboard"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    source = Path(__file__).resolve().parents[2]
    commit = None
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            commit = out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"command": " ".join(sys.argv),  # the CLI sets argv[0] to "snnexp <command>"
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "resumed_from": str(resumed_from) if resumed_from else None,
            "versions": versions, "git_commit": commit, "host": platform.node(), "threads": torch.get_num_threads()}


def fit(cfg: DictConfig, run_dir: Path, hparams: Dict[str, Any], resume: Optional[Path] = None) -> Dict[str, Any]:
    """Train for trainer.epochs (or trainer.max_steps), testing after every epoch. Returns metrics.json.
    With `resume` (a checkpoint), go on exactly from where it was written."""
    t0 = time.perf_counter()
    ddp = cfg.trainer.get("strategy", "single") == "ddp"
    main = distributed.is_main()  # only rank 0 writes the run directory
    seed_everything(cfg.trainer.seed + distributed.rank())  # rank 0's weights are everyone's (DDP broadcasts them)
    if cfg.trainer.get("deterministic", False):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic results
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    device = distributed.device(cfg.trainer.device) if ddp else resolve_device(cfg.trainer.device)
    run = build_run(cfg, device, ddp)
    train_loader = make_loader(run.splits.train, cfg, train=True)
    test_loader = make_loader(run.splits.test, cfg, train=False)
    optimizer = instantiate(cfg.optim, params=run.model.parameters())
    scheduler = instantiate(cfg.sched, optimizer=optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=bool(cfg.trainer.amp) and device.type == "cuda")

    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    metrics: Dict[str, Any] = {"best_test_acc": 0.0}
    step, start_epoch, totals = 0, 1, None
    if resume is not None:
        state = load_checkpoint(resume)
        if "rng" not in state:
            raise CheckpointError(f"{resume} was written by an older snnexp (format {state['snnexp_checkpoint']}) "
                                  "without the state a resume needs; start a new run")
        try:
            run.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{resume} does not fit this config's network or optimizer (resume with the same "
                                  f"overrides as the run): {str(e).splitlines()[0]}") from None
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        rngs = state.get("rng_per_process") or [state["rng"]]
        if len(rngs) == distributed.world():
            set_rng_state(rngs[distributed.rank()])
        else:  # the data order depends on (seed, epoch) alone and goes on where it stopped
            log.warning("%s was saved by %d processes and is resumed by %d: the random draws (dropout, Poisson "
                        "spikes) start afresh from the seed", resume, len(rngs), distributed.world())
        metrics, step = state["metrics"] or metrics, state["step"]
        t0 -= metrics.get("wall_s", 0.0)  # wall_s counts the earlier sessions (up to their last epoch)
        start_epoch = state["epoch"] + 1
        totals = EpochTotals(**state["totals"]) if state["totals"] else None
        if totals and not main:  # the saved sums are over all processes: rank 0 carries them
            totals.loss, totals.correct, totals.seen = 0.0, 0, 0
        if start_epoch > cfg.trainer.epochs:
            log.info("resume: %s is from the end of epoch %d of %d; nothing left to train", resume, start_epoch - 1,
                     cfg.trainer.epochs)
        else:
            log.info("resumed from %s: epoch %d, batch %d, step %d", resume, start_epoch,
                     totals.batches if totals else 0, step)
    info_path = run_dir / "run_info.json"
    if main:
        sessions = json.loads(info_path.read_text()) if resume is not None and info_path.is_file() else []
        write_json(info_path, [*sessions, run_info(cfg, resume)])

    n_params = sum(p.numel() for p in run.model.parameters())
    log.info("run dir: %s", run_dir)
    log.info("network (%d parameters) on %s:\n%s", n_params, device, run.model)
    log.info("data: %d train / %d test samples", len(run.splits.train), len(run.splits.test))
    if ddp:
        if len(run.splits.test) < distributed.world():  # a process without test samples would wait for the others
            raise ConfigError(f"the test set has {len(run.splits.test)} samples, fewer than the {distributed.world()} "
                              "processes: use fewer processes (torchrun --nproc_per_node)")
        log.info("data parallel: %d processes, %d samples each per step (global batch %d)", distributed.world(),
                 cfg.trainer.batch_size // distributed.world(), cfg.trainer.batch_size)

    # a resumed run rewrites TensorBoard from its first unfinished epoch: no duplicate or stale points
    logger = RunLogger(run_dir, purge_step=start_epoch if resume is not None else None) if main else None
    if logger:
        logger.start(hparams)
    paper_acc = OmegaConf.select(cfg, "paper.test_acc", default=None)  # a reproduction's published result
    every = cfg.trainer.get("ckpt_every_steps", None)
    success = False
    with _StopSignals() as signals:
        try:
            for epoch in range(start_epoch, cfg.trainer.epochs + 1):
                done = totals.batches if totals else 0
                train_loader.sampler.set_epoch(epoch, done * train_loader.batch_size)

                def after_step(step, totals, epoch=epoch):
                    stop = signals.requested()
                    if stop or (every and step % every == 0 and totals.batches < len(train_loader) + done):
                        save_checkpoint(ckpt_dir / "last.pt", run, optimizer, scheduler, scaler, epoch - 1, step,
                                        metrics, totals)
                    if stop:
                        raise signals.interrupted(f"at step {step} (epoch {epoch}, batch {totals.batches}): saved "
                                                  f"{ckpt_dir / 'last.pt'}")

                totals = totals or EpochTotals()
                epoch_batches = done + len(train_loader)
                try:
                    train_m, step = train_epoch(run, train_loader, optimizer, scaler, epoch, step,
                                                cfg.trainer.max_steps, totals, after_step)
                except NonFiniteError as e:
                    last = ckpt_dir / "last.pt"
                    kept = f"the last good checkpoint is kept: {last}" if last.is_file() else \
                        "no checkpoint had been written yet"
                    raise NonFiniteError(f"{e}; {kept}") from None
                # stopped by trainer.max_steps within the epoch: tested and logged, but saved as the position it
                # is, so that a resume with more steps goes on with this epoch (and its schedule) from there
                partial = totals if totals.batches < epoch_batches else None
                totals = None
                distributed.sync_buffers(run.model)  # rank 0's BN statistics, the ones its checkpoint keeps
                test_m = evaluate(run, test_loader)
                lr = optimizer.param_groups[0]["lr"]
                if partial is None:
                    scheduler.step()
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
                    "skipped_batches": metrics.get("skipped_batches", 0) + train_m["skipped"],
                    "train_samples_per_s": train_m["samples_per_s"],
                    "wall_s": time.perf_counter() - t0,
                    "firing_rate": test_m["firing_rate"],
                    **{k: test_m[k] for k in ACTIVITY_METRICS},
                }
                scalars = {
                    "train/loss": train_m["loss"], "train/acc": train_m["acc"],
                    "test/loss": test_m["loss"], "test/acc": test_m["acc"], "test/best_acc": metrics["best_test_acc"],
                    "lr": lr, "train/samples_per_s": train_m["samples_per_s"],
                    "train/skipped_batches": train_m["skipped"],
                }
                if paper_acc is not None:  # in TensorBoard a flat line beside test/acc and a column in HPARAMS
                    metrics["paper_test_acc"] = scalars["paper/test_acc"] = paper_acc
                scalars.update({f"firing_rate/{k}": v for k, v in test_m["firing_rate"].items()})
                scalars.update({f"grad_norm/{k}": v for k, v in train_m["grad_norm"].items()})
                scalars.update({f"tau/{k}": m.tau for k, m in spiking_layers(run.model).items()
                                if isinstance(m, PLIF)})
                scalars["activity/spikes_per_sample"] = test_m["spikes_per_sample"]
                scalars["activity/sops_per_sample"] = test_m["sops_per_sample"]
                if logger:
                    logger.scalars(scalars, epoch)
                    log_activity(logger, test_m, epoch)
                save_checkpoint(ckpt_dir / "last.pt", run, optimizer, scheduler, scaler,
                                epoch - 1 if partial else epoch, step, metrics, partial)
                if is_best:
                    save_checkpoint(ckpt_dir / "best.pt", run, optimizer, scheduler, scaler, epoch, step, metrics)
                if main:
                    write_json(run_dir / "metrics.json", metrics)
                log.info(
                    "epoch %d/%d  train loss %.4f acc %.2f%%  test loss %.4f acc %.2f%% (best %.2f%%)  %.0f samples/s",
                    epoch, cfg.trainer.epochs, train_m["loss"], 100 * train_m["acc"], test_m["loss"],
                    100 * test_m["acc"], 100 * metrics["best_test_acc"], train_m["samples_per_s"],
                )
                if train_m["skipped"]:
                    log.warning("epoch %d: %d batches with a non-finite loss or gradient were skipped", epoch,
                                train_m["skipped"])
                if signals.requested():  # arrived in the test pass: the epoch is saved
                    raise signals.interrupted(f"after epoch {epoch}: saved {ckpt_dir / 'last.pt'}")
                if cfg.trainer.max_steps is not None and step >= cfg.trainer.max_steps:
                    log.info("reached trainer.max_steps=%d", cfg.trainer.max_steps)
                    break
            success = True
        finally:
            if logger:
                logger.close(success)
    if "test_acc" not in metrics:  # resumed a run that had nothing left to do before its first epoch ended
        raise CheckpointError(f"{resume}: nothing left to train (trainer.epochs={cfg.trainer.epochs})")
    paper = f" (paper: {100 * paper_acc:.2f}%)" if paper_acc is not None else ""
    log.info("done in %.1f s: test acc %.2f%%, best %.2f%%%s; %s", time.perf_counter() - t0,
             100 * metrics["test_acc"], 100 * metrics["best_test_acc"], paper, run_dir)
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
               "firing_rate": test["firing_rate"], **{k: test[k] for k in ACTIVITY_METRICS},
               "checkpoint": str(Path(path).resolve())}
    paper_acc = OmegaConf.select(cfg, "paper.test_acc", default=None)
    if paper_acc is not None:  # a reproduction's checkpoint
        metrics["paper_test_acc"] = paper_acc
    return metrics
