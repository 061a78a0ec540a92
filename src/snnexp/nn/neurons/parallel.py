"""Parallel spiking neurons (Fang et al., NeurIPS 2023): PSN, MaskedPSN and SlidingPSN. Equations: docs/science.md,
section 1, "Parallel spiking neurons".

Take the reset out of a neuron and its potential at step t is a weighted sum of its inputs up to t, with weights fixed
by its leak. Fang et al. make those weights learned and free: for the T steps of a layer's input X [T, N] (time first,
every neuron and sample flattened into N),

    H = W X,    S[t] = 1 if H[t] >= B[t] else 0      (W a learned T x T matrix, B a learned threshold per step)

with the configured surrogate's gradient for the step. There is no state carried from one step to the next, so the
whole sequence is one matrix product instead of a loop over time. The three neurons differ in W:

- PSN: W dense, T x T: every step sees every step, the later ones too.
- MaskedPSN: W kept to a band of `order` steps (step t sees t - order + 1 .. t), so that no step sees the future;
  the band is phased in during training (`mask_lambda`).
- SlidingPSN: the band's `order` weights shared by all steps (a causal convolution over time): any T works.

The parameters start as SpikingJelly 2.0's do (`neuron.PSN`, `MaskedPSN`, `SlidingPSN`): from the same random state
the weights are the same, and with the same weights so are the spikes and gradients (tests/test_psn.py). Our
threshold B is their bias with its sign turned (they compute W X + bias with bias = -1 at the start).
"""

import math
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn

from snnexp.config import require
from snnexp.errors import ConfigError
from snnexp.nn.neurons.base import SpikingNeuron
from snnexp.nn.neurons.repeated import Repeated
from snnexp.nn.surrogate import Surrogate
from snnexp.ops.fused import kernel_unavailable, lif_multistep_fused

__all__ = ["PSN", "MaskedPSN", "ParallelNeuron", "SlidingPSN", "causal_conv", "exp_kernel", "fire", "mask_lambda",
           "sliding_weights"]

SHIFTED_SUMS_FROM = 16  # SlidingPSN: T > this x order runs as shifted sums rather than one T x T product


def time_major(x: torch.Tensor) -> Tuple[torch.Tensor, Callable[[torch.Tensor, int], torch.Tensor]]:
    """x [S, ...] as a matrix [S, N] over x's own memory (no copy for a dense step block in any dim order, channels_last
    maps included), and `restore(y, T)`, which gives a result y [T, N] x's shape (with T for S) and memory order, so
    that the layer after it gets the layout it had before. W mixes only the time steps: the order of the other
    dims does not matter to it."""
    order = [0] + sorted(range(1, x.dim()), key=lambda d: -x.stride(d))
    permuted = x.permute(order)
    inverse = [order.index(d) for d in range(x.dim())]

    def restore(y: torch.Tensor, steps: int) -> torch.Tensor:
        return y.view(steps, *permuted.shape[1:]).permute(inverse)

    return permuted.reshape(x.shape[0], -1), restore


def fire(h: torch.Tensor, surrogate: Surrogate, backend: str) -> torch.Tensor:
    """S = 1 where h >= 0, with the surrogate's derivative at h in backward. backend "fused": through the neuron
    kernel (C on the CPU, Triton on CUDA) as one step of an IF neuron with threshold 0, which is this function: one
    pass over h forward and one backward, where torch's definition takes two and six (the same spikes and gradients,
    tests/test_psn.py); "reference", or a surrogate or device the kernels do not know: the definition in torch ops."""
    if backend == "fused" and surrogate.kernel_args() is not None and kernel_unavailable(h.device.type) is None:
        return lif_multistep_fused(h.reshape(1, -1), None, surrogate, v_threshold=0.0, v_reset=None).view_as(h)
    return surrogate(h)


def exp_kernel(order: int) -> torch.Tensor:
    """(..., 1/4, 1/2, 1): the step itself weighs 1 and each step back half as much, as a leaky integrator without
    reset (decay 1/2, the input not scaled) sums its inputs. SpikingJelly's SlidingPSN starts there (exp_init)."""
    return torch.tensor([0.5 ** (order - 1 - i) for i in range(order)])


def linear_init(*shape: int) -> torch.Tensor:
    """nn.Linear's weight init over the last dim as fan-in (Kaiming uniform, a = sqrt(5): U(+-1/sqrt(fan-in))), drawn
    as SpikingJelly draws its PSNs' weights (the same numbers from the same random state)."""
    weight = torch.empty(*shape)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return weight


