"""The network spec notation (docs/science.md, section 5, with PLIF written as SN) and SpecNet / MLP."""

import time
from functools import partial

import pytest
import torch
from torch import nn

import snnexp.nn.models
from snnexp.nn.layers import SeqDropout
from snnexp.nn.models import MLP, SpecNet
from snnexp.nn.models.spec import Layer, Repeat, SpecError, expand, format_spec, parse_spec
from snnexp.nn.neurons import LIF
from snnexp.nn.norms import BatchNormOverTime

# (canonical spec, number of layers after expanding the repeats)
PAPER_SPECS = [
    # Fang 2021, MNIST / F-MNIST / N-MNIST: 4 * 2 + (DP FC SN DP FC SN AP) = 8 + 7
    ("{c128k3s1-BN-SN-MPk2s2}*2-DP-FC2048-SN-DP-FC100-SN-APk10s10", 15),
    # CIFAR10: ((3 * 3) + 1) * 2 + 7 = 27
    ("{{c256k3s1-BN-SN}*3-MPk2s2}*2-DP-FC2048-SN-DP-FC100-SN-APk10s10", 27),
    # CIFAR10-DVS: 4 * 4 + 7 = 23
    ("{c128k3s1-BN-SN-MPk2s2}*4-DP-FC512-SN-DP-FC100-SN-APk10s10", 23),
    # DVS128 Gesture: 4 * 5 + 7 = 27
    ("{c128k3s1-BN-SN-MPk2s2}*5-DP-FC512-SN-DP-FC110-SN-APk10s10", 27),
    # Wu 2019 N-MNIST: 4 convs * 3 + 2 pools + 2 * 2 FC + FC100 SN + AP = 12 + 2 + 4 + 3 = 21
    (
        "c128k3s1-BN-SN-c128k3s1-BN-SN-APk2s2-c384k3s1-BN-SN-c384k3s1-BN-SN-APk2s2-"
        "FC1024-SN-FC512-SN-FC100-SN-APk10s10",
        21,
    ),
    # the single-layer tutorial network
    ("FC10-SN", 2),
    # optional fields and explicit dropout rate
    ("c32k5-MPk2-DP0.3-c16k3s2p0-APk3s1-FC10", 6),
]


@pytest.mark.parametrize("spec, n_layers", PAPER_SPECS)
def test_canonical_specs_round_trip(spec, n_layers):
    tree = parse_spec(spec)
    assert format_spec(tree) == spec
    assert parse_spec(format_spec(tree)) == tree
    assert len(expand(tree)) == n_layers


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("  FC10-SN  ", "FC10-SN"),
        ("FC010-SN", "FC10-SN"),
        ("DP.5-FC10", "DP0.5-FC10"),
        ("{{FC10-SN}*1}*2", "{{FC10-SN}*1}*2"),
        ("{c8k3s1}*02-FC4", "{c8k3s1}*2-FC4"),
    ],
)
def test_noncanonical_specs_normalise(spec, canonical):
    tree = parse_spec(spec)
    assert format_spec(tree) == canonical
    assert parse_spec(format_spec(tree)) == tree


def test_parse_tree_structure():
    tree = parse_spec("{c32k3s1-BN}*2-MPk2-DP0.3-FC10")
    assert tree == (
        Repeat((Layer("conv", (32, 3, 1, None)), Layer("norm", ())), 2),
        Layer("maxpool", (2, None)),
        Layer("dropout", (0.3,)),
        Layer("fc", (10,)),
    )
    assert parse_spec("c16k5s2p1")[0] == Layer("conv", (16, 5, 2, 1))
    assert parse_spec("APk10s10")[0] == Layer("avgpool", (10, 10))
    assert parse_spec("DP")[0] == Layer("dropout", (None,))
    assert parse_spec("SN")[0] == Layer("neuron", ())


def test_expand_order_nested():
    kinds = [layer.kind for layer in expand(parse_spec("{{c8k3-BN-SN}*2-MPk2s2}*2-FC10-SN"))]
    block = ["conv", "norm", "neuron", "conv", "norm", "neuron", "maxpool"]
    assert kinds == block + block + ["fc", "neuron"]


def _caret_column(message, spec):
    """Column of the first '^' under the spec line of a SpecError message, relative to the spec's start."""
    lines = message.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.strip() == spec and "^" in lines[i + 1]:
            return lines[i + 1].index("^") - line.index(spec)
    raise AssertionError(f"no spec line with a caret line under it in:\n{message}")


