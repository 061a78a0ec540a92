"""Sparse spikes (issue 16): would a weight layer that gathers weights for the few input spikes, instead of
multiplying every zero, beat the dense layer on this CPU at the firing rates the papers' nets really have?

For each weight layer of the PLIF paper's N-MNIST net whose input is spikes, at the firing rate its input
layer had in a real run (`--run`: a `snnexp train experiment=plif_nmnist` run directory, whose metrics.json holds
the test pass's firing rate per spiking layer; without it, --rate for every layer), max-pooled on the way where
the net pools, this times the forward on those binary inputs, medians of --repeats calls:
- dense: the layer as it runs today (mkldnn convolution, BLAS matmul);
- gather: only the spikes' weights: a Linear as torch.sparse CSR x dense; a convolution as, for each of its
  k*k kernel offsets, index_add of the spiking input channels' weight columns into the output positions
  they reach (nnz * k*k * C_out additions instead of N*H*W*C_in*k*k*C_out multiply-adds).
Only the forward (and the weight gradient, which has the same shape of sum) can use the sparsity: the gradient
at the input spikes is dense under a surrogate gradient, so the backward's largest product stays dense.
Prints the table and writes bench/results/sparse.json.
"""

import snnexp  # noqa: F401  first, before torch: the OpenMP wait policy `snnexp train` runs with

# isort: split

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from common import median_time, write_results

# the weight layers with spiking input of {c128k3s1-BN-SN-MPk2s2}*2-DP-FC2048-SN-DP-FC100-SN-APk10s10, T=10,
# batch 16 (the first conv's input is the event frames, not a neuron layer's spikes): the spiking layer whose
# output feeds each (its index among the spiking layers), that layer's output [T*B, ...], whether it is max-pooled
# on the way (which raises the rate: a window fires if any of its 4 neurons does), and the weight
LAYERS = {
    "conv 2 (128->128, k3, 17x17)": dict(source=0, shape=(160, 128, 34, 34), pool=True, weight=(128, 128, 3, 3)),
    "FC2048 (8192->2048)": dict(source=1, shape=(160, 128, 17, 17), pool=True, weight=(2048, 8192)),
    "FC100 (2048->100)": dict(source=2, shape=(160, 2048), pool=False, weight=(100, 2048)),
}


def gather_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """conv2d(x, w, padding=k//2) for 0/1 x [N, C, H, W], summing only the weights of the spikes."""
    N, C, H, W = x.shape
    k = w.shape[-1]
    n, c, h, col = x.nonzero(as_tuple=True)
    out = torch.zeros(N * H * W, w.shape[0])
    wt = w.permute(2, 3, 1, 0)  # [k, k, C_in, C_out]
    for i in range(k):
        for j in range(k):
            oh, ow = h - i + k // 2, col - j + k // 2  # the output position this offset of the kernel reaches
            keep = (oh >= 0) & (oh < H) & (ow >= 0) & (ow < W)
            out.index_add_(0, (n * H + oh)[keep] * W + ow[keep], wt[i, j][c[keep]])
    return out.view(N, H, W, -1).permute(0, 3, 1, 2)


def gather_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.sparse.mm(x.to_sparse_csr(), w.t())


def rates_from_run(run: Path):
    """The last test pass's firing rate of each spiking layer, in network order, from a run's metrics.json."""
    return list(json.loads((run / "metrics.json").read_text())["firing_rate"].values())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a plif_nmnist run directory (its metrics.json's firing rates)")
    ap.add_argument("--rate", type=float, default=0.05, help="firing rate of every layer without --run")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rates = rates_from_run(args.run) if args.run else [args.rate] * 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; firing rates {rates}")
    g = torch.Generator().manual_seed(0)
    rows = []
    for name, layer in LAYERS.items():
        rate = rates[layer["source"]]
        x = (torch.rand(layer["shape"], generator=g) < rate).float()
        if layer["pool"]:
            x = F.max_pool2d(x, 2)
        x = x.flatten(1) if len(layer["weight"]) == 2 else x
        w = torch.randn(layer["weight"], generator=g) * 0.05
        if x.dim() == 4:
            dense, gather = (lambda: F.conv2d(x, w, padding=1)), (lambda: gather_conv(x, w))
        else:
            dense, gather = (lambda: F.linear(x, w)), (lambda: gather_linear(x, w))
        torch.testing.assert_close(gather(), dense(), rtol=1e-4, atol=1e-4)  # the same numbers first
        t_dense, t_gather = median_time(dense, args.repeats), median_time(gather, args.repeats)
        density = x.mean().item()
        rows.append(dict(layer=name, rate=rate, input_density=density, dense_ms=1e3 * t_dense,
                         gather_ms=1e3 * t_gather))
        print(f"  {name:30s} rate {rate:.3f}, input density {density:.3f}: dense {1e3 * t_dense:8.2f} ms, "
              f"gather {1e3 * t_gather:8.2f} ms, gather / dense x{t_gather / t_dense:.2f}")
    write_results("sparse", rows)


if __name__ == "__main__":
    main()
