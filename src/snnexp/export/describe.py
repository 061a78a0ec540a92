"""A NIR graph in words: its nodes from input to output (`chain`), one line each with its main parameters
(`describe`), as `snnexp export` prints them."""

from typing import List

import nir
import numpy as np


def chain(graph: nir.NIRGraph) -> List[str]:
    """The node names of a feed-forward graph from input to output, following its edges (nir.read gives the
    nodes in the file's alphabetical order)."""
    following = dict(graph.edges)
    names = [next(name for name, node in graph.nodes.items() if isinstance(node, nir.Input))]
    while names[-1] in following:
        names.append(following[names[-1]])
    return names


def describe(graph: nir.NIRGraph) -> List[str]:
    """One line per node, from input to output: name, NIR type, main parameters."""
    def ints(a) -> list:
        return [int(v) for v in np.atleast_1d(a)]

    def first(a) -> float:
        return float(np.asarray(a).flat[0])

    lines = []
    for name in chain(graph):
        node = graph.nodes[name]
        if isinstance(node, nir.Input):
            text = f"shape {ints(node.input_type['input'])}"
        elif isinstance(node, nir.Output):
            text = f"shape {ints(node.output_type['output'])}"
        elif isinstance(node, nir.Conv2d):
            text = (f"weight {ints(node.weight.shape)}, stride {ints(node.stride)}, padding {ints(node.padding)}, "
                    f"bias -> {ints(node.output_type['output'])}")
        elif isinstance(node, (nir.Linear, nir.Affine)):
            text = f"weight {ints(node.weight.shape)}" + (", bias" if isinstance(node, nir.Affine) else "")
        elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
            text = f"kernel {ints(node.kernel_size)}, stride {ints(node.stride)}, padding {ints(node.padding)}"
        elif isinstance(node, nir.Threshold):
            text = f"{ints(node.threshold.shape)}, threshold {first(node.threshold):g}"
        elif isinstance(node, nir.Flatten):
            text = f"{ints(node.input_type['input'])} -> {ints(node.output_type['output'])}"
        elif isinstance(node, nir.LIF):
            text = (f"{ints(node.tau.shape)}, tau {first(node.tau):.6g} s, r {first(node.r):.6g}, "
                    f"v_leak {first(node.v_leak):g}, v_threshold {first(node.v_threshold):g}, "
                    f"v_reset {first(node.v_reset):g}")
        elif isinstance(node, nir.NIRGraph):
            inner = {k: v for k, v in node.nodes.items() if not isinstance(v, (nir.Input, nir.Output))}
            text = ", ".join(f"{k} {type(v).__name__}" for k, v in inner.items()) + ", w_rec -> neuron (recurrent)"
        elif isinstance(node, nir.IF):
            text = (f"{ints(node.r.shape)}, r {first(node.r):g}, v_threshold {first(node.v_threshold):g}, "
                    f"v_reset {first(node.v_reset):g}")
        else:
            text = ""
        lines.append(f"{name:<13} {type(node).__name__:<9} {text}")
    return lines
