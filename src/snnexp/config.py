"""Config schemas and value checks, run before any work starts.

Types come from Hydra's structured configs (`TrainerConfig`: `trainer.T=abc` is refused by Hydra with the
key and the expected type). Value ranges that a type cannot say are checked by `validate`: one rule per
key, one clear line per broken rule.
"""

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from snnexp.errors import ConfigError


@dataclass
class TrainerConfig:
    """The trainer group: its keys, types and defaults in this one place (conf/trainer/default.yaml composes it;
    the value ranges are RULES' "trainer.*" below)."""

    epochs: int = 15
    batch_size: int = 64
    # run each batch in pieces of at most this many samples, one optimizer step: a batch's gradients with a piece's
    # memory (BatchNorm then normalises each piece by its own statistics)
    micro_batch: Optional[int] = None
    T: int = 4  # time steps per sample
    seed: int = 0
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N, mps
    amp: bool = False  # mixed precision: float16 + loss scaling on CUDA, bfloat16 on CPU
    channels_last: bool = True  # conv weights and activations in NHWC order: the faster convolutions; same results
    join_layers: bool = True  # BN, neuron and max pool of a block as one op on the CPU kernels (nn/fusion.py)
    compile: bool = False  # torch.compile the network; the first step compiles and is left out of samples/s
    num_workers: int = 0  # DataLoader worker processes
    max_steps: Optional[int] = None  # stop after this many optimizer steps (smoke tests)
    progress: bool = True  # progress bars on a terminal (training and test passes)
    print_network: bool = False  # the network's printout on the screen too (it always goes to the run's log file)
    ckpt_every_steps: Optional[int] = None  # also save checkpoints/last.pt every this many steps (resume mid-epoch)
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop with a diagnosis, or skip the batch (counted)
    deterministic: bool = False  # torch.use_deterministic_algorithms (identical CUDA runs; CPU runs always are)
    threads: Optional[int] = None  # CPU threads; null: all cores, or cores / n_jobs under hydra/launcher=joblib
    # ddp: data parallel over the processes of torchrun --nproc_per_node=N -m snnexp train ... (batch_size is the
    # global batch, split among them; only rank 0 writes the run directory)
    strategy: str = "single"


# the schema of conf/trainer/*.yaml (their defaults list starts with `/trainer_schema@_here_`)
ConfigStore.instance().store(name="trainer_schema", node=TrainerConfig)


@dataclass
class EnergyConfig:
    """Energy per synaptic operation, in picojoules, for the energy estimate (snnexp.report.cost): the 45 nm CMOS
    figures of [Horowitz 2014] for 32-bit floats, the ones SNN papers commonly use (conf/energy/45nm.yaml cites
    them)."""

    ac_pj: float = 0.9   # an accumulate: one add
    mac_pj: float = 4.6  # a multiply-accumulate: one multiply (3.7) and one add (0.9)


# the schema of conf/energy/*.yaml
ConfigStore.instance().store(name="energy_schema", node=EnergyConfig)


# set by snnexp.train.distributed.setup: the start time all torchrun processes agree on
START_TIME: Optional[float] = None


def _start_time(pattern: str) -> str:
    """${start_time:%Y-...}, which names the run directories in conf/*.yaml: Hydra's ${now:...}, except that
    under torchrun every process gets rank 0's time, so that they share one run directory."""
    return (datetime.fromtimestamp(START_TIME) if START_TIME is not None else datetime.now()).strftime(pattern)


OmegaConf.register_new_resolver("start_time", _start_time, use_cache=True, replace=True)


def _positive(v):
    return v > 0


def _at_least_1(v):
    return v >= 1


def _non_negative(v):
    return v >= 0


def _probability(v):
    return 0 <= v < 1


def _integer(v):
    return isinstance(v, int) and not isinstance(v, bool)


MAX_PSN_T = 4096  # a typing slip (trainer.T=40000) is refused before a PSN allocates T x T weights per layer


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