# (bad spec, token the message must quote or None, allowed caret columns)
BAD_SPECS = [
    ("c32k-BN", "c32k", {0}),  # conv without a kernel size
    ("FC", "FC", {0}),  # FC without a size
    ("{c32k3s1-BN", "{", {0}),  # unclosed group: the caret points at its '{'
    ("{FC10}", None, {5, 6}),  # group without '*n'
    ("FC10--SN", None, {4, 5}),  # empty layer between two dashes
    ("XY12", "XY12", {0}),  # unknown layer
    ("FC10-", None, {4, 5}),  # trailing dash
    ("{FC10}*0", "*0", {6}),  # zero repeats
    ("c32k3s1-BN-SN-FOO-FC10", "FOO", {14}),  # unknown token in the middle
    ("FC10-SN-MPk0s2", "MPk0s2", {8}),  # zero pool size
    ("c0k3-FC10", "c0k3", {0}),  # zero channels
    ("FC10}", "}", {4}),  # stray closing brace
    ("{}*2", None, {1}),  # empty group
]


@pytest.mark.parametrize("spec, token, columns", BAD_SPECS)
def test_malformed_spec_raises_with_caret(spec, token, columns):
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    if token is not None:
        assert token in message
    assert _caret_column(message, spec) in columns


def test_empty_spec_raises():
    for spec in ("", "   "):
        with pytest.raises(SpecError):
            parse_spec(spec)


def test_specnet_bad_spec_raises_spec_error():
    with pytest.raises(SpecError):
        SpecNet("FC10--SN", (4,), 10, neuron=LIF, norm=BatchNormOverTime)


# ---------------------------------------------------------------- building networks

NEURON = partial(LIF, tau=2.0)
NORM = partial(BatchNormOverTime)
MNIST_SPEC = "{c32k3s1-BN-SN-MPk2s2}*2-FC100-SN-APk10s10"


