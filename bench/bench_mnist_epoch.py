"""End-to-end benchmark (issue 5, benchmark 3): one epoch of real MNIST, then the test set, with the network
of benchmark 2 ({c32k3s1-BN-SN-MPk2s2}*2-FC100-SN-APk10s10, PLIF, T=4, batch 64, Adam lr 1e-3, MSE rate
loss): `snnexp train` against SpikingJelly's script (bench/spikingjelly_mnist.py), each a fresh process on
the same data, run one after the other, --repeats times. Wall time is the whole process (start-up, data,
training, test); test accuracy after the one epoch. Writes bench/results/mnist_epoch.json.

Needs ../shared/data/MNIST/raw (or --data): the .gz files are linked into a temporary folder, where both
extract them, so that nothing is written beside the originals.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_results

REPO = Path(__file__).resolve().parents[1]
SNNEXP = [sys.executable, "-m", "snnexp", "train", "dataset=mnist", "model=convnet", "neuron=plif", "norm=bn",
          "surrogate=atan", "encoder=direct", "readout=rate", "loss=mse_rate", "optim=adam", "trainer.T=4",
          "trainer.batch_size=64", "trainer.epochs=1", "trainer.progress=false"]


def run_ours(data_dir: Path, out: Path, extra):
    start = time.perf_counter()
    subprocess.run([*SNNEXP, f"dataset.data_dir={data_dir}", f"hydra.run.dir={out}", *extra], check=True,
                   capture_output=True, text=True, cwd=out.parent)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return {"test_acc": metrics["test_acc"], "wall_s": wall, "train_samples_per_s": metrics["train_samples_per_s"]}


def run_spikingjelly(data_dir: Path):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "spikingjelly_mnist.py"), "--data-dir", str(data_dir)],
                          check=True, capture_output=True, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--ours", nargs="*", default=[],
                    help="extra overrides for snnexp train (default: none, the default config)")
    args = ap.parse_args()
    raw = args.data / "MNIST" / "raw"
    if not raw.is_dir():
        sys.exit(f"no MNIST at {raw}: pass --data DIR with MNIST/raw/*.gz")
    runs = {"snnexp": [], "SpikingJelly": []}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        (data_dir / "MNIST" / "raw").mkdir(parents=True)
        for gz in raw.glob("*.gz"):
            (data_dir / "MNIST" / "raw" / gz.name).symlink_to(gz.resolve())
        for r in range(args.repeats):
            runs["snnexp"].append(run_ours(data_dir, Path(tmp) / f"run{r}", args.ours))
            runs["SpikingJelly"].append(run_spikingjelly(data_dir))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]['wall_s']:.0f} s {100 * v[-1]['test_acc']:.2f}%"
                                                 for k, v in runs.items()))
    summary = {k: {"wall_s": statistics.median(x["wall_s"] for x in v),
                   "test_acc": statistics.median(x["test_acc"] for x in v)} for k, v in runs.items()}
    ours, sj = summary["snnexp"], summary["SpikingJelly"]
    print(f"\none epoch of MNIST + test, median of {args.repeats}: snnexp {' '.join(args.ours)}")
    print(f"  {'':14s} {'wall s':>8s} {'test acc':>9s}")
    for k, v in summary.items():
        print(f"  {k:14s} {v['wall_s']:8.1f} {100 * v['test_acc']:8.2f}%")
    print(f"  snnexp / SpikingJelly wall time: {ours['wall_s'] / sj['wall_s']:.2f}x; "
          f"accuracy difference {100 * (ours['test_acc'] - sj['test_acc']):+.2f} points")
    write_results("mnist_epoch", {"overrides": args.ours, "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
