"""An epoch's numbers, made from what `train.epoch.train_epoch` and `train.evaluate.evaluate` returned: the record
that goes into metrics.json (a plain dict: a file format) and the scalars that go to TensorBoard. Plain functions
of the typed summaries, no I/O.

    train_m  TrainSummary: loss, acc, samples_per_s, skipped, grad_norm {layer: mean norm}
    test_m   TestSummary: loss, acc, the activity summary (report.activity.ActivitySummary), the static metrics and
             the energy per sample (report.cost)
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from torch import nn

from snnexp.report.activity import SOP_LAYERS as WEIGHT_LAYERS
from snnexp.report.activity import ActivitySummary, spiking_layers

# what a test pass measures of the network's activity that goes into metrics.json (the arrays go to TensorBoard)
ACTIVITY_METRICS = ("spikes_per_sample", "layer_spikes_per_sample", "effective_acs_per_sample",
                    "effective_macs_per_sample", "dense_ops_per_sample", "layer_acs_per_sample",
                    "layer_macs_per_sample")
# NeuroBench's set [Yik 2025] (report/activity.py, report/cost.py) and the energy estimate: metrics.json keys and
# the TensorBoard tags of their final values (the HPARAMS table's metrics: report/hparams.METRICS)
COST_METRICS = {"footprint_bytes": "static/footprint_bytes", "parameter_count": "static/parameter_count",
                "connection_sparsity": "static/connection_sparsity",
                "activation_sparsity": "activity/activation_sparsity",
                "effective_acs_per_sample": "activity/effective_acs_per_sample",
                "effective_macs_per_sample": "activity/effective_macs_per_sample",
                "dense_ops_per_sample": "activity/dense_ops_per_sample",
                "energy_per_sample_pj": "activity/energy_per_sample_pj"}


@dataclass
class TrainSummary:
    """What a training epoch adds up (train.epoch.train_epoch, from metrics.train_summary)."""

    loss: float  # mean over the samples trained on
    acc: float
    samples_per_s: float
    skipped: int  # batches left out for a non-finite loss or gradient (trainer.on_nonfinite=skip)
    grad_norm: Dict[str, float]  # each layer's gradient norm, averaged over the epoch's steps


@dataclass
class TestSummary(ActivitySummary):
    """What a test pass measures (train.evaluate.evaluate): loss and accuracy, the network's activity
    (ActivitySummary's fields), its static metrics (report.cost) and the energy per sample."""

    loss: float
    acc: float
    footprint_bytes: int
    parameter_count: int
    connection_sparsity: float
    energy_per_sample_pj: float


def train_summary(loss_sum: float, correct: float, seen: float, timed: float, elapsed: float, skipped: int,
                  grad_norm_sums: Dict[str, float], steps: int) -> TrainSummary:
    """train_m from an epoch's sums: mean loss and accuracy over the samples trained on, samples/s (of the
    `timed` samples over `elapsed` seconds), skipped batches, and each layer's gradient norm averaged over steps."""
    return TrainSummary(loss=loss_sum / seen if seen else float("nan"), acc=correct / max(seen, 1),
                        samples_per_s=timed / elapsed if elapsed > 0 else 0.0, skipped=skipped,
                        grad_norm={k: v / max(steps, 1) for k, v in grad_norm_sums.items()})


def test_metrics(test_m: TestSummary, paper_acc: Optional[float]) -> Dict[str, Any]:
    """What a test pass puts in metrics.json, in a run and in `snnexp eval`; a reproduction's published accuracy
    (paper.test_acc) beside it."""
    metrics = {"test_acc": test_m.acc, "test_loss": test_m.loss, "firing_rate": test_m.firing_rate,
               **{k: getattr(test_m, k) for k in (*ACTIVITY_METRICS, *COST_METRICS)}}
    if paper_acc is not None:
        metrics["paper_test_acc"] = paper_acc
    return metrics


def epoch_metrics(previous: Dict[str, Any], epoch: int, step: int, train_m: TrainSummary, test_m: TestSummary,
                  wall_s: float, paper_acc: Optional[float], val_m: Optional[TestSummary] = None) -> Dict[str, Any]:
    """metrics.json after `epoch`: this epoch's numbers, the best test accuracy so far and its epoch ("A": the epoch
    chosen on the test set, as most papers report), with a validation set (val_m) the best validation accuracy, its
    epoch and that epoch's test accuracy ("B": the test set chose nothing), and the batches skipped so far, carried
    over from `previous` (the record after the epoch before)."""
    is_best = test_m.acc > previous["best_test_acc"]
    return {
        "test_acc": test_m.acc,  # first in the file, as it always was; **test_metrics below keeps the place
        "test_loss": test_m.loss,
        "best_test_acc": max(test_m.acc, previous["best_test_acc"]),
        "best_epoch": epoch if is_best else previous.get("best_epoch", epoch),
        **(validation_metrics(previous, epoch, test_m, val_m) if val_m is not None else {}),
        "train_acc": train_m.acc,
        "train_loss": train_m.loss,
        "epoch": epoch,
        "step": step,
        "skipped_batches": previous.get("skipped_batches", 0) + train_m.skipped,
        "train_samples_per_s": train_m.samples_per_s,
        "wall_s": wall_s,
        **test_metrics(test_m, paper_acc),
    }


def validation_metrics(previous: Dict[str, Any], epoch: int, test_m: TestSummary, val_m: TestSummary
                       ) -> Dict[str, Any]:
    """The validation set's part of metrics.json: this epoch's validation accuracy and loss, the best validation
    accuracy so far, its epoch, and the test accuracy of that epoch (val_chosen_test_acc, "B")."""
    best = previous.get("best_val_acc", 0.0)
    is_best = val_m.acc > best
    return {"val_acc": val_m.acc, "val_loss": val_m.loss, "best_val_acc": max(val_m.acc, best),
            "best_val_epoch": epoch if is_best else previous.get("best_val_epoch", epoch),
            "val_chosen_test_acc": test_m.acc if is_best else previous.get("val_chosen_test_acc", 0.0)}


def chosen_epoch(metrics: Dict[str, Any]) -> Tuple[Optional[int], float, str]:
    """The epoch best.pt holds: (epoch, its accuracy, on which set it was chosen), the best validation epoch where
    the run has a validation set, else the best test epoch; (None, 0.0, ...) before the first epoch."""
    if "best_val_acc" in metrics:
        return metrics.get("best_val_epoch"), metrics["best_val_acc"], "validation"
    return metrics.get("best_epoch"), metrics.get("best_test_acc", 0.0), "test"


class LayerTags:
    """TensorBoard's names of a network's layers: 'layerK' for the K-th layer as the spec counts them (a conv or FC
    with the norm, neuron and pooling after it; RFCn; a ResNet block), whatever its neuron, norm or surrogate, so that
    runs of one network share every chart. `of` names a layer from its metrics.json name ('02_PLIF' -> 'layer1'; in
    a block the path stays: '03.body.2_PLIF' -> 'layer2.body.2'); `group` names the layer a parameter belongs to
    from its module path in the unfused network ('6.w' -> 'layer2': a PLIF's w counts with its conv)."""

    def __init__(self, model: nn.Module):
        self.layers = list(model) if isinstance(model, nn.Sequential) else []
        self.starts = [i for i, m in enumerate(self.layers) if any(isinstance(s, WEIGHT_LAYERS) for s in m.modules())]

    def _k(self, position: int) -> int:
        return sum(start <= position for start in self.starts)

    def of(self, layer_name: str) -> str:
        path = layer_name.rsplit("_", 1)[0]  # the type after the last '_' ('03.out_neuron_PLIF' -> '03.out_neuron')
        head, dot, rest = path.partition(".")
        if not (head.isdigit() and self.layers):
            return path
        return f"layer{self._k(int(head))}{dot}{rest}"

    def group(self, module_path: str) -> str:
        head = module_path.partition(".")[0]
        return f"layer{self._k(int(head))}" if head.isdigit() and self.layers else module_path.rsplit(".", 1)[0]


def layer_scalars(model: nn.Module, tags: LayerTags) -> Dict[str, float]:
    """What each spiking layer reports of itself (SpikingNeuron.scalars: its tau), as '<what>/<layer tag>'."""
    return {f"{key}/{tags.of(name)}": value for name, layer in spiking_layers(model).items()
            for key, value in layer.scalars().items()}


def epoch_scalars(metrics: Dict[str, Any], train_m: TrainSummary, test_m: TestSummary, lr: float,
                  model: nn.Module) -> Dict[str, float]:
    """TensorBoard's scalars of an epoch, by tag. paper/test_acc (a reproduction's) draws a flat line on the
    axis of test/acc."""
    scalars = {
        "train/loss": train_m.loss, "train/acc": train_m.acc,
        "test/loss": test_m.loss, "test/acc": test_m.acc, "test/best_acc": metrics["best_test_acc"],
        "lr": lr, "train/samples_per_s": train_m.samples_per_s, "train/skipped_batches": train_m.skipped,
    }
    if "paper_test_acc" in metrics:
        scalars["paper/test_acc"] = metrics["paper_test_acc"]
    scalars.update(validation_scalars(metrics))
    tags = LayerTags(model)
    scalars.update({f"firing_rate/{tags.of(k)}": v for k, v in test_m.firing_rate.items()})
    scalars.update({f"grad_norm/{k}": v for k, v in train_m.grad_norm.items()})  # already by layer tag
    scalars.update(layer_scalars(model, tags))
    scalars["activity/spikes_per_sample"] = test_m.spikes_per_sample
    scalars.update(mean_rate(test_m.firing_rate))
    scalars.update({tag: getattr(test_m, key) for key, tag in COST_METRICS.items()})
    return scalars


def metrics_scalars(metrics: Dict[str, Any], model: nn.Module) -> Dict[str, float]:
    """The part of epoch_scalars that metrics.json holds (not: lr, gradient norms, images): an epoch's points
    written again from it, for a resumed run whose metrics.json write failed (resume.reconcile)."""
    tags = {"train/loss": "train_loss", "train/acc": "train_acc", "test/loss": "test_loss", "test/acc": "test_acc",
            "test/best_acc": "best_test_acc"}
    scalars = {tag: metrics[key] for tag, key in tags.items() if key in metrics}
    scalars.update(validation_scalars(metrics))
    tags = LayerTags(model)
    scalars.update({f"firing_rate/{tags.of(k)}": v for k, v in metrics.get("firing_rate", {}).items()})
    scalars.update(mean_rate(metrics.get("firing_rate", {})))
    return scalars


def validation_scalars(metrics: Dict[str, Any]) -> Dict[str, float]:
    """A run with a validation set: val/acc, val/loss, val/best_acc and test/val_chosen_acc ("B", beside
    test/best_acc, "A")."""
    tags = {"val/acc": "val_acc", "val/loss": "val_loss", "val/best_acc": "best_val_acc",
            "test/val_chosen_acc": "val_chosen_test_acc"}
    return {tag: metrics[key] for tag, key in tags.items() if key in metrics}


def mean_rate(firing_rate: Dict[str, float]) -> Dict[str, float]:
    """activity/firing_rate: the mean of the spiking layers' firing rates (snnexp compare's "mean rate"), one number
    for HPARAMS; none for a network without spiking layers."""
    return {"activity/firing_rate": sum(firing_rate.values()) / len(firing_rate)} if firing_rate else {}
