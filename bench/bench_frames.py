"""Event data benchmark on real N-MNIST recordings (../shared/data/NMNIST, or --data DIR):

1. first-time conversion per sample: our reader + events_to_frames vs tonic's reader + ToFrame
   (n_event_bins=T), on the same events;
2. later epochs: one pass over the FrameCache vs converting every sample again;
3. the training loop: time spent waiting for data vs time in the training step, for the PLIF paper's
   N-MNIST network at T = 10, batch 16.

Prints a table and writes bench/results/frames.json. Medians of repeated runs (this machine is noisy).
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import median_time, write_results

REPO = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--T", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="training steps timed in part 3")
    args = ap.parse_args()

    import tonic
    from tonic.datasets import NMNIST
    from tonic.io import read_mnist_file

    from snnexp.data import nmnist
    from snnexp.data.events import read_nmnist
    from snnexp.data.frames import events_to_frames

    files = sorted(Path(args.data, "NMNIST").rglob("*.bin"))
    if not files:
        raise SystemExit(f"no N-MNIST recordings under {args.data}/NMNIST: pass --data DIR")
    n, T = len(files), args.T
    results = {"samples": n, "T": T}

    # 1. first-time conversion
    def ours():
        for f in files:
            events_to_frames(*read_nmnist(f), (34, 34), T, "number")

    to_frame = tonic.transforms.ToFrame(sensor_size=NMNIST.sensor_size, n_event_bins=T)

    def theirs():
        for f in files:
            to_frame(read_mnist_file(str(f), dtype=NMNIST.dtype))

    results["convert_ms_per_sample_ours"] = 1000 * median_time(ours, args.repeats) / n
    results["convert_ms_per_sample_tonic"] = 1000 * median_time(theirs, args.repeats) / n

    # 2. later epochs: read the cache vs convert again
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        splits = nmnist(args.data, download=False, T=T, cache_dir=cache)
        results["cache_build_s"] = time.perf_counter() - start

        def epoch_from_cache():
            for ds in (splits.train, splits.test):
                for i in range(len(ds)):
                    ds[i]

        results["epoch_ms_per_sample_cache"] = 1000 * median_time(epoch_from_cache, args.repeats) / n
        results["epoch_ms_per_sample_convert_again"] = results["convert_ms_per_sample_ours"]

        # 3. data time vs step time, the PLIF paper's N-MNIST network
        from functools import partial

        from snnexp.nn import fusion
        from snnexp.nn.fusion import fuse_blocks
        from snnexp.nn.losses import MSERate
        from snnexp.nn.models import SpecNet
        from snnexp.nn.neurons import PLIF
        from snnexp.nn.norms import BatchNormOverTime
        from snnexp.nn.surrogate import ATan

        torch.manual_seed(0)
        net = fuse_blocks(SpecNet("{c128k3s1-BN-SN-MPk2s2}*2-DP-FC2048-SN-DP-FC100-SN-APk10s10", (2, 34, 34), 10,
                                  partial(PLIF, surrogate=ATan(), detach_reset=True), BatchNormOverTime))
        opt = torch.optim.Adam(fusion.parameters(net), 1e-3)
        loader = torch.utils.data.DataLoader(splits.train, batch_size=16, shuffle=True, num_workers=0)
        data_s = step_s = 0.0
        it = iter(loader)
        next(it)  # warm-up: first batch, first step
        for step in range(args.steps + 1):
            t0 = time.perf_counter()
            x, y = next(it)
            t1 = time.perf_counter()
            loss = MSERate()(net(x.transpose(0, 1)).mean(0), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t2 = time.perf_counter()
            if step:  # step 0 is warm-up
                data_s, step_s = data_s + t1 - t0, step_s + t2 - t1
        results["train_data_ms_per_batch"] = 1000 * data_s / args.steps
        results["train_step_ms_per_batch"] = 1000 * step_s / args.steps

    r = results
    rows = [
        ("first conversion, ms/sample (ours vs tonic ToFrame)", r["convert_ms_per_sample_ours"],
         r["convert_ms_per_sample_tonic"]),
        ("later epoch, ms/sample (cache vs convert again)", r["epoch_ms_per_sample_cache"],
         r["epoch_ms_per_sample_convert_again"]),
    ]
    print(f"N-MNIST, {n} recordings, T={T}; cache built in {r['cache_build_s']:.2f} s")
    print(f"{'':55s} {'ours':>10s} {'other':>10s} {'other/ours':>10s}")
    for name, ours_v, other in rows:
        print(f"{name:55s} {ours_v:10.3f} {other:10.3f} {other / ours_v:10.1f}x")
    data, step = r["train_data_ms_per_batch"], r["train_step_ms_per_batch"]
    print(f"training the PLIF N-MNIST network, batch 16: waiting for data {data:.1f} ms, training step {step:.1f} ms "
          f"per batch (data is {100 * data / (data + step):.2f}% of the loop)")
    write_results("frames", results)


if __name__ == "__main__":
    main()
