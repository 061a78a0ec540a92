"""A run built from its config: the network (build_model), the data, encoder, readout and loss (build_run, Run),
the training order (EpochOrder) and the loaders (make_loader), and the network of a checkpoint
(model_from_checkpoint, for eval and export). It knows nothing about which dataset, neuron or network it builds:
they arrive as objects that Hydra instantiates from the config."""
import functools
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from snnexp.config import TrainerConfig, configured_class
from snnexp.data import validation
from snnexp.errors import CheckpointError, ConfigError, DatasetError
from snnexp.nn import fusion
from snnexp.nn.models import with_output_layer
from snnexp.train import checkpoint, distributed
from snnexp.train.diagnose import parameter_layers
from snnexp.train.learning import learning_rule

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
    learning: Any = None  # how a step computes its gradient (snnexp.train.learning; None: backprop through time)

    def __post_init__(self):
        if self.net is None:
            self.net = self.model
        if self.eval_net is None:
            self.eval_net = self.net

    @functools.cached_property
    def parameter_layers(self) -> Dict[str, str]:
        """Each parameter's layer, for the gradient norms of every step (diagnose.parameter_layers): once a run."""
        return parameter_layers(self.model)

    def checkpoint_meta(self) -> Dict[str, Any]:
        """What a checkpoint keeps beside the training state, so that eval and export rebuild the network."""
        return {"config": OmegaConf.to_container(self.cfg, resolve=True),
                "input_shape": list(self.splits.input_shape), "num_classes": self.splits.num_classes,
                "data_sizes": data_sizes(self.splits)}  # checked on resume


def data_sizes(splits) -> Dict[str, int]:
    """The samples in each set: train, test, and val where there is a validation set."""
    sizes = {"train": len(splits.train), "test": len(splits.test)}
    if splits.val is not None:
        sizes["val"] = len(splits.val)
    return sizes


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
    splits = validation.load(cfg.dataset)
    _check_not_empty(splits)
    model = build_model(cfg, splits.input_shape, splits.num_classes).to(device)
    learning = learning_rule(cfg)
    learning.prepare(model)  # before joining: a rule may run neurons on their step-by-step definition
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
               net, eval_net=compiled, learning=learning)


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


def checkpoint_config(state: Dict[str, Any], source, config_dirs: Optional[Sequence[Path]] = None) -> DictConfig:
    """The config of a loaded checkpoint (from `source`), checked (checkpoint.stored_config: its targets at their
    current places, only those `config_dirs` name), with its trainer settings read through the schema
    (TrainerConfig), so that a checkpoint written before a setting existed gets its default. For eval and export."""
    cfg = checkpoint.stored_config(state, source, config_dirs)
    cfg.trainer = OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg.trainer)
    return cfg


def load_weights(model: nn.Module, state: Dict[str, Any], source) -> nn.Module:
    """The checkpoint's weights into `model`, built from the checkpoint's own config; CheckpointError if they do
    not fit it."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not fit the network of its own config: {e}") from None
    return model


def model_from_checkpoint(state: Dict[str, Any], source="the checkpoint",
                          config_dirs: Optional[Sequence[Path]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """The network of a loaded checkpoint with its trained weights, in eval mode, unfused (as written in its spec,
    for snnexp export), and {cfg, input_shape, num_classes}. The input shape and class count are in checkpoints
    written since `snnexp export` exists; for older ones the dataset is opened to find them."""
    cfg = checkpoint_config(state, source, config_dirs)
    if "input_shape" in state and "num_classes" in state:
        input_shape, classes = state["input_shape"], state["num_classes"]
    else:
        splits = validation.load(cfg.dataset)
        input_shape, classes = list(splits.input_shape), splits.num_classes
    model = load_weights(build_model(cfg, input_shape, classes), state, source)
    return model.eval(), {"cfg": cfg, "input_shape": list(input_shape), "num_classes": int(classes)}


def part_problems(cfg: DictConfig) -> List[str]:
    """The configured parts that do not go together, by what their classes say they can do (their attributes, not
    their names): a neuron's backends, the encoder that passes a dataset's event frames on as they are, the scores
    a readout gives and those a loss needs. One line each, as config.validate words them."""
    neuron, encoder, readout, loss = (configured_class(cfg, g) for g in ("neuron", "encoder", "readout", "loss"))
    problems = []
    backend = OmegaConf.select(cfg, "neuron.backend")
    unsupported = getattr(neuron, "unsupported_backend", None)
    problem = unsupported(backend) if backend is not None and unsupported is not None else None
    if problem:
        problems.append(problem)
    frames = OmegaConf.select(cfg, "dataset.T") is not None  # dataset.T: a dataset of event frames
    if frames and encoder is not None and not getattr(encoder, "passes_frames", False):
        problems.append(f"this dataset gives event frames, which are fed as they are: use encoder=direct, not "
                        f"{encoder.__name__}")
    if getattr(loss, "needs", None) == "rates" and getattr(readout, "scores", "rates") == "potentials":
        problems.append("a membrane readout gives membrane potentials, not firing rates, and loss=mse_rate compares "
                        "rates with one-hot labels: use loss=ce_rate (cross-entropy), or readout=rate")
    learning = configured_class(cfg, "learning")
    problems += learning.problems(cfg, neuron) if hasattr(learning, "problems") else []
    return problems

