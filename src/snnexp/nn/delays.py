"""Learnable synaptic delays: `DelayedFC`, the spec token DFCn[dM] (Hammouamri, Khalfaoui-Hassani and Masquelier,
ICLR 2024, "Learning Delays in Spiking Neural Networks using Dilated Convolutions with Learnable Spacings"; their
code: github.com/Thvnvtos/SNN-delays, snn_delays.py and model.py).

A fully connected layer of n units in which the synapse from input i to unit j has a weight w_ji and a delay d_ji
of 0..M time steps (M = max_delay): a spike of input i at step t reaches unit j at step t + d_ji. Over a sequence
x [T, B, F] the layer's output current is a causal convolution over time, one kernel of M + 1 taps per synapse:

    I_j[t] = sum_i sum_{d=0..M} k_ji[d] x_i[t - d]          (x_i[s] = 0 for s < 0: the sequence padded with M
                                                              zeros on the left; the output keeps the input's T)

A delay is an integer, which gradient descent cannot move, so during training each synapse's kernel is a Gaussian
bump of std sigma_eff centred at a real-valued delay tau_ji in [0, M], normalised to sum 1 over the taps and
scaled by the weight (DCLS, "Dilated Convolution with Learnable Spacings", in its Gaussian version):

    k_ji[d] = w_ji g(d - tau_ji) / (sum_{d'=0..M} g(d' - tau_ji) + 1e-7),   g(u) = exp(-u^2 / (2 sigma_eff^2))

so that the loss reaches tau_ji through the taps around it. In DCLS's coordinates, which this module keeps (the
parameter `positions`, P): the kernel's tap c = P + M/2 holds the bump's centre, and tap c multiplies x[t - (M - c)]
after the left padding, so tau = M/2 - P, and P is clamped to [-M/2, M/2] (tau to [0, M]) at the start of every
training forward and at the end of every epoch, as the authors clamp after every optimizer step. DCLS widens the
Gaussian by a constant: sigma_eff = |sigma| + 0.27, where sigma is the schedule's value below (the buffer `sigma`).

The schedule. sigma starts at M/2 (a bump as wide as the kernel: every delay gets a gradient) and shrinks
exponentially during the first quarter of the run to 0.23 (sigma_eff = 0.5, a bump of about one tap), then stays:

    sigma(e) = sigma_init (sigma_final / sigma_init) ^ (min(e, E_d) / E_d),    E_d = int(share x epochs)

for the epoch after e finished epochs (`sigma_at`; E_d = 0 keeps sigma_init, as their code does). The training loop
moves it: `end_epoch(model, epoch, epochs)` after each whole epoch (their `decrease_sig`, called after every
epoch). The buffer is in the state dict, so a resumed run goes on with the sigma it stopped at.

Rounding. In eval mode (every test pass, snnexp eval) the Gaussian is replaced by a single tap at the rounded
delay, d_ji = round(tau_ji) (torch.round: halves to even, as their `round_pos`): the network with integer delays the
method ends with, which is also what their code tests after every epoch (it rounds, tests and restores). The
positions stay real-valued in training and in checkpoints; `delays()` gives the integer delays.

Initialisation, as their code: weights Kaiming-uniform for ReLU, U(+-sqrt(6 / F)); positions uniform in
[-M/2 - 1, M/2] then clamped (their a = -K // 2 for a kernel of K = M + 1 taps floors to -M/2 - 1: about 1 synapse in
M + 1 starts at the largest delay). The positions learn at 100 times the weights' learning rate without weight decay
(their lr_pos = 100 lr_w): `param_groups` gives the optimizer those groups.

DCLS (PyPI `dcls`, import DCLS, the extra `snnexp[delays]`) builds the Gaussian kernel (ConstructKernel1d, the
operator inside their Dcls1d); the causal padding, clamping, schedule and rounding are here.

Counting. A delayed synapse does one operation per input spike, as an FC synapse does, whenever the spike arrives:
the synaptic operations of this layer are those of an FC layer with the weights `weight` [n, F] on the same inputs
(the delays change when, not how often). The NIR export cannot express it: NIR's Delay node delays each channel by
one amount, not each synapse.
"""

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from snnexp.errors import ConfigError, ModelError

