"""How a training step computes its gradient (the config group `learning`): the network and the neuron stay what
they are; a learning rule sets up the model once (`prepare`) and each batch (`before_batch`).

    learning=bptt   backpropagation through time (the default): the gradient through space and time
    learning=sltt   spatial learning through time (Meng et al., ICCV 2023): the membrane's V[t-1] is detached in
                    the backward pass, so the gradient of step t reaches the weights through the layers at step t
                    only (the temporal term dV[t]/dV[t-1] dropped); with k, only k randomly drawn steps give a
                    gradient (SLTT-K)
    learning=ottt   online training through time (Xiao et al., NeurIPS 2022): the network runs one time step at a
                    time, each step's loss is backpropagated at once through that step's layers (memory constant in
                    T), and a weight's gradient takes the presynaptic trace a[t] = lambda a[t-1] + s[t] (lambda =
                    1 - 1/tau of the neurons feeding it) in place of the spikes s[t]; the gradients of the T steps
                    add up to one optimizer step

`problems(cfg, neuron_class)` gives the parts a rule does not define, one line each (snnexp.train.build.part_problems).
"""

from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from snnexp.config import configured_class, require
from snnexp.nn.layers import SeqToANN
from snnexp.nn.neurons import SpikingNeuron


class BPTT:
    """Backpropagation through time: the network as it is built."""

    def prepare(self, model: nn.Module) -> None:
        """Set up `model` for this rule (once, before the layers are joined: snnexp.nn.fusion)."""

    def before_batch(self, model: nn.Module, seed: int, step: int, T: int) -> None:
        """Set up the forward and backward of the training batch of optimizer step `step` (0-based)."""

    @classmethod
    def problems(cls, cfg: DictConfig, neuron_class) -> List[str]:
        return []


def spatial_neurons(model: nn.Module) -> List[SpikingNeuron]:
    """The spiking layers that run the LIF definition step by step (IF, LIF, PLIF, STBP-LIF): those whose
    membrane can be detached."""
    return [m for m in model.modules() if isinstance(m, SpikingNeuron) and type(m).forward is SpikingNeuron.forward]


class SLTT(BPTT):
    """Spatial learning through time: every LIF-family layer runs with its membrane detached between steps
    (SpikingNeuron.detach_membrane), on the step-by-step definition (backend reference: no fused kernel and no
    joined layers). With `k`, each batch draws k of the T steps, from (trainer.seed, step) so that a resumed run
    draws the same; only their gradient is taken."""

    def __init__(self, k: Optional[int] = None):
        require("learning.k", k)
        self.k = k
        self.neurons: List[SpikingNeuron] = []

    def prepare(self, model: nn.Module) -> None:
        self.neurons = spatial_neurons(model)
        for m in self.neurons:
            m.detach_membrane = True
            m.backend = "reference"

    def before_batch(self, model: nn.Module, seed: int, step: int, T: int) -> None:
        if self.k is None or self.k >= T:
            return
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        chosen = set(torch.randperm(T, generator=g)[:self.k].tolist())
        keep = tuple(t in chosen for t in range(T))
        for m in self.neurons:
            m.gradient_steps = keep

    @classmethod
    def problems(cls, cfg: DictConfig, neuron_class) -> List[str]:
        return spatial_problems("learning=sltt", cfg, neuron_class) + _k_problems(cfg)


def spatial_problems(name: str, cfg: DictConfig, neuron_class) -> List[str]:
    """What a rule that detaches the membrane does not define: other neurons, recurrent layers, compiling."""
    problems = []
    if neuron_class is not None and not (isinstance(neuron_class, type) and issubclass(neuron_class, SpikingNeuron)
                                         and neuron_class.forward is SpikingNeuron.forward):
        problems.append(f"{name} detaches the membrane of LIF-family neurons run step by step (neuron=if, lif, "
                        f"plif, stbp), which {neuron_class.__name__} is not")
    if _recurrent(cfg):
        problems.append(f"{name} defines no gradient for recurrent layers (RFC): use model.recurrent=false, "
                        f"a spec without RFC, or learning=bptt")
    if OmegaConf.select(cfg, "trainer.compile"):
        problems.append(f"{name} runs the neurons step by step in Python: set trainer.compile=false")
    return problems


def _k_problems(cfg: DictConfig) -> List[str]:
    k, T = OmegaConf.select(cfg, "learning.k"), OmegaConf.select(cfg, "trainer.T")
    if isinstance(k, int) and isinstance(T, int) and k > T:
        return [f"learning.k={k} is more than trainer.T={T} time steps: set learning.k <= {T} or null"]
    return []


