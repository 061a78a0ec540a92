"""Learning-rate schedules the config composes from torch's own (conf/sched/), stepped once per epoch like the others
(train/loop.py) and saved in the checkpoints by their state_dict.

warmup_cosine: the spiking transformers' schedule (timm's cosine with warmup, in the Spikformer, Spike-driven
Transformer and QKFormer code): the learning rate rises linearly from `warmup_lr` to optim.lr over `warmup_epochs`,
then falls along a cosine to `eta_min` at the end of the run:

    epoch e < W:  lr_e = warmup_lr + (lr - warmup_lr) e / W
    epoch e >= W: lr_e = eta_min + (lr - eta_min) (1 + cos(pi (e - W) / (epochs - W))) / 2

torch's LinearLR then CosineAnnealingLR, in a SequentialLR that switches at epoch W. A run shorter than its warmup
(a preset tried with trainer.epochs=1) warms up over all its epochs but the last, with a logged note.
"""

import logging

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from snnexp.config import require
from snnexp.errors import ConfigError

log = logging.getLogger("snnexp")

__all__ = ["warmup_cosine"]


def warmup_cosine(optimizer: Optimizer, epochs: int, warmup_epochs: int = 0, warmup_lr: float = 0.0,
                  eta_min: float = 0.0) -> LRScheduler:
    """Linear warmup from `warmup_lr` to the optimizer's lr over `warmup_epochs`, then cosine annealing to `eta_min`
    over the rest of the `epochs` (module docstring). `warmup_lr` is that of the optimizer's lr (optim.lr); a
    parameter group at another lr (learned delays') starts at the same fraction of its own."""
    require("sched.epochs", epochs)
    require("sched.warmup_epochs", warmup_epochs)
    if warmup_epochs >= epochs:
        log.info("sched.warmup_epochs=%d in a run of %d epochs: the warmup takes the first %d, the cosine the last",
                 warmup_epochs, epochs, epochs - 1)
        warmup_epochs = epochs - 1
    lr = optimizer.defaults["lr"]
    if warmup_epochs and not 0 < warmup_lr <= lr:
        raise ConfigError(f"sched.warmup_lr={warmup_lr!r} is out of range: must be in (0, optim.lr={lr}] (the "
                          f"learning rate of the first warmup epoch)")
    cosine = CosineAnnealingLR(optimizer, T_max=epochs - warmup_epochs, eta_min=eta_min)
    if not warmup_epochs:
        return cosine
    warmup = LinearLR(optimizer, start_factor=warmup_lr / lr, end_factor=1.0, total_iters=warmup_epochs)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_epochs])