DEFAULT_MAX_DELAY = 24  # steps: their SHD kernel of 25 taps (max_delay = 250 ms // 10 ms, made odd), 240 ms at 10 ms
SIGMA_FINAL = 0.23      # DCLS's sigma at the end of the decay: a Gaussian of std 0.23 + 0.27 = 0.5 taps
DECAY_SHARE = 0.25      # the part of the run over which sigma decays (their final_epoch = epochs // 4)
POSITION_LR_SCALE = 100.0  # the positions' learning rate over the weights' (their lr_pos = 100 lr_w)
MISSING_DCLS = ("learnable delays (DFC in model.spec) need the dcls package, which is not installed: "
                "pip install 'snnexp[delays]'")


def _dcls_kernel_class() -> type:
    """DCLS's kernel constructor (ConstructKernel1d); ConfigError naming the extra without the dcls package."""
    try:
        from DCLS.construct.modules import ConstructKernel1d
    except ImportError:
        raise ConfigError(MISSING_DCLS) from None
    return ConstructKernel1d


def sigma_at(epochs_done: int, epochs: int, sigma_init: float, sigma_final: float = SIGMA_FINAL,
             share: float = DECAY_SHARE) -> float:
    """DCLS's sigma for the epoch after `epochs_done` finished epochs of `epochs`: an exponential decay from
    sigma_init to sigma_final over the first E_d = int(share x epochs) epochs, then sigma_final (module docstring).
    Their code multiplies sigma by (sigma_final / sigma_init)^(1 / E_d) after each of the first E_d epochs."""
    decay_epochs = int(share * epochs)
    if decay_epochs <= 0:
        return float(sigma_init)
    progress = min(max(epochs_done, 0), decay_epochs) / decay_epochs
    return float(sigma_init * (sigma_final / sigma_init) ** progress)


