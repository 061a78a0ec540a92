"""The papers' network notation, parsed into a tree and built into layers.

    {c32k3s1-BN-SN-MPk2s2}*2-FC100-SN-APk10s10

cXkY[sZ][pW]  conv, X channels, kernel Y, stride Z (1), padding W (Y // 2)
FCn           linear layer with n units (flattens a feature map first)
RFCn          recurrent spiking layer: FCn-BN-SN with all-to-all recurrent weights on the neurons' own spikes
              of the step before (snnexp.nn.recurrent; flattens first like FCn). It holds its norm and neurons and
              outputs spikes: no SN after it
DFCn[dM]      linear layer with n units whose every synapse also has a learned delay of 0..M time steps (M even,
              default 24), learned with DCLS (snnexp.nn.delays; needs pip install 'snnexp[delays]'): currents, like
              FCn's, so follow it with BN-SN; flattens first like FCn
MPkXsY/APkXsY max / average pooling (on a feature vector: 1-d, e.g. the final voting APk10s10)
BN            the configured normalisation (norm=...)      SN  the configured neuron (neuron=...)
DP / DP0.3    dropout with model.dropout / with p = 0.3, one mask for all time steps
{...}*n       repeat the group n times (groups nest)
"""

import re
from dataclasses import dataclass
from typing import List, Tuple, Union

from snnexp.errors import SpecError

TOKEN_HELP = (
    "expected one of: cXkY[sZ][pW] (conv), FCn (linear), RFCn (recurrent spiking), DFCn[dM] (linear with learned "
    "delays of 0..M steps, M even), MPkXsY / APkXsY (max / avg pool), BN (norm), SN (neuron), DP or DPp (dropout), "
    "{...}*n (repeat)"
)

_PATTERNS = {
    "conv": re.compile(r"c(\d+)k(\d+)(?:s(\d+))?(?:p(\d+))?"),
    "fc": re.compile(r"FC(\d+)"),
    "rfc": re.compile(r"RFC(\d+)"),  # tokens are matched whole (fullmatch): FC never takes RFC's tail
    "dfc": re.compile(r"DFC(\d+)(?:d(\d+))?"),
    "maxpool": re.compile(r"MPk(\d+)(?:s(\d+))?"),
    "avgpool": re.compile(r"APk(\d+)(?:s(\d+))?"),
    "norm": re.compile(r"BN"),
    "neuron": re.compile(r"SN"),
    "dropout": re.compile(r"DP(0?\.\d+)?"),
}

# Limits that no paper's network comes near, so that a typing slip is refused at once instead of building (or
# expanding) gigabytes of layers until the machine kills the run, or overflowing Python's stack. The deepest specs
# in conf/ have 27 layers and groups nested 2 deep (conf/model/plif_cifar10.yaml); a 1,000-block conv-BN-SN
# network would have 3,000 layers.
MAX_LAYERS = 10_000  # layers after expanding the repeats
MAX_REPEAT = MAX_LAYERS  # a group repeated more often can never fit in MAX_LAYERS
MAX_NESTING = 32  # groups '{...}' inside groups; each level costs a few stack frames when parsed and printed
# a DFC layer's training kernel holds max delay + 1 taps per synapse (and autograd a few copies): at 1,000 steps a
# 512 x 512 layer's take 1 GB each; the papers' largest is 30 steps (Hammouamri 2024, SSC)
MAX_DELAY = 1000


def _bad_token(spec: str, pos: int, length: int, problem: str) -> SpecError:
    """The error for a spec with a problem at `pos`: the spec with a caret under the bad token, and the grammar."""
    length = max(1, length)
    return SpecError(f"{problem} at position {pos} of model.spec:\n  {spec}\n  {' ' * pos}{'^' * length}\n{TOKEN_HELP}")


@dataclass(frozen=True)
class Layer:
    kind: str  # a key of _PATTERNS
    args: Tuple  # the numbers in the token, None where left out

    def __str__(self):
        a = self.args
        if self.kind == "conv":
            out, k, s, p = a
            return f"c{out}k{k}" + (f"s{s}" if s is not None else "") + (f"p{p}" if p is not None else "")
        if self.kind == "fc":
            return f"FC{a[0]}"
        if self.kind == "rfc":
            return f"RFC{a[0]}"
        if self.kind == "dfc":
            return f"DFC{a[0]}" + (f"d{a[1]}" if a[1] is not None else "")
        if self.kind in ("maxpool", "avgpool"):
            return ("MP" if self.kind == "maxpool" else "AP") + f"k{a[0]}" + (f"s{a[1]}" if a[1] is not None else "")
        if self.kind == "dropout":
            return "DP" + (f"{a[0]}" if a[0] is not None else "")
        return {"norm": "BN", "neuron": "SN"}[self.kind]