class OTTT(BPTT):
    """Online training through time. `prepare` detaches every LIF-family layer's membrane (as SLTT) and puts a
    trace on the input of every conv/FC layer that spiking neurons feed (through pooling, flattening, dropout or a
    weight norm): `_Trace`. A training batch is `backward_batch`; a test pass runs the network as it is built."""

    def __init__(self):
        self.neurons: List[SpikingNeuron] = []
        self.traces: List["_Trace"] = []

    def prepare(self, model: nn.Module) -> None:
        SLTT().prepare(model)
        self.neurons = spatial_neurons(model)
        feeding = None  # the neuron layer whose spikes reach the next weight layer
        for layer in model.children():
            if isinstance(layer, SpikingNeuron):
                feeding = layer
            elif isinstance(layer, SeqToANN) and isinstance(layer.module, (nn.Conv2d, nn.Linear)):
                if feeding is not None:
                    self.traces.append(_Trace(layer.module, feeding))
                feeding = None

    def backward_batch(self, forward: Callable, x_seq: torch.Tensor, step_loss: Callable, backward: Callable):
        """Run x_seq [T, B, ...] one step at a time through forward (the network): step_loss(output [1, B, ...])
        is that step's loss, divided
        by T and handed to backward(loss) at once. Returns (the outputs [T, B, ...], detached; the summed loss;
        None), or at a non-finite step loss (None, nan, that loss)."""
        self._online(True)
        try:
            outs, total = [], 0.0
            for t in range(len(x_seq)):
                out = forward(x_seq[t:t + 1])
                loss = step_loss(out) / len(x_seq)
                if not torch.isfinite(loss).item():
                    return None, float("nan"), loss
                backward(loss)
                outs.append(out.detach())
                total += loss.item()
            return torch.cat(outs), total, None
        finally:
            self._online(False)

    def _online(self, on: bool) -> None:
        """Carry the membranes and traces from call to call (on), or not, both from rest."""
        for m in self.neurons:
            m.carry_membrane, m.carried_v = on, None
        for trace in self.traces:
            trace.on, trace.a = on, None

    @classmethod
    def problems(cls, cfg: DictConfig, neuron_class) -> List[str]:
        problems = spatial_problems("learning=ottt", cfg, neuron_class)
        norm = configured_class(cfg, "norm")
        if norm is not None and not (getattr(norm, "standardises_weight", False) or norm.__name__ == "NoNorm"):
            problems.append(f"learning=ottt runs one time step at a time, which {norm.__name__} does not define: "
                            f"the paper replaces BN by scaled weight standardisation, norm=sws (or norm=none)")
        model = configured_class(cfg, "model")
        if model is not None and (getattr(model, "layer_runs", None) is None or "DFC" in str(
                OmegaConf.select(cfg, "model.spec") or "").upper() or model.__name__ == "SpikingResNet"):
            problems.append("learning=ottt runs spec networks of conv, FC, pooling and SN layers (model=convnet, "
                            "mlp, fc, ...): not ResNets or delayed FC layers")
        if hasattr(configured_class(cfg, "readout"), "output_layer") and OmegaConf.select(cfg, "readout.tau") != 1:
            problems.append("learning=ottt runs one time step at a time, so a membrane readout's output neurons would "
                            "start from rest at every step: use readout.tau=1 (each step's output currents as they "
                            "are, as the paper reads out) or readout=rate")
        for key, allowed in (("trainer.strategy", "single"), ("trainer.micro_batch", None)):
            if OmegaConf.select(cfg, key) != allowed:
                problems.append(f"learning=ottt runs a batch step by step, not in pieces or processes: set "
                                f"{key}={'null' if allowed is None else allowed}")
        return problems


class _Trace:
    """A forward hook on a conv/FC layer fed by spikes: the layer's output is what it was, but its gradient is that
    of the layer applied to the presynaptic trace a[t] = lambda a[t-1] + x[t] (x: the layer's input at step t;
    lambda = 1 - 1/tau of the neurons that feed it, 1 for IF), so that the weight gradient is delta[t] a[t]^T and
    the input gradient, through a[t] (a[t-1] detached), W^T delta[t]: OTTT's."""

    def __init__(self, layer: nn.Module, neuron: SpikingNeuron):
        self.neuron, self.on, self.a = neuron, False, None
        layer.register_forward_hook(self)

    def __call__(self, layer: nn.Module, inputs, output):
        if not self.on:
            return None
        tau_inv = self.neuron.tau_inv()
        decay = 1.0 if tau_inv is None else 1.0 - float(torch.as_tensor(tau_inv).detach())
        a = inputs[0] if self.a is None else decay * self.a + inputs[0]
        self.a = a.detach()
        if isinstance(layer, nn.Conv2d):
            on_trace = layer._conv_forward(a, layer.weight, layer.bias)
        else:
            on_trace = F.linear(a, layer.weight, layer.bias)
        return output.detach() + (on_trace - on_trace.detach())



def _recurrent(cfg: DictConfig) -> bool:
    """Whether the configured network has recurrent (RFC) layers."""
    target = str(OmegaConf.select(cfg, "model._target_") or "")
    if target.endswith(".RSNN") and OmegaConf.select(cfg, "model.recurrent", default=True) is not False:
        return True
    return "RFC" in str(OmegaConf.select(cfg, "model.spec") or "").upper()


def learning_rule(cfg: DictConfig):
    """The configured rule (BPTT where the config has no learning group: an older run's)."""
    from hydra.utils import instantiate

    return instantiate(cfg.learning) if OmegaConf.select(cfg, "learning") is not None else BPTT()
