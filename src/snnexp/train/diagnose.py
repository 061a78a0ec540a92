"""What the training loop looks at when numbers go wrong: per-layer gradient norms (logged every epoch, so that
exploding or vanishing gradients through depth show in TensorBoard, as Ledinauskas et al. 2020 warn for deep
SNNs) and, when a loss or gradient is NaN or inf, where it first appears and what likely caused it."""

from typing import Callable, Dict

import torch
from torch import nn

from snnexp.nn.fusion import original_name
from snnexp.nn.layers import Repeated
from snnexp.nn.surrogate import Surrogate
from snnexp.report.metrics import LayerTags


def parameter_layers(model: nn.Module) -> Dict[str, str]:
    """Each parameter's layer by its TensorBoard name (report.metrics.LayerTags: a conv or FC with its norm and
    neuron, a ResNet block), so that runs of one network share the gradient-norm chart whether or not their neurons
    learn a parameter (PLIF's w counts with its conv). Fixed for a run: computed once (train.build.Run)."""
    tags = LayerTags(model)
    return {name: tags.group(original_name(model, name)) for name, _ in model.named_parameters()}


def layer_grad_norms(model: nn.Module, layers: Dict[str, str]) -> Dict[str, torch.Tensor]:
    """The gradient norm of each layer over all its parameters; `layers`: parameter_layers(model)."""
    squares: Dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            layer = layers[name]
            squares[layer] = squares.get(layer, 0.0) + p.grad.detach().float().pow(2).sum()
    return {layer: sq.sqrt() for layer, sq in squares.items()}


def all_finite(norms: Dict[str, torch.Tensor]) -> bool:
    """Whether every norm is finite (one synchronisation for all of them)."""
    return not norms or bool(torch.isfinite(torch.stack(list(norms.values())).sum()))


@torch.no_grad()
def first_nonfinite_layer(model: nn.Module, forward_again: Callable[[], object]) -> str:
    """Run `forward_again` with hooks on the leaf layers: the first whose output is not finite, as
    'name (Type)', or '' if the forward pass is finite."""
    first: list = []
    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            def check(mod, inputs, out, name=name):
                out = out.step if isinstance(out, Repeated) else out  # direct coding's one step
                if not first and isinstance(out, torch.Tensor) and not torch.isfinite(out).all():
                    first.append(f"{original_name(model, name)} ({type(mod).__name__})")
            hooks.append(module.register_forward_hook(check))
    try:
        forward_again()
    finally:
        for h in hooks:
            h.remove()
    return first[0] if first else ""


def likely_causes(model: nn.Module, lr) -> str:
    """The usual suspects, with the values of this run: the learning rate, each surrogate's steepness."""
    causes = [f"a learning rate too high (optim.lr={lr})"]
    steepness = {}
    for module in model.modules():
        if isinstance(module, Surrogate):
            steepness.update(module.steepness())
    causes += [f"a surrogate gradient too steep (surrogate.{key}={value})" for key, value in steepness.items()]
    causes.append("NaN or inf in the data")
    return "; ".join(causes)


def diagnose_nonfinite(model: nn.Module, forward_again: Callable[[], object], x: torch.Tensor, loss: torch.Tensor,
                       position: str, lr) -> str:
    """The message for a non-finite loss or gradient at `position` (e.g. 'step 5 (epoch 1, batch 5)'): where it
    first appears when the batch `x` runs again, else (a finite forward) the last layer whose gradient is not
    finite; the likely causes; how to skip such batches instead."""
    what = f"non-finite loss ({loss.item()})" if not torch.isfinite(loss) else "non-finite gradient"
    bad_params = [original_name(model, n) for n, p in model.named_parameters()
                  if p.grad is not None and not torch.isfinite(p.grad).all()]
    layer = first_nonfinite_layer(model, forward_again)
    if layer:
        where = f"it first appears in the output of layer {layer}"
    elif not torch.isfinite(x).all():
        where = "the input batch itself holds NaN or inf values"
    elif bad_params:
        where = f"the forward pass is finite; the gradient is first non-finite at {bad_params[-1]}"
    else:
        where = "the forward pass is finite when repeated"
    return (f"{what} at {position}: {where}. Likely causes: {likely_causes(model, lr)}. "
            f"To leave such batches out instead of stopping: trainer.on_nonfinite=skip")