@dataclass(frozen=True)
class Repeat:
    items: Tuple[Union["Layer", "Repeat"], ...]
    times: int

    def __str__(self):
        return "{" + format_spec(self.items) + "}*" + str(self.times)


Node = Union[Layer, Repeat]


def format_spec(nodes) -> str:
    """The canonical string of a parsed spec: parse_spec(format_spec(t)) == t."""
    return "-".join(str(n) for n in nodes)


def parse_spec(spec: str) -> Tuple[Node, ...]:
    """Parse a spec string into a tree of Layer and Repeat nodes, or raise SpecError."""
    if not isinstance(spec, str) or not spec.strip():
        raise _bad_token(str(spec), 0, 1, "empty network spec")
    spec = spec.strip()
    nodes, pos = _parse_seq(spec, 0, depth=0)
    if pos != len(spec):
        raise _bad_token(spec, pos, 1, f"unexpected '{spec[pos]}'")
    layers = count_layers(nodes)
    if layers > MAX_LAYERS:
        raise SpecError(f"model.spec expands to {layers} layers, more than the limit of {MAX_LAYERS} "
                        "(snnexp.nn.models.spec.MAX_LAYERS): lower the repeat counts '{...}*n'")
    return nodes


def count_layers(nodes) -> int:
    """len(expand(nodes)), without expanding: a spec of a billion layers is counted in microseconds."""
    return sum(count_layers(n.items) * n.times if isinstance(n, Repeat) else 1 for n in nodes)


def _parse_seq(spec, pos, depth):
    nodes = []
    while True:
        node, pos = _parse_item(spec, pos, depth)
        nodes.append(node)
        if pos < len(spec) and spec[pos] == "-":
            pos += 1
            continue
        return tuple(nodes), pos


def _parse_item(spec, pos, depth):
    if pos >= len(spec):
        raise _bad_token(spec, pos, 1, "missing layer (the spec ends with '-')")
    if spec[pos] == "{":
        if depth >= MAX_NESTING:  # checked before going deeper: the recursion stays far from Python's limit
            raise SpecError(f"model.spec nests groups '{{...}}' deeper than the limit of {MAX_NESTING} levels "
                            f"(snnexp.nn.models.spec.MAX_NESTING), at position {pos}: nest fewer groups")
        open_pos = pos
        items, pos = _parse_seq(spec, pos + 1, depth + 1)
        if pos >= len(spec) or spec[pos] != "}":
            raise _bad_token(spec, open_pos, 1, "'{' without a matching '}'")
        m = re.compile(r"\*(\d+)").match(spec, pos + 1)
        times = m.group(1).lstrip("0") if m else ""
        if not times:
            raise _bad_token(spec, pos + 1, 2, "a group '{...}' must be followed by '*n' with n >= 1")
        if len(times) > len(str(MAX_REPEAT)) or int(times) > MAX_REPEAT:  # int() refuses 4,300 digits and more
            shown = times if len(times) <= 20 else f"{times[:20]}... ({len(times)} digits)"
            raise SpecError(f"model.spec repeats a group {shown} times (at position {pos + 1}), more than the limit "
                            f"of {MAX_REPEAT} (snnexp.nn.models.spec.MAX_REPEAT): lower the count")
        return Repeat(items, int(times)), m.end()
    end = pos
    while end < len(spec) and spec[end] not in "-{}":
        end += 1
    text = spec[pos:end]
    for kind, pattern in _PATTERNS.items():
        m = pattern.fullmatch(text)
        if m:
            args = tuple(None if g is None else (float(g) if "." in g else int(g)) for g in m.groups())
            if any(isinstance(a, int) and a < 1 for a in args if a is not None and kind != "conv"):
                raise _bad_token(spec, pos, len(text), f"'{text}' needs sizes >= 1")
            if kind == "conv" and (args[0] < 1 or args[1] < 1 or (args[2] is not None and args[2] < 1)):
                raise _bad_token(spec, pos, len(text), f"'{text}' needs channels, kernel and stride >= 1")
            if kind == "dfc" and args[1] is not None and (args[1] % 2 or args[1] > MAX_DELAY):
                raise _bad_token(spec, pos, len(text), f"'{text}' needs an even maximum delay d in 2..{MAX_DELAY} "
                                 "(steps; the kernel of d + 1 taps is centred on DCLS's grid)")
            return Layer(kind, args), end
    if text == "" and end < len(spec) and spec[end] == "}":
        raise _bad_token(spec, pos, 1, "empty group or missing layer before '}'")
    raise _bad_token(spec, pos, len(text), f"unknown token '{text}'")


def expand(nodes) -> List[Layer]:
    """Flatten the repeats: the layers in order."""
    out = []
    for n in nodes:
        if isinstance(n, Repeat):
            for _ in range(n.times):
                out.extend(expand(n.items))
        else:
            out.append(n)
    return out
