"""The open-neuromorphic framework benchmark (Lenz, Heckel, Shrestha, Barker, Pedersen: "SNN library benchmarks",
open-neuromorphic.org, 2023): one fully connected layer into N LIF neurons, 500 time steps, batch 16, the time of
forward + backward, each library with its own LIF (bench_neuron.make_op: snnexp's fused op, SpikingJelly's
LIFNode, snnTorch's Leaky, Norse's LIFBoxCell; tau 2, V_th 1, hard reset, atan surrogate where offered) after the
same torch.nn.Linear on the same input spikes (10% of the inputs spike at each step).

The published benchmark feeds N input features for N neurons. Here the input width is --inputs (default 512):
the Linear layer is the same matmul in every library, and with 16,384 inputs it alone would take minutes per
call on a 2-core CPU and hide the neurons that the benchmark compares. Median of --repeats calls after a warm-up.
Prints a table and writes bench/results/framework.json.
"""

import snnexp  # noqa: F401  first, before torch: the OpenMP wait policy `snnexp train` runs with

# isort: split

import argparse

import torch

from bench_neuron import make_op
from common import median_time, write_results

IMPLS = ["snnexp fused", "SpikingJelly", "snnTorch", "Norse"]


def measure(impl: str, inputs: int, neurons: int, T: int, batch: int, repeats: int) -> float:
    """Median seconds of one forward + backward of Linear(inputs, neurons) -> LIF over [T, batch, inputs]."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(inputs, neurons)
    lif = make_op(impl, "lif")
    x = (torch.rand(T, batch, inputs) < 0.1).float()

    def step():
        linear.zero_grad(set_to_none=True)
        lif(linear(x)).sum().backward()

    step()  # warm-up
    return median_time(step, repeats)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--neurons", type=int, nargs="+", default=[16384])
    ap.add_argument("--inputs", type=int, default=512)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Linear({args.inputs}, N) -> LIF, "
          f"T={args.steps}, batch {args.batch}, forward + backward, median of {args.repeats}")
    rows = []
    for n in args.neurons:
        times = {impl: measure(impl, args.inputs, n, args.steps, args.batch, args.repeats) for impl in args.impls}
        best_peer = min(t for impl, t in times.items() if impl != "snnexp fused")
        print(f"\nN = {n}")
        for impl, t in times.items():
            print(f"  {impl:14s} {1000 * t:9.1f} ms   {t / times['snnexp fused']:5.2f}x snnexp's time")
        print(f"  snnexp vs the fastest peer: {best_peer / times['snnexp fused']:.2f}x faster")
        rows.append({"neurons": n, "inputs": args.inputs, "T": args.steps, "batch": args.batch, "seconds": times})
    write_results("framework", rows)


if __name__ == "__main__":
    main()
