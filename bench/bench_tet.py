"""TET loss benchmark (issue 33): forward + backward of the TET loss on per-step scores [T, B, K] against
SpikingJelly 2.0's `temporal_efficient_training_cross_entropy`, in the same run:

- snnexp TET, lam = 0:     `snnexp.nn.losses.TET(lam=0)`, the cross-entropy part, SpikingJelly's function
- snnexp TET, lam = 1e-3:  with the MSE term of the paper (SpikingJelly has no such term)
- SpikingJelly 2.0:        the cross-entropy part

on T = 10 steps of B = 128 samples and K = 10 classes (CIFAR10-DVS, the paper's batch) and K = 1000 (an ImageNet
classifier). Time: the median of --repeats calls after a warm-up. Peak memory: each measurement in a process of its
own, over one call after the warm-up (bench/common.cpu_peak_mb). Ratios: SpikingJelly's time over ours (> 1: ours
faster) and our peak memory over SpikingJelly's. Prints a table and writes bench/results/tet.json.
"""

import snnexp  # noqa: F401  first, before torch: the OpenMP wait policy `snnexp train` runs with

# isort: split

import argparse
import json
import subprocess
import sys

import torch

from common import cpu_peak_mb, median_time, write_results

IMPLS = ["snnexp TET, lam 0", "snnexp TET, lam 1e-3", "SpikingJelly"]
SHAPES = [(10, 128, 10), (10, 128, 1000)]


def make_loss(impl: str):
    if impl == "SpikingJelly":
        from spikingjelly.activation_based.functional.loss import temporal_efficient_training_cross_entropy

        return temporal_efficient_training_cross_entropy
    from snnexp.nn.losses import TET

    return TET(lam=0.0 if impl.endswith("lam 0") else 1e-3)


def measure(impl: str, shape, repeats: int, what: str) -> dict:
    torch.manual_seed(0)
    scores = torch.randn(*shape, requires_grad=True)
    target = torch.randint(0, shape[2], (shape[1],))
    loss_fn = make_loss(impl)

    def step():
        scores.grad = None
        loss_fn(scores, target).backward()

    step()  # warm-up
    if what == "time":
        return {"ms": 1000 * median_time(step, repeats)}
    return {"peak_mb": cpu_peak_mb(step)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=300)  # a call takes 0.1 to 10 ms: many, for a steady median
    ap.add_argument("--one", nargs=3, metavar=("IMPL", "SHAPE", "WHAT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a child process: one measurement, as JSON on stdout
        impl, shape, what = args.one
        print(json.dumps(measure(impl, tuple(int(n) for n in shape.split("x")), args.repeats, what)))
        return
    results = {"threads": torch.get_num_threads(), "rows": []}
    for shape in SHAPES:
        row = {"shape": list(shape)}
        for impl in IMPLS:
            row[impl] = {}
            for what in ("time", "memory"):
                proc = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--one", impl,
                                       "x".join(map(str, shape)), what], capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{impl} {shape} ({what}) failed:\n{proc.stderr[-2000:]}")
                row[impl].update(json.loads(proc.stdout.strip().splitlines()[-1]))
        results["rows"].append(row)
        sj = row["SpikingJelly"]
        print(f"\nTET loss, scores {list(shape)} [T, B, K], forward + backward")
        print(f"  {'':21s} {'ms':>8s} {'peak MB':>8s} {'SJ/this time':>13s} {'this/SJ mem':>12s}")
        for impl in IMPLS:
            r = row[impl]
            print(f"  {impl:21s} {r['ms']:8.3f} {r['peak_mb']:8.2f} {sj['ms'] / r['ms']:12.2f}x "
                  f"{r['peak_mb'] / max(sj['peak_mb'], 1e-9):11.2f}x")
    print()
    write_results("tet", results)


if __name__ == "__main__":
    main()
