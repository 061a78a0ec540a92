"""Network activity over a test pass, for comparing runs: spike counts, activation sparsity, synaptic operations
(effective ACs and MACs, dense operations) and, for a fixed batch (the first of the unshuffled test loader), a spike
raster and a confusion matrix.

    with Activity(model, spiking_layers(model)) as activity:
        for x, y in loader:
            activity.batch(forward(x), y)
    activity.all_reduce()        # data parallel: the sums over all processes
    summary = activity.summary()

Forward hooks (removed on exit) accumulate integer SUMS, never means, so that the processes of a data-parallel run
can add theirs before anything is divided. They read the layers' inputs and outputs and change nothing. After the
first batch (whose spikes make the raster) a spiking layer's hook takes its spike counts from the joined
neuron-pool kernel where the network runs one (snnexp.nn.fusion.FusedBlock), so that the test pass runs the same
fast ops as the plain forward, and the other counts take one pass over each weight layer's input (`nonzero_counts`):
what that costs beside the plain forward, bench/bench_test_pass.py measures (docs/performance.md).

Synaptic operations are counted as NeuroBench counts them [Yik 2025] (tests/test_neurobench.py checks ours against
the neurobench package), for every Linear and Conv layer at every call:
- effective operations: one per synapse with a non-zero weight driven by a non-zero input, i.e. the layer with its
  weights replaced by (weight != 0) applied to (input != 0), summed over its output. A pruned synapse (weight
  exactly 0) does no operation and is not counted, as in NeuroBench.
- they are accumulates (ACs) when every input entry of the call is -1, 0 or 1 (spikes), else multiply-accumulates
  (MACs): the analog image under direct coding, event-frame counts above 1, average-pooled spikes, SEW-ResNet's
  spike sums. Like NeuroBench we decide per call, i.e. per test batch, for the whole batch.
- dense operations: every synapse with every input, zero weights and zero inputs included (the layer with all-ones
  weights on all-ones input, summed): what a non-spiking network of the same shape would do.
The layer's sum is computed without running it again: effective = sum over input positions of (non-zero count at
that position over the batch) x reach, where reach = the number of non-zero-weight synapses out of that position
(for a convolution: output channels x the output positions its kernel taps reach, padding, stride, dilation and
groups included), taken once per layer and input shape per test pass as the gradient of sum(layer(x, weight != 0))
with respect to x. For Linear, reach is the count of non-zero weights in each input's column. Exact integers.
A layer that runs once for the T steps of a repeated input (direct coding, snnexp.nn.neurons.repeated) counts T times,
as the T calls it stands for.
A recurrent layer (RecurrentFC, snnexp.nn.recurrent) is counted through its parts: its input weights W_in like an FC
layer, its recurrent weights W_rec at each of its calls, once per step t >= 1 on the spikes s[t-1] (each spike
drives the non-zero weights of its column: up to n synapses); its output spikes are those of a spiking layer.
The attention's products of two signals (SpikeProduct, snnexp.nn.attention: Q K^T V, the masks, the sums over tokens
or channels), which NeuroBench does not see (it hooks Linear and Conv layers only), are counted at every call by
SpikeProduct.operations under the product's own name (e.g. '14.attention.kv_SpikeProduct'): effective = the terms of
the einsum whose operands are all non-zero, dense = all its terms, ACs when an operand is spikes, else MACs.
"""

from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from snnexp.nn.attention import SpikeProduct
from snnexp.nn.delays import DelayedFC
from snnexp.nn.fusion import original_name
from snnexp.nn.layers import Repeated, SeqToANN
from snnexp.nn.neurons import SpikingNeuron
from snnexp.nn.recurrent import RecurrentFC
from snnexp.ops.fused import kernels_ready
from snnexp.ops.kernels import cpu

SOP_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, DelayedFC)
RASTER_NEURONS = 256  # at most this many neurons of a layer in its raster: a fixed, evenly spaced subset


def layer_name(name: str, module: nn.Module) -> str:
    """A layer's readable name in TensorBoard and metrics.json: its position in the network (for a weight layer,
    the position of the SeqToANN wrapper that runs it on [T*B, ...]) and its type, e.g. '00_Conv2d', '03_PLIF';
    a weight layer inside a layer of the network keeps its path, e.g. '00.recurrent_Linear' (RecurrentFC)."""
    if name.endswith(".module"):
        name = name[: -len(".module")]
    head, dot, rest = name.partition(".")
    if head.isdigit():
        name = f"{int(head):02d}{dot}{rest}"
    return f"{name}_{type(module).__name__}"