def sliding_weights(kernel: torch.Tensor, steps: int) -> torch.Tensor:
    """The T x T matrix of a causal convolution over time with `kernel` [order] (its last tap on the step itself):
    W[t, j] = kernel[order - 1 - (t - j)] for 0 <= t - j < order, else 0 (SpikingJelly's gen_gemm_weight)."""
    order = kernel.shape[0]
    steps_range = torch.arange(steps, device=kernel.device)
    lag = steps_range[:, None] - steps_range[None, :]
    taps = kernel[(order - 1 - lag).clamp(0, order - 1)]
    return torch.where((lag >= 0) & (lag < order), taps, torch.zeros((), dtype=kernel.dtype, device=kernel.device))


def causal_conv(kernel: torch.Tensor, x: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """start + sliding_weights(kernel, T) @ x for x [T, N], as `order` shifted products, x[t - lag] kernel[-1 - lag]
    summed over the lags: order passes over x where the T x T product does T (timings: SlidingPSN's docstring)."""
    h = torch.addcmul(start, x, kernel[-1])
    for lag in range(1, min(kernel.shape[0], x.shape[0])):
        h = torch.cat([h[:lag], torch.addcmul(h[lag:], x[:-lag], kernel[-1 - lag])])
    return h


class ParallelNeuron(SpikingNeuron):
    """S = H(W X - B) over the whole sequence at once (module docstring); subclasses say what W and B are.

    A spiking layer like the others (its firing rate is counted and reported, a membrane readout may replace it),
    but with no reset and no step-by-step state: the reset settings SpikingNeuron holds do not apply, `step` refuses
    (a recurrent layer cannot step it), and it never joins the fused BN-neuron-pool kernels (snnexp.nn.fusion joins
    only neurons that run the base class's forward). Direct coding's `Repeated` input is taken as it is: the T steps
    see the same x, so W X = (row sums of W) x, an outer product instead of a T x T product with T copies of x.
    `backend` says how the step S = H(W X - B) runs (`fire`); W X is one matrix product either way."""

    def __init__(self, v_threshold: float = 1.0, surrogate: Optional[Surrogate] = None, backend: str = "fused"):
        require("neuron.v_threshold", v_threshold)
        super().__init__(v_threshold=v_threshold, surrogate=surrogate, backend=backend)

    @property
    def fixed_steps(self) -> Optional[int]:
        """The number of time steps the weights are for (PSN, MaskedPSN: T), or None where any T works."""
        return None

    def time_weights(self, steps: int) -> torch.Tensor:
        """W [steps, steps], as used in the product (masked, or built from shared weights)."""
        raise NotImplementedError

    def forward(self, x_seq: Union[torch.Tensor, Repeated]) -> torch.Tensor:
        """Spikes [T, B, ...] of x_seq [T, B, ...], or of a Repeated's one step at each of its T steps, laid out in
        memory as the input was."""
        steps = x_seq.T if isinstance(x_seq, Repeated) else x_seq.shape[0]
        self._check_steps(steps)
        if isinstance(x_seq, Repeated):
            x, restore = time_major(x_seq.step.unsqueeze(0))
            h = torch.addmm(-self.threshold, self.row_sums(steps), x)  # [T, 1] @ [1, N] - B
        else:
            x, restore = time_major(x_seq)
            h = self.potential(x)
        return restore(fire(h, self.surrogate, self.backend), steps)

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        """H - B = W X - B for x [T, N] (B broadcast over N)."""
        return torch.addmm(-self.threshold, self.time_weights(x.shape[0]), x)

    def row_sums(self, steps: int) -> torch.Tensor:
        """Each step's weights summed, [T, 1]: W (x at every step) = (row sums) x."""
        return self.time_weights(steps).sum(1, keepdim=True)

    def _check_steps(self, steps: int) -> None:
        if self.fixed_steps is not None and steps != self.fixed_steps:
            raise ConfigError(f"{type(self).__name__} was built for T={self.fixed_steps} time steps (neuron.T, which "
                              f"follows trainer.T) but its input has {steps}: its weights are T x T, so run it with "
                              f"trainer.T={self.fixed_steps}, or build it for trainer.T={steps}")

    def initial_state(self, x):
        raise ConfigError(f"{type(self).__name__} computes all T steps at once from the whole input and has no state "
                          f"from one step to the next, so a recurrent layer (RFC, model=rsnn) cannot step it: use "
                          f"feed-forward layers (FC, conv) with it, or another neuron for the recurrent ones")

    def step(self, x, state):
        return self.initial_state(x)

    def extra_repr(self) -> str:
        return f"v_threshold={self.v_threshold} (initial), backend={self.backend}"


class PSN(ParallelNeuron):
    """The parallel spiking neuron: a dense T x T W (every step sees every step) and a threshold per step.

    By default W starts as SpikingJelly's PSN does, as nn.Linear's weight for T inputs, U(+-1/sqrt(T)); exp_init
    starts it as the leaky integrator of `exp_kernel` (W[t, j] = 2^-(t - j) for j <= t, 0 above: causal at first),
    the start of SpikingJelly's SlidingPSN, which our configs use (docs/science.md: each step's row of U(+-1/sqrt(T))
    weights sums to a gain of random sign and rms 1/sqrt(3), so at V_th = 1 the neurons of a normalised input hardly
    fire, and the digits' PSN reached 60 % in 3 epochs against 94 % from exp_init). B starts at v_threshold
    (SpikingJelly: bias -1)."""

    def __init__(self, T: int, exp_init: bool = False, v_threshold: float = 1.0, surrogate: Optional[Surrogate] = None,
                 backend: str = "fused"):
        require("neuron.T", T)
        require("neuron.exp_init", exp_init)
        super().__init__(v_threshold=v_threshold, surrogate=surrogate, backend=backend)
        self.T, self.exp_init = int(T), bool(exp_init)
        weight = sliding_weights(exp_kernel(self.T), self.T) if self.exp_init else linear_init(self.T, self.T)
        self.weight = nn.Parameter(weight)
        self.threshold = nn.Parameter(torch.full((self.T, 1), float(v_threshold)))

    @property
    def fixed_steps(self) -> Optional[int]:
        return self.T

    def time_weights(self, steps: int) -> torch.Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"T={self.T}, exp_init={self.exp_init}, " + super().extra_repr()


def mask_lambda(epoch: int, epochs: int, lambda_init: float = 0.0, ramp: float = 0.125) -> float:
    """lambda during epoch `epoch` (0-based) of `epochs`: from lambda_init at the first epoch it rises linearly with
    the run's progress p = epoch / (epochs - 1) and reaches 1 once p >= ramp:

        lambda = lambda_init + (1 - lambda_init) min(1, p / ramp)

    With lambda_init 0 and ramp 1/8 that is min(1, 8 epoch / (epochs - 1)), the schedule of the paper's own training
    script (Parallel-Spiking-Neuron, sequential_cifar/train_secf10.py, the masked PSN runs; SpikingJelly leaves the
    schedule to its user). A run of one epoch has p = 1: the mask is on from the start."""
    progress = epoch / (epochs - 1) if epochs > 1 else 1.0
    return lambda_init + (1.0 - lambda_init) * min(1.0, progress / ramp)


class MaskedPSN(PSN):
    """PSN with W kept to a band: step t sees steps t - order + 1 .. t (M[t, j] = 1 for t - order < j <= t), phased in
    during training as W (lambda M + (1 - lambda) J), J all ones: lambda 0 is the PSN, 1 the band alone.

    With `epochs` (the configs: the run's), lambda follows `mask_lambda` over them, one value per epoch: it moves at
    the first call in training mode after a call in eval mode (snnexp's loop ends every epoch with a test pass), so
    the module needs no hook in the training loop. The epoch count and whether an epoch is under way are saved with
    lambda in the state dict, so that a run resumed mid-epoch keeps its lambda and one resumed after an epoch moves
    on (one case it cannot tell: a run cut by trainer.max_steps mid-epoch, then resumed, counts that epoch twice).
    Before training (or when a network is only evaluated) lambda is lambda_init. Without `epochs` lambda stays
    lambda_init until set (`lambda_.fill_`), as in SpikingJelly's MaskedPSN, whose users set it themselves."""

    def __init__(self, T: int, order: int = 2, lambda_init: float = 0.0, lambda_ramp: float = 0.125,
                 epochs: Optional[int] = None, exp_init: bool = False, v_threshold: float = 1.0,
                 surrogate: Optional[Surrogate] = None, backend: str = "fused"):
        for key, value in (("neuron.order", order), ("neuron.lambda_init", lambda_init),
                           ("neuron.lambda_ramp", lambda_ramp), ("neuron.epochs", 1 if epochs is None else epochs)):
            require(key, value)
        super().__init__(T, exp_init=exp_init, v_threshold=v_threshold, surrogate=surrogate, backend=backend)
        self.order, self.epochs = int(order), None if epochs is None else int(epochs)
        self.lambda_init, self.lambda_ramp = float(lambda_init), float(lambda_ramp)
        ones = torch.ones(self.T, self.T)
        self.register_buffer("band", torch.tril(ones) * torch.triu(ones, -(self.order - 1)), persistent=False)
        self.register_buffer("lambda_", torch.tensor(self.lambda_init))
        self.epochs_begun, self.in_epoch = 0, False

    def time_weights(self, steps: int) -> torch.Tensor:
        """W (lambda M + (1 - lambda) J), computed as SpikingJelly does (the same rounding)."""
        return (self.lambda_ * self.band + (1.0 - self.lambda_)) * self.weight

    def forward(self, x_seq: Union[torch.Tensor, Repeated]) -> torch.Tensor:
        self._follow_schedule()
        return super().forward(x_seq)

    def _follow_schedule(self) -> None:
        """Count the epochs by the calls' mode, and set lambda at the first training call of each."""
        if self.epochs is None:
            return
        if not self.training:
            self.in_epoch = False
        elif not self.in_epoch:
            self.epochs_begun, self.in_epoch = self.epochs_begun + 1, True
            self.lambda_.fill_(mask_lambda(self.epochs_begun - 1, self.epochs, self.lambda_init, self.lambda_ramp))

    def get_extra_state(self) -> Dict[str, Union[int, bool]]:
        return {"epochs_begun": self.epochs_begun, "in_epoch": self.in_epoch}

    def set_extra_state(self, state: Dict[str, Union[int, bool]]) -> None:
        self.epochs_begun, self.in_epoch = int(state["epochs_begun"]), bool(state["in_epoch"])

    def scalars(self) -> Dict[str, float]:
        """lambda, the mask's weight (TensorBoard: lambda/<layer>)."""
        return {"lambda": float(self.lambda_)}

    def extra_repr(self) -> str:
        schedule = f" (from {self.lambda_init}, 1 after {self.lambda_ramp:g} of {self.epochs} epochs)" \
            if self.epochs is not None else " (set by hand)"
        return f"order={self.order}, lambda={float(self.lambda_):.4g}{schedule}, " + super().extra_repr()


class SlidingPSN(ParallelNeuron):
    """`order` weights shared by all steps, H[t] = sum_i kernel[i] X[t - order + 1 + i] (X before step 1 taken as 0),
    and one threshold for all steps: no weight depends on T, so any T works.

    The kernel starts at (..., 1/4, 1/2, 1) with exp_init (`exp_kernel`, SpikingJelly's default), else as
    nn.Linear's weight for `order` inputs; B at v_threshold. Up to T = SHIFTED_SUMS_FROM x order it runs as the T x T
    banded matrix (`sliding_weights`) times X, as SpikingJelly's multi-step mode does (the same numbers); longer
    sequences as `order` shifted sums (`causal_conv`), whose cost grows with T alone, not T^2 (order 2, 2M elements,
    on 2 cores: the product 8.7 ms against 18.5 at T = 16, 82 ms against 21 at T = 256, forward + backward)."""

    def __init__(self, order: int = 2, exp_init: bool = True, v_threshold: float = 1.0,
                 surrogate: Optional[Surrogate] = None, backend: str = "fused"):
        require("neuron.order", order)
        require("neuron.exp_init", exp_init)
        super().__init__(v_threshold=v_threshold, surrogate=surrogate, backend=backend)
        self.order, self.exp_init = int(order), bool(exp_init)
        self.weight = nn.Parameter(exp_kernel(self.order) if self.exp_init else linear_init(1, self.order)[0])
        self.threshold = nn.Parameter(torch.tensor(float(v_threshold)))

    def time_weights(self, steps: int) -> torch.Tensor:
        return sliding_weights(self.weight, steps)

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > SHIFTED_SUMS_FROM * self.order:
            return causal_conv(self.weight, x, -self.threshold)
        return super().potential(x)

    def row_sums(self, steps: int) -> torch.Tensor:
        """Step t sums the kernel's last min(t + 1, order) taps."""
        sums = self.weight.flip(0).cumsum(0)
        return sums[torch.arange(steps, device=sums.device).clamp(max=self.order - 1)][:, None]

    def extra_repr(self) -> str:
        return f"order={self.order}, exp_init={self.exp_init}, " + super().extra_repr()
