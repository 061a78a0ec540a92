"""The SpikingJelly script that benchmark 3 (bench_mnist_epoch.py) runs against `snnexp train`: what a
SpikingJelly 2.0 user writes for this network, after SpikingJelly's own conv_fashion_mnist example.

    {c32k3s1-BN-SN-MPk2s2}*2-FC100-SN-APk10s10, PLIF (tau0 2, atan, detached hard reset), T=4, images
    repeated over T, MSE of the output rate against the one-hot label, Adam lr 1e-3, batch 64

Prints one JSON line: test accuracy, the time of the training epoch and of the whole script.
"""

import argparse
import json
import time

START = time.perf_counter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from spikingjelly.activation_based import functional, layer, neuron, surrogate  # noqa: E402
from torch import nn  # noqa: E402


def plif():
    return neuron.ParametricLIFNode(init_tau=2.0, detach_reset=True, surrogate_function=surrogate.ATan())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    net = nn.Sequential(
        layer.Conv2d(1, 32, 3, padding=1, bias=False), layer.BatchNorm2d(32), plif(), layer.MaxPool2d(2, 2),
        layer.Conv2d(32, 32, 3, padding=1, bias=False), layer.BatchNorm2d(32), plif(), layer.MaxPool2d(2, 2),
        layer.Flatten(), layer.Linear(32 * 7 * 7, 100, bias=False), plif(), layer.VotingLayer(10),
    )
    functional.set_step_mode(net, "m")
    tf = torchvision.transforms.ToTensor()
    train = torchvision.datasets.MNIST(args.data_dir, train=True, transform=tf, download=True)
    test = torchvision.datasets.MNIST(args.data_dir, train=False, transform=tf, download=True)
    train_loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=False)
    test_loader = torch.utils.data.DataLoader(test, batch_size=args.batch_size, shuffle=False)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    train_s = 0.0
    for _ in range(args.epochs):
        net.train()
        t0 = time.perf_counter()
        for img, label in train_loader:
            x = img.unsqueeze(0).repeat(args.T, 1, 1, 1, 1)
            out_fr = net(x).mean(0)
            loss = F.mse_loss(out_fr, F.one_hot(label, 10).float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            functional.reset_net(net)
        train_s += time.perf_counter() - t0

    net.eval()
    correct = 0
    with torch.no_grad():
        for img, label in test_loader:
            out_fr = net(img.unsqueeze(0).repeat(args.T, 1, 1, 1, 1)).mean(0)
            correct += (out_fr.argmax(1) == label).sum().item()
            functional.reset_net(net)
    print(json.dumps({"test_acc": correct / len(test), "train_s": train_s, "wall_s": time.perf_counter() - START}))


if __name__ == "__main__":
    main()