def spiking_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """The spiking layers of `model` by their readable name (layer_name): its neurons, and its recurrent layers
    (RecurrentFC), whose output is their neurons' spikes; the neuron inside a recurrent layer is stepped, never
    called as a module, so the layer stands for it."""
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, RecurrentFC) or (isinstance(m, SpikingNeuron) and not _inside(name, found)):
            found[name] = m
    return {layer_name(original_name(model, name), m): m for name, m in found.items()}


def _inside(name: str, layers: Dict[str, nn.Module]) -> bool:
    """Whether module `name` lies inside one of `layers` (named_modules lists a parent before its children)."""
    return any(name.startswith(parent + ".") for parent in layers)


def evenly_spaced(n: int, k: int = RASTER_NEURONS) -> torch.Tensor:
    """min(n, k) indices out of range(n), evenly spaced and strictly increasing (i * n // k)."""
    k = min(n, k)
    return torch.arange(k) * n // k


def conv_reach(conv: nn.Module, in_shape, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """For every input position [C, *spatial] of `conv`: the number of synapses out of it, i.e. of (output
    element, weight) pairs it enters, padding, stride, dilation and groups included: the gradient of
    sum(conv(x, weight)) with respect to x, for 0/1 `weight` (default all ones; (conv.weight != 0) leaves pruned
    synapses out). Integer valued (int64), on the CPU."""
    weight = torch.ones(conv.weight.shape) if weight is None else weight.detach().to("cpu", torch.float32)
    with torch.enable_grad():
        x = torch.zeros((1, *in_shape), requires_grad=True)
        conv._conv_forward(x, weight, None).sum().backward()
    return x.grad[0].round().long()


def layer_reach(layer: nn.Module, in_shape) -> Tuple[torch.Tensor, int]:
    """(reach, dense) of a weight layer for inputs of `in_shape` (one sample's row, without the batch): reach, the
    synapses with a non-zero weight out of each input position ([in_features] for Linear, [C, *spatial] for a
    convolution); dense, all synapses out of one row, zero weights included."""
    nonzero_weight = layer.weight.detach() != 0
    if isinstance(layer, (nn.Linear, DelayedFC)):  # a delayed synapse: one operation per input spike, as FC's
        return nonzero_weight.sum(0), layer.in_features * layer.out_features
    return conv_reach(layer, in_shape, nonzero_weight), int(conv_reach(layer, in_shape).sum())


def nonzero_counts(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """((x != 0).sum(0) as int64, 1 if every entry of x is -1, 0 or 1 (spikes) else 0), for x [N, ...].

    What the test pass's counters cost (bench/bench_test_pass.py): in torch ops, comparing every entry with 0, summing
    the booleans and checking for spikes take several passes over each layer's input and output. On the CPU, where the
    kernels are built, one pass of count_cpu.c does both, reading x in its memory order (channels_last too) as an
    [N, F] matrix; elsewhere (CUDA, no C compiler) the torch ops run."""
    rows, back = _rows(x)
    if rows.numel() and rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float64) \
            and kernels_ready("cpu"):
        counts, spikes = cpu.count_nonzero(rows.contiguous())
        return back(counts), int(spikes)
    return back((rows != 0).sum(0)), int(((rows == 0) | (rows.abs() == 1)).all())


def _rows(x: torch.Tensor):
    """x [N, ...] as an [N, F] matrix without a copy where its rows are dense in some order of their dims
    (channels_last), and the function that gives a row-shaped [F] result the shape and order of x.shape[1:]."""
    if x.numel() == 0:
        return x.reshape(x.shape[0], 0), lambda v: v.new_zeros(x.shape[1:])
    order = sorted(range(1, x.dim()), key=lambda d: -x.stride(d))
    p = x.permute(0, *order)
    if not p.is_contiguous():
        return x.reshape(x.shape[0], -1), lambda v: v.view(x.shape[1:])
    inverse = [order.index(d) for d in range(1, x.dim())]
    return p.reshape(x.shape[0], -1), lambda v: v.view(p.shape[1:]).permute(inverse)


@dataclass
class ActivitySummary:
    """A test pass's activity (Activity.summary): per sample (summed over the T steps of a sample) and per layer;
    numbers for metrics.json, arrays for TensorBoard images and histograms."""

    spikes_per_sample: float  # spikes of all spiking layers
    layer_spikes_per_sample: Dict[str, float]  # per spiking layer
    # the share of zeros among all spiking layers' outputs (neurons x T x samples), as NeuroBench's
    # ActivationSparsity (0.0 for a network without spiking layers, as there)
    activation_sparsity: float
    effective_acs_per_sample: float  # synaptic operations (module docstring)
    effective_macs_per_sample: float
    dense_ops_per_sample: float
    layer_acs_per_sample: Dict[str, float]  # per weight layer and attention product (SpikeProduct)
    layer_macs_per_sample: Dict[str, float]
    firing_rate: Dict[str, float]  # per spiking layer: the mean over time steps, samples and neurons
    neuron_rates: Dict[str, np.ndarray]  # per spiking layer: every neuron's rate (count / (T * samples)), float64
    raster: Dict[str, np.ndarray]  # per spiking layer: [neurons, T] 0/1 uint8 of the fixed batch's first sample
    confusion: Optional[np.ndarray]  # [classes, classes] counts of the fixed batch: rows true, columns predicted


class Activity:
    """Collects, while active as a context manager, the activity of `model` over a test pass (module docstring).

    spiking: name -> spiking layer (spiking_layers), whose outputs are [T, B, ...] 0/1 spikes.
    Call batch(scores, labels) after each batch's forward: it counts the samples, and the first call ends the
    fixed batch (the raster and the confusion matrix are taken from it)."""

    def __init__(self, model: nn.Module, spiking: Dict[str, nn.Module], raster_neurons: int = RASTER_NEURONS):
        self.model, self.spiking = model, dict(spiking)
        self.raster_neurons = raster_neurons
        self.samples = 0
        self.neuron_counts: Dict[str, torch.Tensor] = {}  # per spiking layer: spikes per neuron, summed over T and B
        self.steps: Dict[str, int] = {}                   # per spiking layer: T
        self.ops: Dict[str, torch.Tensor] = {}            # per weight layer and product: [effective ACs, MACs, dense]
        self.raster: Dict[str, np.ndarray] = {}           # per spiking layer: [neurons, T] 0/1 of the fixed sample
        self.confusion: Optional[np.ndarray] = None       # [classes, classes] counts: true class x predicted
        self._first_batch = True
        self._reach: Dict[Any, Tuple[torch.Tensor, int]] = {}
        self._repeats: Dict[nn.Module, int] = {}  # weight layer -> the steps its next call stands for
        self._hooks = []
        self._spike_hooks = []  # (name, hook) of each spiking layer

    # -- hooks ------------------------------------------------------------------------------------------------

    def __enter__(self):
        try:
            for name, module in self.spiking.items():
                self._hooks.append(module.register_forward_hook(self._spike_hook(name)))
            for name, module in self.model.named_modules():
                if isinstance(module, SOP_LAYERS):
                    self._hooks.append(module.register_forward_hook(self._ops_hook(layer_name(name, module))))
                if isinstance(module, SpikeProduct):
                    self._hooks.append(module.register_forward_hook(self._product_hook(layer_name(name, module))))
                if isinstance(module, SeqToANN) and isinstance(module.module, SOP_LAYERS):
                    self._hooks.append(module.register_forward_pre_hook(self._steps_hook))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def _steps_hook(self, wrapper, args):
        """A SeqToANN called on a Repeated runs its layer once for T identical steps (snnexp.nn.neurons.repeated)."""
        self._repeats[wrapper.module] = args[0].T if isinstance(args[0], Repeated) else 1

    def _spike_hook(self, name: str):
        def hook(module, inputs, spikes):
            s = spikes.detach()
            self._add_counts(name, nonzero_counts(s.flatten(0, 1))[0], s.shape[0])
            if self._first_batch:  # the fixed batch's first sample: [T, neurons] -> [neurons, T]
                first = (s[:, 0] != 0).flatten(1)
                keep = evenly_spaced(first.shape[1], self.raster_neurons).to(first.device)
                self.raster[name] = first[:, keep].t().to("cpu", torch.uint8).numpy()
        self._spike_hooks.append((name, hook))
        return hook

    def _add_counts(self, name: str, counts: torch.Tensor, steps: int) -> None:
        """A spiking layer's spikes of one batch, per neuron (summed over its T steps and the batch)."""
        counts = counts.long()
        self.neuron_counts[name] = counts if name not in self.neuron_counts else self.neuron_counts[name] + counts
        self.steps[name] = steps

    def _ops_hook(self, name: str):
        def hook(module, inputs, out):
            x = inputs[0].detach()
            repeats = self._repeats.pop(module, 1)
            if isinstance(module, (nn.Linear, DelayedFC)):  # [..., in_features]: rows of features
                x = x.flatten(0, -2)
            key = (name, tuple(x.shape[1:]))
            if key not in self._reach:
                reach, dense = layer_reach(module, key[1])
                self._reach[key] = reach.to(x.device), dense
            reach, dense = self._reach[key]
            nonzero, spikes = nonzero_counts(x)
            effective = (nonzero * reach).sum() * repeats
            counts = torch.stack([effective * spikes, effective * (1 - spikes),
                                  effective.new_tensor(x.shape[0] * repeats * dense)])
            self._add_ops(name, counts)
        return hook

    def _product_hook(self, name: str):
        def hook(module, inputs, out):
            effective, dense, accumulates = module.operations(*(x.detach() for x in inputs))
            self._add_ops(name, torch.tensor([effective if accumulates else 0, 0 if accumulates else effective, dense],
                                             device=inputs[0].device))
        return hook

    def _add_ops(self, name: str, counts: torch.Tensor) -> None:
        self.ops[name] = counts if name not in self.ops else self.ops[name] + counts

    # -- per batch ---------------------------------------------------------------------------------------------

    def batch(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """After a batch's forward: [B, classes] scores and [B] labels."""
        self.samples += labels.numel()
        if self._first_batch:
            k = scores.shape[1]
            pred, true = scores.detach().argmax(1).cpu(), labels.detach().cpu().long()
            self.confusion = torch.bincount(true * k + pred, minlength=k * k).view(k, k).numpy()
            self._first_batch = False
            for name, hook in self._spike_hooks:  # the raster is taken: from here on the counts are all a hook
                hook.add_counts = partial(self._add_counts, name)  # needs, which the joined kernels give
                # (snnexp.nn.fusion.FusedBlock), so that the rest of the test pass keeps them

    # -- results -----------------------------------------------------------------------------------------------

    def all_reduce(self) -> None:
        """Data parallel: replace the sums (samples, spike and operation counts) by their sums over all processes;
        the raster and confusion matrix stay this process's own. A no-op in a single process."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return
        sums = {**{("spikes", n): v for n, v in self.neuron_counts.items()},
                **{("ops", n): v for n, v in self.ops.items()}}
        keys = sorted(sums)
        flat = torch.cat([torch.tensor([self.samples])] + [sums[k].cpu().flatten() for k in keys]).long()
        dist.all_reduce(flat)
        self.samples = int(flat[0])
        pos = 1
        for kind, n in keys:
            store = self.neuron_counts if kind == "spikes" else self.ops
            size = store[n].numel()
            store[n] = flat[pos:pos + size].view(store[n].shape)
            pos += size

    def summary(self) -> ActivitySummary:
        """The sums turned into the per-sample and per-layer numbers of ActivitySummary."""
        n = max(self.samples, 1)
        counts = {k: int(v.sum()) for k, v in self.neuron_counts.items()}
        outputs = sum(self.steps[k] * self.samples * v.numel() for k, v in self.neuron_counts.items())
        ops = {k: v.tolist() for k, v in self.ops.items()}  # exact integers: summed before dividing
        total = [sum(v[i] for v in ops.values()) / n for i in range(3)]
        return ActivitySummary(
            spikes_per_sample=sum(counts.values()) / n,
            layer_spikes_per_sample={k: c / n for k, c in counts.items()},
            activation_sparsity=1 - sum(counts.values()) / outputs if outputs else 0.0,
            effective_acs_per_sample=total[0],
            effective_macs_per_sample=total[1],
            dense_ops_per_sample=total[2],
            layer_acs_per_sample={k: v[0] / n for k, v in ops.items()},
            layer_macs_per_sample={k: v[1] / n for k, v in ops.items()},
            firing_rate={k: counts[k] / (self.steps[k] * n * v.numel()) for k, v in self.neuron_counts.items()},
            neuron_rates={k: v.cpu().double().flatten().numpy() / (self.steps[k] * n)
                          for k, v in self.neuron_counts.items()},
            raster=dict(self.raster),
            confusion=self.confusion,
        )