def test_specnet_output_shape_mnist():
    net = SpecNet(MNIST_SPEC, (1, 28, 28), 10, neuron=NEURON, norm=NORM)
    assert net.spec == MNIST_SPEC
    # 28x28 --conv k3 p1--> 28 --MP2--> 14 --conv--> 14 --MP2--> 7: FC100 sees 32 * 7 * 7 features
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(32 * 7 * 7, 100)]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 32, (3, 3), (1, 1)),
        (32, 32, (3, 3), (1, 1)),
    ]
    assert sum(isinstance(m, LIF) for m in net.modules()) == 3
    assert sum(isinstance(m, BatchNormOverTime) for m in net.modules()) == 2
    x = torch.rand((3, 2, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    y = net(x)
    assert y.shape == (3, 2, 10)
    # voting over spikes: every output is an average of ten 0/1 values
    assert ((y * 10).round() - y * 10).abs().max() < 1e-5
    assert y.min() >= 0 and y.max() <= 1


def test_specnet_voting_layer_averages_groups_of_ten():
    # FC100-SN-APk10s10 on a feature vector: class k's score is the mean of neurons 10k .. 10k+9
    net = SpecNet("APk10s10", (100,), 10, neuron=NEURON, norm=NORM)
    x = torch.zeros((1, 1, 100))
    x[0, 0, 10:13] = 1.0  # three spikes in class 1's population
    x[0, 0, 90:100] = 1.0  # all of class 9
    expected = torch.zeros((1, 1, 10))
    expected[0, 0, 1], expected[0, 0, 9] = 0.3, 1.0
    torch.testing.assert_close(net(x), expected)


@pytest.mark.parametrize("num_outputs", [100, 9, 1])
def test_specnet_wrong_num_outputs_raises_model_error(num_outputs):
    with pytest.raises(snnexp.nn.models.ModelError):
        SpecNet(MNIST_SPEC, (1, 28, 28), num_outputs, neuron=NEURON, norm=NORM)


def test_specnet_conv_on_flat_input_raises_model_error():
    with pytest.raises(snnexp.nn.models.ModelError):
        SpecNet("c8k3-FC10-SN", (784,), 10, neuron=NEURON, norm=NORM)


def test_mlp_no_hidden_is_single_linear_plus_neuron():
    net = MLP(hidden=[], input_shape=(1, 28, 28), num_outputs=10, neuron=NEURON, norm=NORM)
    assert net.spec == "FC10-SN"
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1
    (lin,) = linears
    assert (lin.in_features, lin.out_features, lin.bias) == (784, 10, None)
    neurons = [m for m in net.modules() if isinstance(m, LIF)]
    assert len(neurons) == 1
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    params = list(net.parameters())
    assert len(params) == 1 and params[0].shape == (10, 784)
    x = (torch.rand((4, 2, 1, 28, 28), generator=torch.Generator().manual_seed(1)) < 0.5).float()
    y = net(x)
    assert y.shape == (4, 2, 10)
    # the output is the neuron applied to W x, x flattened per step
    current = x.flatten(2) @ lin.weight.T
    torch.testing.assert_close(y, neurons[0](current))


def test_mlp_hidden_layers_spec():
    net = MLP(hidden=[100, 50], input_shape=(784,), num_outputs=10, neuron=NEURON, norm=NORM)
    assert net.spec == "FC100-BN-SN-FC50-BN-SN-FC10-SN"
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(784, 100), (100, 50), (50, 10)]
    assert net(torch.rand(2, 3, 784)).shape == (2, 3, 10)
    net = MLP(hidden=[20], input_shape=(784,), num_outputs=10, neuron=NEURON, norm=NORM, dropout=0.25)
    assert net.spec == "FC20-BN-SN-DP-FC10-SN"
    assert [m.p for m in net.modules() if isinstance(m, SeqDropout)] == [0.25]


# a typing slip that would build (or expand) gigabytes of layers, or overflow Python's stack (issue 28)
BEYOND_THE_LIMITS = [
    ("{FC10-SN}*999999999999", "model.spec repeats a group 999999999999 times (at position 9), more than the limit "
                               "of 10000 (snnexp.nn.models.spec.MAX_REPEAT): lower the count"),
    ("{{{FC10-SN}*100}*100}*100", "model.spec expands to 2000000 layers, more than the limit of 10000 "
                                  "(snnexp.nn.models.spec.MAX_LAYERS): lower the repeat counts '{...}*n'"),
    ("{" * 200 + "FC10-SN" + "}*1" * 200, "model.spec nests groups '{...}' deeper than the limit of 32 levels "
                                          "(snnexp.nn.models.spec.MAX_NESTING), at position 32: nest fewer groups"),
    ("{FC10-SN}*" + "9" * 5000, "model.spec repeats a group 99999999999999999999... (5000 digits) times (at "
                                "position 9), more than the limit of 10000 (snnexp.nn.models.spec.MAX_REPEAT): lower "
                                "the count"),
]


@pytest.mark.parametrize("spec, message", BEYOND_THE_LIMITS, ids=["repeat", "layers", "nesting", "5000 digits"])
def test_a_spec_beyond_the_limits_is_refused_at_once_naming_the_limit(spec, message):
    start = time.perf_counter()
    with pytest.raises(SpecError) as e:
        parse_spec(spec)
    assert str(e.value) == message
    assert time.perf_counter() - start < 0.1


def test_the_limits_are_far_above_the_papers_networks_and_exact():
    """The deepest spec in conf/ has 27 layers and groups 2 deep; a spec at each limit is taken, one beyond refused."""
    limits = snnexp.nn.models.spec
    MAX_LAYERS, MAX_REPEAT, MAX_NESTING = limits.MAX_LAYERS, limits.MAX_REPEAT, limits.MAX_NESTING
    assert (MAX_LAYERS, MAX_REPEAT, MAX_NESTING) == (10_000, 10_000, 32)
    assert len(expand(parse_spec(f"{{FC10-SN}}*{MAX_LAYERS // 2}"))) == MAX_LAYERS
    assert len(expand(parse_spec(f"{{FC10}}*{MAX_REPEAT}"))) == MAX_REPEAT
    assert len(expand(parse_spec("{" * MAX_NESTING + "FC10-SN" + "}*1" * MAX_NESTING))) == 2
    for beyond in (f"{{FC10-SN}}*{MAX_LAYERS // 2}-FC10", f"{{FC10}}*{MAX_REPEAT + 1}",
                   "{" * (MAX_NESTING + 1) + "FC10-SN" + "}*1" * (MAX_NESTING + 1)):
        with pytest.raises(SpecError, match="limit"):
            parse_spec(beyond)
