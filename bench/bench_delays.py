"""Learnable delays benchmark (issue 34): the network of the SHD preset (experiment=hammouamri_delays_shd: 140
channels, DFC256d24-BN-SN-DP-DFC256d24-BN-SN-DP-DFC20d24 into non-spiking output neurons, LIF tau 1.005 without
input scaling, atan alpha 5) against the same network without delays (FC in place of DFC), one training step each
(forward, the readout's mean over time, cross-entropy, backward), on synthetic input of the real shape: T = 176
frames of 140 channels holding spike counts (each entry 1 with probability --density, else 0: the time of a dense
convolution does not depend on it).

An epoch of SHD is 8,156 samples (32 batches of 256), too many for these 2 cores: --batch samples (default 32) are
timed (the median of --repeats steps after a warm-up) and scaled by 8,156 / batch. The step's work is proportional
to the batch except the building of the delayed layers' Gaussian kernels ([n, F, 25] per layer, once a step),
which a batch of 256 would share among more samples: the estimate is a little high for the delayed network.
Also timed: the test pass's forward of a batch in eval mode, where the delays are rounded and each kernel has one
tap per synapse (the same dense convolution). Peak memory: one training step after the warm-up, each in a process
of its own (bench/common.cpu_peak_mb). Prints a table and writes bench/results/delays.json.
"""

import snnexp  # noqa: F401  first, before torch: the OpenMP wait policy `snnexp train` runs with

# isort: split

import argparse
import json
import subprocess
import sys
from functools import partial

import torch

from common import cpu_peak_mb, median_time, write_results

EPOCH_SAMPLES = 8156  # SHD's training set
T, CHANNELS, CLASSES = 176, 140, 20
SPECS = {"delays (DFC, d24)": "DFC256d24-BN-SN-DP-DFC256d24-BN-SN-DP-DFC20d24-SN",
         "no delays (FC)": "FC256-BN-SN-DP-FC256-BN-SN-DP-FC20-SN"}


def build(spec: str):
    from snnexp.nn.models import SpecNet, with_output_layer
    from snnexp.nn.neurons import LIF
    from snnexp.nn.norms import BatchNormOverTime
    from snnexp.nn.readouts import LeakyIntegrator
    from snnexp.nn.surrogate import ATan

    neuron = partial(LIF, tau=1.005, decay_input=False, v_threshold=1.0, v_reset=0.0, detach_reset=True,
                     surrogate=ATan(5.0))
    model = SpecNet(spec, [CHANNELS], CLASSES, neuron, partial(BatchNormOverTime), dropout=0.4)
    return with_output_layer(model, LeakyIntegrator(1.005), "the benchmark")


def measure(name: str, batch: int, density: float, repeats: int, what: str) -> dict:
    torch.manual_seed(0)
    model = build(SPECS[name])
    x = (torch.rand(T, batch, CHANNELS) < density).float()
    y = torch.randint(0, CLASSES, (batch,))

    def train_step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x).mean(0), y).backward()

    def test_forward():
        with torch.no_grad():
            model(x)

    train_step()  # warm-up
    if what == "memory":
        return {"peak_mb": cpu_peak_mb(train_step)}
    step = median_time(train_step, repeats)
    model.eval()
    test_forward()
    return {"step_s": step, "epoch_s": step * EPOCH_SAMPLES / batch,
            "test_forward_s": median_time(test_forward, repeats)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", nargs=2, metavar=("NAME", "WHAT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a child process: one measurement, as JSON on stdout
        name, what = args.one
        print(json.dumps(measure(name, args.batch, args.density, args.repeats, what)))
        return
    results = {"threads": torch.get_num_threads(), "T": T, "channels": CHANNELS, "batch": args.batch,
               "density": args.density, "epoch_samples": EPOCH_SAMPLES, "rows": {}}
    for name in SPECS:
        row = {"spec": SPECS[name]}
        for what in ("time", "memory"):
            proc = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--density", str(args.density),
                                   "--repeats", str(args.repeats), "--one", name, what], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{name} ({what}) failed:\n{proc.stderr[-2000:]}")
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        results["rows"][name] = row
    print(f"\nSHD preset network, T {T} x {CHANNELS} channels, batch {args.batch}, {results['threads']} threads; "
          f"epoch = step x {EPOCH_SAMPLES} / {args.batch}")
    print(f"  {'':18s} {'step s':>8s} {'epoch s (est.)':>15s} {'test fwd s':>11s} {'peak MB':>8s}")
    for name, r in results["rows"].items():
        print(f"  {name:18s} {r['step_s']:8.3f} {r['epoch_s']:15.0f} {r['test_forward_s']:11.3f} {r['peak_mb']:8.0f}")
    rows = list(results["rows"].values())
    print(f"  delays / no delays: {rows[0]['step_s'] / rows[1]['step_s']:.1f}x the training step\n")
    write_results("delays", results)


if __name__ == "__main__":
    main()