class DelayedFC(nn.Module):
    """n = out_features units, each synapse with a weight and a learned delay of 0..max_delay steps (module
    docstring). Input [T, B, in_features] -> currents [T, B, out_features]: follow it with BN and SN as an FC layer.
    sigma_init: DCLS's sigma at the start (None: max_delay / 2); sigma_final, decay_share: the schedule's end and the
    part of the run it takes; position_lr_scale: the positions' learning rate over the weights' (param_groups)."""

    def __init__(self, in_features: int, out_features: int, max_delay: int = DEFAULT_MAX_DELAY, bias: bool = False,
                 sigma_init: Optional[float] = None, sigma_final: float = SIGMA_FINAL,
                 decay_share: float = DECAY_SHARE, position_lr_scale: float = POSITION_LR_SCALE):
        super().__init__()
        if not (isinstance(max_delay, int) and max_delay >= 2 and max_delay % 2 == 0):
            raise ModelError(f"max_delay={max_delay!r}: a delayed layer needs an even maximum delay >= 2 (steps; its "
                             f"kernel of max_delay + 1 taps is centred on DCLS's grid)")
        self.in_features, self.out_features, self.max_delay = int(in_features), int(out_features), max_delay
        self.sigma_init = float(max_delay / 2 if sigma_init is None else sigma_init)
        self.sigma_final, self.decay_share = float(sigma_final), float(decay_share)
        self.position_lr_scale = float(position_lr_scale)
        self.dcls_kernel = _dcls_kernel_class()  # the class: made anew for each kernel (below)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.positions = nn.Parameter(torch.empty(out_features, in_features))  # DCLS's P, in [-M/2, M/2]
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.register_buffer("sigma", torch.tensor(self.sigma_init))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Their initialisation (module docstring); a bias as nn.Linear's, U(+-1/sqrt(F))."""
        half = self.max_delay // 2
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")
        with torch.no_grad():
            nn.init.uniform_(self.positions, -half - 1, half).clamp_(-half, half)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        """[T, B, F] -> [T, B, n]: the causal convolution over time with `kernel()`."""
        x = F.pad(x_seq.permute(1, 2, 0), (self.max_delay, 0))  # [B, F, M + T]: M zeros before step 0
        y = F.conv1d(x, self.kernel().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        return y.permute(2, 0, 1).contiguous()

    def kernel(self) -> torch.Tensor:
        """[n, F, M + 1], tap c acting on x[t - (M - c)]: the weighted Gaussians in training mode (the positions
        clamped in place first), a single tap at the rounded delay in eval mode."""
        half = self.max_delay // 2
        if not self.training:
            taps = (self.max_delay - self.delays()).unsqueeze(-1).to(self.weight.device)
            kernel = self.weight.new_zeros(self.out_features, self.in_features, self.max_delay + 1)
            return kernel.scatter(-1, taps, self.weight.unsqueeze(-1))
        with torch.no_grad():
            self.positions.clamp_(-half, half)
        # for one kernel element per synapse (kernel_count 1, groups 1); a new one each time, as it caches its index
        # grid on the device of its first call and keeps it there when the layer moves
        build = self.dcls_kernel(self.out_features, self.in_features, 1, 1, (self.max_delay + 1,), "gauss")
        return build(self.weight.unsqueeze(-1), self.positions[None, :, :, None], self.sigma)

    def delays(self) -> torch.Tensor:
        """The integer delays [n, F] in steps, 0..max_delay: round(tau) = M/2 - round(P)."""
        half = self.max_delay // 2
        return half - torch.round(self.positions.detach().clamp(-half, half)).long()

    def end_epoch(self, epoch: int, epochs: int) -> None:
        """Set sigma for the epoch after `epoch` (1-based, the epoch just finished) of `epochs` (sigma_at), and clamp
        the positions moved by the epoch's last step, so that the epoch's checkpoint holds them in range."""
        self.sigma.fill_(sigma_at(epoch, epochs, self.sigma_init, self.sigma_final, self.decay_share))
        with torch.no_grad():
            self.positions.clamp_(-(self.max_delay // 2), self.max_delay // 2)

    def scalars(self) -> Dict[str, float]:
        """The Gaussian's std in taps, sigma + 0.27 (for logging)."""
        return {"delay_sigma": float(self.sigma) + 0.27}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, max_delay={self.max_delay}, "
                f"sigma={float(self.sigma):.4g}, bias={self.bias is not None}")


def delayed_layers(model: nn.Module) -> List[DelayedFC]:
    """The DelayedFC layers of `model`, in the order of model.modules()."""
    return [m for m in model.modules() if isinstance(m, DelayedFC)]


def end_epoch(model: nn.Module, epoch: int, epochs: int) -> None:
    """Call `end_epoch(epoch, epochs)` on every module of `model` that has one (DelayedFC's sigma schedule): for the
    training loop, after each whole epoch (epoch 1-based, of trainer.epochs)."""
    for module in model.modules():
        if callable(getattr(module, "end_epoch", None)):
            module.end_epoch(epoch, epochs)


def param_groups(params: List[nn.Parameter], model: nn.Module, lr: float):
    """The optimizer's `params` (in their order) with the positions of each DelayedFC of `model` in a group of their
    own, at lr x position_lr_scale and without weight decay (their second Adam, lr_pos = 100 lr_w, weight decay 0),
    after a first group of everything else; `params` unchanged for a model without delays."""
    owner = {id(m.positions): m for m in delayed_layers(model)}
    if not owner:
        return params
    groups = [{"params": [p for p in params if id(p) not in owner]}]
    for scale in sorted({m.position_lr_scale for m in owner.values()}):
        group = [p for p in params if id(p) in owner and owner[id(p)].position_lr_scale == scale]
        groups.append({"params": group, "lr": lr * scale, "weight_decay": 0.0})
    return groups