# key -> (check, what is allowed). A rule applies only where the key exists in the composed config.
RULES = {
    "trainer.epochs": (_at_least_1, "an integer >= 1"),
    "trainer.batch_size": (_at_least_1, "an integer >= 1"),
    "trainer.micro_batch": (lambda v: v is None or v >= 1, "null (the whole batch at once) or an integer >= 1"),
    "trainer.T": (_at_least_1, "an integer >= 1 (time steps)"),
    "trainer.num_workers": (_non_negative, "an integer >= 0"),
    "trainer.max_steps": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "trainer.ckpt_every_steps": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "trainer.on_nonfinite": (lambda v: v in ("stop", "skip"), "stop or skip"),
    "trainer.threads": (lambda v: v is None or v >= 1, "null (automatic) or an integer >= 1"),
    "trainer.strategy": (lambda v: v in ("single", "ddp"), "single or ddp (under torchrun)"),
    "trainer.device": (lambda v: _DEVICE.fullmatch(str(v)) is not None, "auto, cpu, cuda, cuda:N or mps"),
    "neuron.tau": (lambda v: v > 1, "> 1 (the Euler step with dt = 1 needs tau > 1)"),
    "neuron.tau0": (lambda v: v > 1, "> 1 (PLIF's initial tau; 1/tau = sigmoid(w) < 1)"),
    "neuron.v_threshold": (_positive, "> 0"),
    "neuron.k": (lambda v: 0 < v < 1, "in (0, 1) (STBP's decay factor)"),
    "neuron.tau_adapt": (lambda v: v > 1, "> 1 (ALIF's adaptation time constant in steps; 1/tau_adapt = sigmoid(w))"),
    "neuron.beta": (_non_negative, ">= 0 (ALIF's threshold adaptation; 0 gives a LIF)"),
    "neuron.learn_tau": (lambda v: isinstance(v, bool), "true or false"),
    "neuron.learn_tau_adapt": (lambda v: isinstance(v, bool), "true or false"),
    "neuron.backend": (lambda v: v in ("fused", "reference"), "fused or reference"),
    # the parallel neurons (PSN, MaskedPSN, SlidingPSN; nn/neurons/parallel.py)
    "neuron.T": (lambda v: _integer(v) and 1 <= v <= MAX_PSN_T,
                 f"an integer in [1, {MAX_PSN_T}] (a PSN's weights are T x T per layer: 64 MiB at {MAX_PSN_T}; "
                 "neuron=sliding_psn takes any T)"),
    "neuron.order": (lambda v: _integer(v) and v >= 1, "an integer >= 1 (the steps each step sees, itself included)"),
    "neuron.lambda_init": (lambda v: 0 <= v <= 1, "in [0, 1] (the masked PSN's mask weight at the start)"),
    "neuron.lambda_ramp": (lambda v: 0 < v <= 1, "in (0, 1] (the part of the run over which lambda rises to 1)"),
    "neuron.epochs": (lambda v: _integer(v) and v >= 1, "an integer >= 1 (the epochs the lambda schedule spans)"),
    "neuron.exp_init": (lambda v: isinstance(v, bool), "true or false"),
    "surrogate.alpha": (_positive, "> 0"),
    "surrogate.width": (_positive, "> 0"),
    "surrogate.slope": (_positive, "> 0"),
    "surrogate.height": (lambda v: v is None or v > 0, "> 0, or null for 1/width"),
    "norm.alpha": (_positive, "> 0"),
    "norm.eps": (_positive, "> 0"),
    "norm.momentum": (lambda v: v is None or 0 <= v <= 1, "in [0, 1]"),
    "norm.k_tau2": (lambda v: 0 < v < 1, "in (0, 1) (NeuNorm's decay of the activity it tracks)"),
    "norm.gain_init": (_positive, "> 0 (norm=sws: the standardised weights' starting gain)"),
    "norm.T": (_at_least_1, "an integer >= 1 (TEBN's and BNTT's time steps: leave it at ${trainer.T})"),
    "learning.k": (lambda v: v is None or (isinstance(v, int) and v >= 1),
                   "null (every time step) or an integer >= 1 (SLTT-K's time steps with a gradient)"),
    "encoder.threshold": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "model.dropout": (_probability, "in [0, 1)"),
    "model.hidden": (lambda v: all(isinstance(h, int) and h >= 1 for h in v), "a list of integers >= 1"),
    # the spiking transformers (snnexp.nn.models.transformers); model.depth is also a ResNet's (18, 34 or 50)
    "model.depth": (lambda v: _integer(v) and v >= 0, "an integer >= 0 (a transformer's blocks)"),
    "model.depths": (lambda v: len(v) >= 1 and all(_integer(d) and d >= 0 for d in v),
                     "a list of integers >= 0, the blocks of each stage (e.g. [1, 1, 2])"),
    "model.embed_dim": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "model.heads": (lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    "model.mlp_ratio": (_positive, "> 0"),
    "model.scale": (_positive, "> 0 (the fixed scale s of SN(Q K^T V * s))"),
    "model.attention_threshold": (lambda v: v is None or v > 0, "> 0, or null for neuron.v_threshold"),
    "readout.population": (_at_least_1, "an integer >= 1"),
    "readout.reduce": (lambda v: v in ("max", "mean", "last"), "max, mean or last"),
    "readout.tau": (lambda v: v >= 1, ">= 1 (time steps; 1 passes the input through)"),
    "loss.lam": (lambda v: 0 <= v <= 1, "in [0, 1] (TET's weight of the MSE term)"),
    "loss.label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1) (the weight eps of the uniform target: (1 - eps) CE + "
                             "eps * the mean over classes of -log p; 0: none)"),
    "optim.lr": (_positive, "> 0"),
    "optim.weight_decay": (_non_negative, ">= 0"),
    "optim.momentum": (_probability, "in [0, 1)"),
    "sched.T_max": (_at_least_1, "an integer >= 1"),
    "sched.step_size": (_at_least_1, "an integer >= 1"),
    "sched.gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "sched.epochs": (lambda v: _integer(v) and v >= 1, "an integer >= 1 (the run's epochs)"),
    "sched.warmup_epochs": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "paper.test_acc": (lambda v: v is None or 0 < v <= 1, "a fraction in (0, 1], or null"),
    "dataset.test_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "dataset.val_fraction": (lambda v: 0 <= v < 1, "in [0, 1): 0 for no validation set"),
    "dataset.T": (_at_least_1, "an integer >= 1 (frames per sample)"),
    "dataset.split_by": (lambda v: v in ("number", "time"), "one of number, time"),
    "dataset.bin_ms": (lambda v: v is None or v > 0, "> 0, or null for T equal slices"),
    "dataset.downsample": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "dataset.denoise_ms": (lambda v: v is None or v > 0, "> 0, or null for no denoising"),
    "dataset.on_corrupt": (lambda v: v in ("error", "skip"), "error or skip"),
    "dataset.workers": (lambda v: v is None or v >= 1, "null (all cores) or an integer >= 1"),
    "dataset.roll": (_non_negative, "an integer >= 0"),
    "dataset.channels": (lambda v: isinstance(v, int) and v >= 1 and 700 % v == 0,
                         "a divisor of 700 (700, 350, 175, 140, 100, 70, ...: 700 / channels neighbours summed)"),
    "dataset.test_split": (lambda v: v in ("test", "valid"), "test or valid"),
    "energy.ac_pj": (_non_negative, ">= 0 (picojoules per accumulate)"),
    "energy.mac_pj": (_non_negative, ">= 0 (picojoules per multiply-accumulate)"),
}


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every value that breaks a rule."""
    problems = _range_problems(cfg) + _combination_problems(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def _range_problems(cfg: DictConfig) -> list:
    """One line for each value outside its RULES range."""
    problems = []
    for key in RULES:
        value = OmegaConf.select(cfg, key, default="<absent>")
        if isinstance(value, str) and value == "<absent>":
            continue
        if hasattr(value, "_content"):  # ListConfig / DictConfig
            value = OmegaConf.to_object(value)
        problem = range_problem(key, value)
        if problem:
            problems.append(problem)
    return problems


def range_problem(key: str, value) -> Optional[str]:
    """The line `validate` prints for a value outside its RULES range, or None."""
    check, allowed = RULES[key]
    try:
        ok = check(value)
    except TypeError:
        ok = False
    return None if ok else f"{key}={value!r} is out of range: must be {allowed}"


def require(key: str, value) -> None:
    """The RULES check of one value, for the code that takes it (a constructor, also called from Python): the one
    place each range is written. ConfigError with the line `validate` prints."""
    problem = range_problem(key, value)
    if problem:
        raise ConfigError(problem)


def _combination_problems(cfg: DictConfig) -> list:
    """One line for each pair of values that do not go together. (What the configured classes can do, their
    capabilities, is checked where they are imported: snnexp.train.build.part_problems.)"""
    problems = []
    v_reset, v_th = OmegaConf.select(cfg, "neuron.v_reset"), OmegaConf.select(cfg, "neuron.v_threshold")
    if v_reset is not None and v_th is not None and not v_reset < v_th:
        problems.append(f"neuron.v_reset={v_reset} must be below neuron.v_threshold={v_th} (or null for soft reset)")
    neuron_t = OmegaConf.select(cfg, "neuron.T")
    if neuron_t is not None and neuron_t != OmegaConf.select(cfg, "trainer.T"):
        problems.append(f"neuron.T={neuron_t} differs from trainer.T={OmegaConf.select(cfg, 'trainer.T')}: set "
                        f"trainer.T (the PSN's T x T weights follow it)")
    frames_t = OmegaConf.select(cfg, "dataset.T")
    if frames_t is not None and frames_t != OmegaConf.select(cfg, "trainer.T"):
        problems.append(f"dataset.T={frames_t} differs from trainer.T={OmegaConf.select(cfg, 'trainer.T')}: "
                        f"set trainer.T (the frames per sample follow it)")
    split_by = OmegaConf.select(cfg, "dataset.split_by", default="time")  # spike trains (SHD, SSC): by time only
    if OmegaConf.select(cfg, "dataset.bin_ms") is not None and split_by != "time":
        problems.append("dataset.bin_ms is set but dataset.split_by is not time: set dataset.split_by=time, "
                        "or dataset.bin_ms=null")
    return problems


def configured_class(cfg: DictConfig, group: str):
    """The class a config group's _target_ names (imported, not built), or None where there is none: what the checks
    of configured parts read their capabilities from. A target that does not import is None here; building the run
    says what is wrong with it."""
    from hydra.utils import get_class

    target = OmegaConf.select(cfg, f"{group}._target_")
    try:
        return get_class(target) if target else None
    except Exception:
        return None
