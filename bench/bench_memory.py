"""Peak memory of one training step (issue 16, benchmarks 1, 2 and 5): the rise of the process's peak resident set
(getrusage ru_maxrss) over one forward + backward + Adam step, after the network, optimizer and inputs exist,
ours (what `snnexp train` runs: channels_last, direct input once, joined layers, fused Adam) against SpikingJelly's
twin of the same net with PyTorch's default Adam, as its users run it (bench_train_step.py builds both). Adam's
state is created in that first step, and the default (foreach) Adam adds temporaries the size of the parameters
on top of it: on the N-MNIST net (a 64 MiB FC2048 weight) that is where the step's peak falls, and our step's rise
was 507 MiB with PyTorch's default Adam against 377 MiB with the fused one (346 / 344 MiB after backward).
Each (net, library, T) runs in a fresh process, so that one's peak does not hide the other's; the figure is the
median of --repeats such processes (SpikingJelly's rise on the N-MNIST net moved between about 970 and 1,440 MiB
from one process to the next; ours by a few MiB).

The largest T that trains at batch 16 within 16 GiB (the CIFAR10-DVS net) is extrapolated: a step's memory grows
linearly in T x batch (every activation is [T, B, ...]), so two measured points (T = 10 and 20 at batch 4) fix the
line; points at smaller T were dominated by the allocator's own caching and gave a slope off by half.
Prints a table and writes bench/results/memory.json.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys

import torch

from bench_train_step import NETS, Variant, inputs, ours, spikingjelly_twin
from common import write_results

LIMIT_GIB = 16


def one_step(net: str, impl: str, T: int, batch: int) -> float:
    """MiB by which one training step raises this process's peak resident set."""
    cfg = {**NETS[net], "T": T, "batch": batch}
    torch.manual_seed(0)
    base = ours(cfg["spec"], cfg["input"])
    variant = (Variant("snnexp", base, channels_last=True, direct=True, fused_adam=True) if impl == "snnexp"
               else Variant("SpikingJelly", spikingjelly_twin(base), spikingjelly=True))
    x, y = inputs(cfg, 0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    variant.step(x, y)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def measure(net: str, impl: str, T: int, batch: int, repeats: int = 1) -> float:
    """The median rise over `repeats` fresh processes."""
    return statistics.median(_measure_once(net, impl, T, batch) for _ in range(repeats))


def _measure_once(net: str, impl: str, T: int, batch: int) -> float:
    proc = subprocess.run([sys.executable, __file__, "--one", net, impl, str(T), str(batch)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"{net} {impl} T={T} batch {batch} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per figure (the median is reported)")
    ap.add_argument("--one", nargs=4, metavar=("NET", "IMPL", "T", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        net, impl, T, batch = args.one
        print(json.dumps(one_step(net, impl, int(T), int(batch))))
        return
    rows = []
    print(f"peak resident memory added by one training step, MiB (median of {args.repeats} processes)")
    for net in args.nets:
        T, batch = NETS[net]["T"], NETS[net]["batch"]
        mib = {impl: measure(net, impl, T, batch, args.repeats) for impl in ("snnexp", "SpikingJelly")}
        print(f"  {net:12s} T={T:<3d} batch {batch:<3d} snnexp {mib['snnexp']:8.0f}  SpikingJelly "
              f"{mib['SpikingJelly']:8.0f}  ours / theirs {mib['snnexp'] / mib['SpikingJelly']:.2f}x")
        rows.append({"net": net, "T": T, "batch": batch, "mib": mib})
    largest = {}
    for impl in ("snnexp", "SpikingJelly"):  # the CIFAR10-DVS net: two points on the line in T x batch
        (a, b) = [(t * 4, measure("dvs_cifar10", impl, t, 4, args.repeats)) for t in (10, 20)]  # small T: noise
        per_sample_step = (b[1] - a[1]) / (b[0] - a[0])
        fixed = a[1] - per_sample_step * a[0]
        largest[impl] = int((LIMIT_GIB * 1024 - fixed) / per_sample_step / 16)
        print(f"  dvs_cifar10 {impl}: {per_sample_step:.1f} MiB per (time step x sample), so at batch 16 the "
              f"largest T within {LIMIT_GIB} GiB is about {largest[impl]}")
    print(f"  largest T, ours / theirs: {largest['snnexp'] / largest['SpikingJelly']:.2f}x")
    write_results("memory", {"steps": rows, "largest_T_batch16": largest})


if __name__ == "__main__":
    main()
