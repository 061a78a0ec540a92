"""Spiking ResNets (time-major [T, B, C, H, W]) with the configured neuron and norm.

- connection="spiking" (Ledinauskas 2020; SpikingJelly's spiking_resnet): BN on input currents, the
  shortcut added to the currents before the block's last neuron: o = SN(BN(conv(...)) + shortcut).
- connection="add" / "iand" (SEW-ResNet, Fang 2021): the block ends with its own neuron and the
  shortcut joins the spikes: o = SN(BN(conv(...))) + s, or (1 - SN(...)) * s.

depth 18 / 34 use basic blocks, 50 bottlenecks (expansion 4). stem="cifar" is a 3x3 stride-1 conv with no
max pool (32x32 inputs), stem="imagenet" the 7x7 stride-2 conv and 3x3 max pool.

The layers run through snnexp.nn.layers.run_layers, as a spec network's do: direct coding's repeated image goes
through the stem's conv (and BN) once. `layer_runs` names the layers that run one after the other, so that
snnexp.nn.fusion can make each BN-SN of the stem, the bodies and the shortcuts one op (trainer.join_layers).
"""

from typing import Callable, Sequence

from torch import nn

from snnexp.errors import ModelError
from snnexp.nn.layers import SeqFlatten, SeqToANN, run_layers

LAYERS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3])}
CONNECTIONS = ("spiking", "add", "iand")


def conv(cin, cout, k, stride=1):
    return SeqToANN(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False))


class Block(nn.Module):
    def __init__(self, kind, cin, width, stride, neuron, norm, connection):
        super().__init__()
        expansion = 4 if kind == "bottleneck" else 1
        cout = width * expansion
        if kind == "basic":
            convs = [(cin, width, 3, stride), (width, cout, 3, 1)]
        else:
            convs = [(cin, width, 1, 1), (width, width, 3, stride), (width, cout, 1, 1)]
        layers = []
        for i, (a, b, k, s) in enumerate(convs):
            layers += [conv(a, b, k, s), norm(b)]
            if i < len(convs) - 1:
                layers.append(neuron())
        self.body = nn.Sequential(*layers)
        self.connection = connection
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            down = [conv(cin, cout, 1, stride), norm(cout)]
            self.shortcut = nn.Sequential(*down, neuron()) if connection != "spiking" else nn.Sequential(*down)
        self.out_neuron = neuron()
        self.out_channels = cout

    def forward(self, x):
        s = run_layers(_layers(self.shortcut), x)
        if self.connection == "spiking":
            return self.out_neuron(run_layers(self.body, x) + s)
        o = run_layers([*self.body, self.out_neuron], x)
        return o + s if self.connection == "add" else (1.0 - o) * s

    def layer_runs(self):
        """The names of the layers forward runs one after the other (snnexp.nn.fusion): the body (with the block's
        neuron, unless the shortcut joins before it) and the shortcut."""
        body = [f"body.{i}" for i in range(len(self.body))]
        shortcut = [f"shortcut.{i}" for i in range(len(self.shortcut))] \
            if isinstance(self.shortcut, nn.Sequential) else []
        return [body + ([] if self.connection == "spiking" else ["out_neuron"]), shortcut]


def _layers(module: nn.Module) -> list:
    """The layers of a Sequential, or the module itself as the one layer."""
    return list(module) if isinstance(module, nn.Sequential) else [module]


class SpikingResNet(nn.Sequential):
    """A spiking ResNet (module docstring). Input [T, B, C, H, W] -> output spikes [T, B, num_outputs]."""

    def __init__(self, depth: int, input_shape: Sequence[int], num_outputs: int, neuron: Callable, norm: Callable,
                 connection: str = "spiking", stem: str = "cifar", width: int = 64):
        if depth not in LAYERS:
            raise ModelError(f"model.depth={depth}: choose one of {sorted(LAYERS)}")
        if connection not in CONNECTIONS:
            raise ModelError(f"model.connection={connection!r}: choose one of {', '.join(CONNECTIONS)}")
        kind, counts = LAYERS[depth]
        cin = input_shape[0]
        if stem == "cifar":
            layers = [conv(cin, width, 3), norm(width), neuron()]
        elif stem == "imagenet":
            layers = [conv(cin, width, 7, 2), norm(width), neuron(), SeqToANN(nn.MaxPool2d(3, 2, 1))]
        else:
            raise ModelError(f"model.stem={stem!r}: choose cifar or imagenet")
        cin = width
        for stage, n in enumerate(counts):
            for i in range(n):
                block = Block(kind, cin, width * 2**stage, 2 if (i == 0 and stage > 0) else 1, neuron, norm,
                              connection)
                layers.append(block)
                cin = block.out_channels
        layers += [SeqToANN(nn.AdaptiveAvgPool2d(1)), SeqFlatten(), SeqToANN(nn.Linear(cin, num_outputs)), neuron()]
        super().__init__(*layers)

    def layer_runs(self):
        """The names of the layers forward runs one after the other (snnexp.nn.fusion); the blocks list their own."""
        return [[str(i) for i in range(len(self))]]

    def forward(self, x_seq):
        """[T, B, C, H, W] -> [T, B, num_outputs]; direct coding's repeated input runs the stem's conv once."""
        return run_layers(self, x_seq)
