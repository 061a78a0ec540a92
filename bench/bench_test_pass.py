"""What the test pass's metrics cost (issue 29): the default convnet (snnexp train dataset=mnist) over MNIST's 10,000
test images, `evaluate.evaluate` (the network with the activity counters: spike counts, synaptic operations, effective
ACs, rates, raster) against the plain eval forward of the same network on the same batches (no counters). Target:
<= 1.3x. The network's weights are trained for a few steps first, so that its neurons fire as a trained net's do.
Writes bench/results/test_pass.json.

    python bench/bench_test_pass.py [--data ../shared/data] [--repeats 3] [--profile]
"""

import snnexp  # noqa: F401  first, before torch: the OpenMP wait policy `snnexp train` runs with

# isort: split

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from common import median_time, write_results
from snnexp import conf_dir
from snnexp.train import build as runs
from snnexp.train import epoch, evaluate, loop
from snnexp.train.checkpoint import EpochTotals

REPO = Path(__file__).resolve().parents[1]


def build(data_dir: Path, train_steps: int):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["dataset=mnist", f"dataset.data_dir={data_dir}",
                                                      "dataset.download=false", "trainer.progress=false"])
    runs.seed_everything(0)
    run = runs.build_run(cfg, torch.device("cpu"))
    state = loop.new_train_state(run)
    loader = runs.make_loader(run.splits.train, cfg, train=True)
    state.totals = EpochTotals()
    run.model.train()
    for i, (x, y) in enumerate(loader):
        if i == train_steps:
            break
        epoch._learn(run, state, x, y, 1)
    return run, runs.make_loader(run.splits.test, cfg)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=50)
    p.add_argument("--profile", action="store_true", help="print torch.profiler's table of one evaluate")
    args = p.parse_args()
    raw = args.data / "MNIST" / "raw"
    if not raw.is_dir():
        sys.exit(f"no MNIST at {raw}: pass --data DIR with MNIST/raw/*.gz")
    with tempfile.TemporaryDirectory() as tmp:  # torchvision extracts beside the .gz: into a copy, never the data
        (Path(tmp) / "MNIST" / "raw").mkdir(parents=True)
        for gz in raw.glob("*.gz"):
            shutil.copy(gz, Path(tmp) / "MNIST" / "raw" / gz.name)
        run, test_loader = build(Path(tmp), args.train_steps)
        batches = list(test_loader)  # loading is not what is measured

        def plain():
            run.model.eval()
            with torch.no_grad():
                for x, _ in batches:
                    epoch.forward(run, x)

        def with_metrics():
            evaluate.evaluate(run, batches)

        plain(), with_metrics()  # warm-up: kernels, reach tables
        results = {"plain eval forward": [], "evaluate (metrics)": []}
        for _ in range(args.repeats):  # taking turns, so that a slow spell of this shared VM hits both alike
            for name, fn in (("plain eval forward", plain), ("evaluate (metrics)", with_metrics)):
                results[name].append(median_time(fn, 1))
        results = {name: statistics.median(times) for name, times in results.items()}
        ratio = results["evaluate (metrics)"] / results["plain eval forward"]
        print(f"default convnet, MNIST test set ({sum(len(y) for _, y in batches)} images), median of {args.repeats}:")
        for name, seconds in results.items():
            print(f"  {name:22s} {seconds:7.2f} s")
        print(f"  cost of the metrics: {ratio:.2f}x the plain forward (target <= 1.3x)")
        if args.profile:
            from torch.profiler import profile
            with profile() as prof:
                with_metrics()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        write_results("test_pass", {"seconds": results, "ratio": ratio, "repeats": args.repeats})


if __name__ == "__main__":
    main()
