"""Parallel spiking neuron benchmark (issue 33): one layer of PSN, MaskedPSN (order 2, lambda 1/2: the mask half
phased in) and SlidingPSN (order 2), forward + backward, ours (snnexp.nn.neurons) against SpikingJelly 2.0's
(`neuron.PSN`, `MaskedPSN`, `SlidingPSN`, step_mode='m') on the same input [T, 16, 128, 16, 16] at T = 4, 8, 16 and
the same output gradient, on this CPU, both with the atan surrogate (alpha 2) and the same weights.

A last row feeds direct coding's input, one image seen at every step: ours takes it as a `Repeated` (the row sums of
W times the one step, snnexp.nn.neurons.parallel), SpikingJelly the same T copies as a [T, ...] view (expand), as
its users feed it.

Time: the median of --repeats forward + backward calls after a warm-up. Peak memory: glibc's bytes in use during one
call after the warm-up (common.cpu_peak_mb), above what was in use before it, with the output blocks our kernels
keep for reuse let go first (snnexp/ops/kernels/buffers.py), so that ours count as SpikingJelly's do. Each
(neuron, library) runs in a fresh process of its own, all T in turn. Ratios: SpikingJelly's time over ours (> 1:
ours faster), our peak over SpikingJelly's (< 1: ours smaller). Prints a table and writes bench/results/psn.json.
About 40 s on 2 cores.
"""

import snnexp  # noqa: F401  first, before torch: the OpenMP wait policy `snnexp train` runs with

# isort: split

import argparse
import json
import subprocess
import sys

import torch

from common import cpu_peak_mb, median_time, write_results
from snnexp.ops.kernels import buffers

KINDS = ["PSN", "MaskedPSN", "SlidingPSN", "PSN direct"]
IMPLS = ["snnexp", "SpikingJelly"]
STEPS = (4, 8, 16)
SHAPE = (16, 128, 16, 16)  # one step's input: batch 16, 128 channels of 16 x 16


def make_pair(kind: str, T: int):
    """(ours, SpikingJelly's) with the same weights: theirs as drawn, copied into ours (our threshold = -bias)."""
    from spikingjelly.activation_based import neuron, surrogate

    from snnexp.nn.neurons import PSN, MaskedPSN, SlidingPSN
    from snnexp.nn.surrogate import ATan

    sg = surrogate.ATan(alpha=2.0)
    if kind.startswith("PSN"):
        ours, theirs = PSN(T, surrogate=ATan(2.0)), neuron.PSN(T, surrogate_function=sg)
    elif kind == "MaskedPSN":
        ours, theirs = MaskedPSN(T, order=2, surrogate=ATan(2.0)), neuron.MaskedPSN(2, T, surrogate_function=sg,
                                                                                     step_mode="m")
        ours.lambda_.fill_(0.5)  # no schedule (epochs=None): lambda stays where it is set
        theirs.lambda_ = 0.5
    else:
        ours = SlidingPSN(2, surrogate=ATan(2.0))
        theirs = neuron.SlidingPSN(2, surrogate_function=sg, step_mode="m")
    with torch.no_grad():
        ours.weight.copy_(theirs.weight)
        ours.threshold.copy_(-theirs.bias)
    return ours, theirs


def measure(kind: str, impl: str, repeats: int) -> dict:
    """{T: {ms, peak_mb}} for one (neuron, library), in this process."""
    from spikingjelly.activation_based import functional

    from snnexp.nn.layers import Repeated

    out = {}
    for T in STEPS:
        torch.manual_seed(T)
        ours, theirs = make_pair(kind, T)
        layer = ours if impl == "snnexp" else theirs
        direct = kind.endswith("direct")
        x = (torch.randn(SHAPE) if direct else torch.randn(T, *SHAPE)).mul_(2).requires_grad_()
        grad = torch.randn(T, *SHAPE)

        def step():
            x.grad = None
            if impl == "SpikingJelly":
                functional.reset_net(layer)
                y = layer(x.unsqueeze(0).expand(T, *SHAPE) if direct else x)
            else:
                y = layer(Repeated(x, T) if direct else x)
            y.backward(grad)

        step()  # warm-up: loads code and fills caches, which must not count
        ms = 1000 * median_time(step, repeats)
        buffers.clear()  # but the output blocks our CPU kernels keep for the next call do (kernels/buffers.py)
        out[T] = {"ms": ms, "peak_mb": cpu_peak_mb(step)}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=21)  # calls of 10-50 ms on shared cores: 5 left ratios of 0.8-2x
    ap.add_argument("--one", nargs=2, metavar=("KIND", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a child process: one (neuron, library), as JSON on stdout
        print(json.dumps(measure(*args.one, args.repeats)))
        return
    results = {"shape": ["T", *SHAPE], "threads": torch.get_num_threads(), "rows": []}
    print(f"forward + backward of one layer, input [T, {', '.join(map(str, SHAPE))}], {torch.get_num_threads()} "
          f"threads")
    print(f"  {'neuron':11s} {'T':>3s} {'ours ms':>8s} {'SJ ms':>8s} {'SJ/ours time':>13s} {'ours MB':>8s} "
          f"{'SJ MB':>8s} {'ours/SJ mem':>12s}")
    for kind in KINDS:
        got = {}
        for impl in IMPLS:
            proc = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--one", kind, impl],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{kind} {impl} failed:\n{proc.stderr[-2000:]}")
            got[impl] = {int(T): r for T, r in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
        for T in STEPS:
            ours, sj = got["snnexp"][T], got["SpikingJelly"][T]
            row = {"neuron": kind, "T": T, "snnexp": ours, "SpikingJelly": sj, "time_ratio": sj["ms"] / ours["ms"],
                   "memory_ratio": ours["peak_mb"] / max(sj["peak_mb"], 1e-9)}
            results["rows"].append(row)
            print(f"  {kind:11s} {T:3d} {ours['ms']:8.1f} {sj['ms']:8.1f} {row['time_ratio']:12.2f}x "
                  f"{ours['peak_mb']:8.0f} {sj['peak_mb']:8.0f} {row['memory_ratio']:11.2f}x")
    print()
    write_results("psn", results)


if __name__ == "__main__":
    main()
