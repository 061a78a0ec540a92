"""NeuroBench [Yik 2025], the benchmark harness the neuromorphic field reports with, run on a snnexp network:
`snnexp eval checkpoint=... neurobench=true`, and the cross-check of our own counts (tests/test_neurobench.py).
Needs the optional `neurobench` package (pip install 'snnexp[neurobench]'); snnexp imports this module only then.

NeuroBench's conventions, and what the wrapper does about them:
- Data is batch-first, [B, T, ...], and so is a model's output. Our networks are time-major, [T, B, ...]:
  TimeMajorModel transposes on the way in and out. Fed time-major data as it is, NeuroBench would take T for the
  batch size and divide its per-sample counts by it.
- A static dataset is encoded (direct, Poisson or latency coding) by a preprocessor into batch-first spike trains,
  with the same seeded generator as our test pass, so both see the same input spikes. The encoded batch is a real
  [B, T, ...] tensor, so every layer runs T times as NeuroBench counts them (our direct-coding shortcut, a first
  layer run once for T equal steps, does not apply).
- A recurrent layer (RecurrentFC) is an activation layer as a whole (its neuron is stepped inside it, never called
  as a module, so no hook on the neuron would see a spike); NeuroBench does not look inside an activation layer,
  and finds its two nn.Linear (W_in, W_rec) as connection layers, hooked at every call, as our counters are.
- Its Benchmark catches any metric's exception, prints it (nothing with quiet=True) and reports 0.0 (workload) or
  None (static) instead. Our metric classes record the exception and run_benchmark raises it: a failed metric
  never passes for a measured zero.
"""

from typing import Any, Callable, Dict, List, Optional

import torch
from neurobench.benchmarks import Benchmark
from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
from neurobench.metrics.workload import ActivationSparsity, ClassificationAccuracy, SynapticOperations
from neurobench.models import NeuroBenchModel
from torch import nn

from snnexp.nn.neurons import SpikingNeuron
from snnexp.nn.recurrent import RecurrentFC

STATIC = (Footprint, ConnectionSparsity, ParameterCount)
WORKLOAD = (ClassificationAccuracy, ActivationSparsity, SynapticOperations)


class TimeMajorModel(NeuroBenchModel):
    """A snnexp network as a NeuroBench model: [B, T, ...] in, [B, T, outputs] spikes out; its spiking layers are
    NeuroBench's activation layers (ActivationSparsity)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval()
        self.add_activation_module(SpikingNeuron)
        self.add_activation_module(RecurrentFC)  # its output is its neurons' spikes; NeuroBench looks no deeper

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(batch.transpose(0, 1)).transpose(0, 1)

    def __net__(self) -> nn.Module:
        return self.net


class Encode:
    """Preprocessor: a static batch (x [B, ...], y) -> (the encoder's spike trains, batch-first [B, T, ...], y),
    drawn from `generator` (a stochastic encoder's draws in the order of our own test pass)."""

    def __init__(self, encoder: Callable, T: int, generator: Optional[torch.Generator] = None):
        self.encoder, self.T, self.generator = encoder, T, generator

    def __call__(self, data):
        x, y = data[0], data[1]
        return self.encoder(x, self.T, generator=self.generator).transpose(0, 1).contiguous(), y


class Classify:
    """Postprocessor: output spikes [B, T, outputs] -> predicted classes [B], through our readout (time-major)."""

    def __init__(self, readout: Callable):
        self.readout = readout

    def __call__(self, spikes: torch.Tensor) -> torch.Tensor:
        return self.readout(spikes.transpose(0, 1).float()).argmax(1)


def _checked(metric: type, errors: List[str]) -> type:
    """`metric` that records its exception in `errors` before NeuroBench's catch-all swallows it; the same name,
    so the results keep NeuroBench's keys."""

    def call(self, *args):
        try:
            return metric.__call__(self, *args)
        except Exception as e:
            errors.append(f"{metric.__name__}: {type(e).__name__}: {e}")
            raise

    return type(metric.__name__, (metric,), {"__call__": call})


def run_benchmark(net: nn.Module, loader, preprocessors: List[Callable], readout: Callable,
                  device: torch.device) -> Dict[str, Any]:
    """NeuroBench's Benchmark on `net` over `loader` (batches (x, y), batch-first once preprocessed): its results
    by its own names (Footprint, ConnectionSparsity, ParameterCount, ClassificationAccuracy, ActivationSparsity,
    and SynapticOperations' Effective_MACs, Effective_ACs, Dense). RuntimeError if a metric failed."""
    errors: List[str] = []
    metrics = [[_checked(m, errors) for m in STATIC], [_checked(m, errors) for m in WORKLOAD]]
    model = TimeMajorModel(net)
    bench = Benchmark(model, loader, preprocessors, [Classify(readout)], metrics)
    try:
        results = bench.run(quiet=True, device=str(device))
    finally:
        bench.workload_metric_manager.cleanup_hooks(model)
    missing = [k for k, v in results.items() if v is None]
    if errors or missing:
        raise RuntimeError(f"NeuroBench's metrics failed on this network: {'; '.join(errors or missing)}")
    flat = {k: v for k, v in results.items() if k != "SynapticOperations"}
    flat.update(results["SynapticOperations"])
    return flat
