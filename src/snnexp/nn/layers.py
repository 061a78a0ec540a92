"""Layers that work on time-major sequences [T, B, ...]: a stateless layer run on the whole sequence at once
(SeqToANN), flatten, dropout, and `run_layers`, which runs a network's layers in order.

The layers that treat every time step alike and hold no state (SeqToANN, SeqFlatten, SeqDropout, and the norms of
norms.py) also take direct coding's repeated input, `Repeated` (snnexp.nn.neurons.repeated), and run on its one step
once. `run_layers` hands them a Repeated while they take it.
"""

import torch
from torch import nn

from snnexp.config import require
from snnexp.nn.neurons.repeated import Repeated, repeat_in_time, repeated_in_time

__all__ = ["Repeated", "SeqDropout", "SeqFlatten", "SeqToANN", "feed", "materialize", "repeat_in_time",
           "repeated_in_time", "run_layers"]


def run_layers(layers, x_seq) -> torch.Tensor:
    """Run `layers` in order on x_seq [T, B, ...] (or a Repeated). A view with time stride 0 (direct coding's
    encoder gives one) goes in as a Repeated: the leading layers that take one run on its one step (`feed`).
    (The papers' BN-SN-MP blocks run as one op where the network was built with them joined: snnexp.nn.fusion.)"""
    x = Repeated.of(x_seq) if isinstance(x_seq, torch.Tensor) and repeated_in_time(x_seq) else x_seq
    for layer in layers:
        x = feed(layer, x)
    return x.expand() if isinstance(x, Repeated) else x


def materialize(model: nn.Module, input_shape) -> None:
    """Shape a network's lazy parameters (NeuNorm's U), if it has any, with one dry pass, so the optimizer sees them
    all; in eval mode, so that no BN statistics change. One time step, or the steps a layer is built for
    (`fixed_steps`: a PSN's T x T weights, TEBN's and BNTT's per-step parameters), which take no other number."""
    if not any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        return
    steps = max((getattr(m, "fixed_steps", None) or 1 for m in model.modules()), default=1)
    model.eval()
    with torch.no_grad():
        model(torch.zeros(steps, 1, *input_shape))
    model.train()


def feed(layer: nn.Module, x):
    """layer(x); a Repeated x is expanded to its sequence (a view) first where the layer cannot take it."""
    if isinstance(x, Repeated) and not getattr(layer, "takes_repeated", False):
        x = x.expand()
    return layer(x)


class SeqToANN(nn.Module):
    """Run a stateless layer once on the whole sequence by folding time into the batch:
    [T, B, ...] -> [T*B, ...] -> layer -> [T, B, ...]; a Repeated's one step through the layer once."""

    takes_repeated = True

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x_seq):
        if isinstance(x_seq, Repeated):
            return x_seq.map(self.module)
        y = self.module(x_seq.flatten(0, 1))
        return y.unflatten(0, x_seq.shape[:2])


class SeqFlatten(nn.Module):
    """[T, B, C, H, W] -> [T, B, C*H*W]."""

    takes_repeated = True

    def forward(self, x_seq):
        if isinstance(x_seq, Repeated):
            return x_seq.map(lambda x: x.flatten(1))
        return x_seq.flatten(2)


class SeqDropout(nn.Module):
    """Dropout with one mask per sample, shared by all time steps (as in the PLIF code): dropping a
    different unit at every step would only add noise to the rate."""

    takes_repeated = True

    def __init__(self, p: float = 0.5):
        super().__init__()
        require("model.dropout", p)
        self.p = float(p)

    def forward(self, x_seq):
        if not self.training or self.p == 0.0:
            return x_seq
        step = x_seq.step if isinstance(x_seq, Repeated) else x_seq[0]
        mask = torch.empty_like(step).bernoulli_(1.0 - self.p) / (1.0 - self.p)
        return x_seq.map(lambda x: x * mask) if isinstance(x_seq, Repeated) else x_seq * mask

    def extra_repr(self):
        return f"p={self.p}"
