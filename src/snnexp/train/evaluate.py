"""A test pass: loss, accuracy and the network's activity and energy (evaluate); the test of a checkpoint
(evaluate_checkpoint, `snnexp eval`), with NeuroBench's own numbers beside ours on request."""
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from snnexp.config import EnergyConfig
from snnexp.errors import CheckpointError, ConfigError, DatasetError
from snnexp.report.activity import Activity, spiking_layers
from snnexp.report.cost import energy_pj, static_metrics
from snnexp.report.metrics import TestSummary, test_metrics
from snnexp.train import checkpoint, distributed
from snnexp.train.build import EVAL_SEED, Run, build_run, checkpoint_config, load_weights, make_loader, resolve_device
from snnexp.train.epoch import scores_and_loss

log = logging.getLogger("snnexp")


@torch.no_grad()
def evaluate(run: Run, loader, desc: str = "test") -> TestSummary:
    """Test loss, accuracy and the network's activity (report.activity.ActivitySummary): the mean firing rate of
    every spiking layer, spikes, activation sparsity and synaptic operations per sample, per-neuron rates, and the
    spike raster and confusion matrix of the first (fixed) test batch; beside them the static metrics and the
    energy per sample (report.cost). A progress bar named `desc` on a terminal (trainer.progress)."""
    run.model.eval()
    generator = torch.Generator(run.device).manual_seed(EVAL_SEED)
    total_loss, correct, seen = 0.0, 0, 0
    with Activity(run.model, spiking_layers(run.model)) as activity:
        for x, y in progress(loader, desc, run.cfg.trainer.progress):
            x, y = x.to(run.device), y.to(run.device)
            scores, loss = scores_and_loss(run, x, y, generator)
            total_loss += loss.item() * y.numel()
            correct += (scores.argmax(1) == y).sum().item()
            seen += y.numel()
            activity.batch(scores, y)
    if distributed.world() > 1:  # data parallel: each process tested its share; the sums over all of them
        total_loss, correct, seen = distributed.sum_all([total_loss, correct, seen])
        activity.all_reduce()
    if seen == 0:
        raise DatasetError("the test set is empty: there is nothing to test (check dataset.data_dir)")
    summary = activity.summary()
    energy = OmegaConf.merge(OmegaConf.structured(EnergyConfig), run.cfg.get("energy") or {})
    return TestSummary(**vars(summary), loss=total_loss / seen, acc=correct / seen, **static_metrics(run.model),
                       energy_per_sample_pj=energy_pj(summary.effective_acs_per_sample,
                                                      summary.effective_macs_per_sample, energy.ac_pj, energy.mac_pj))


def progress(loader, desc: str, show: bool):
    """The batches of `loader` with a progress bar while `show` on a terminal (tqdm's disable=None: not when the
    output is a file or a pipe), on the main process of a data-parallel run."""
    return tqdm(loader, desc=desc, leave=False, disable=None if show and distributed.is_main() else True,
                dynamic_ncols=True)


def evaluate_checkpoint(path, device_name: str = "auto", data_dir: Optional[str] = None,
                        batch_size: Optional[int] = None, neurobench: bool = False,
                        config_dirs: Optional[Sequence[Path]] = None, progress: bool = True) -> Dict[str, Any]:
    """Rebuild the network from the config stored in a checkpoint and test it. The stored trainer settings are
    read through the schema (TrainerConfig), so a checkpoint written before a setting existed gets its default.
    `neurobench`: also run NeuroBench's Benchmark on it (neurobench_results), under the key "neurobench".
    `config_dirs`: the trusted config folders whose targets the stored config may name (checkpoint.stored_config).
    `progress`: a progress bar over the test batches on a terminal."""
    if neurobench:
        require_neurobench()
    state = checkpoint.load(path)
    cfg = checkpoint_config(state, path, config_dirs)
    if data_dir is not None:
        if "data_dir" not in cfg.dataset:
            raise CheckpointError(f"data_dir given, but the checkpoint's dataset ({cfg.dataset._target_}) takes none")
        cfg.dataset.data_dir = str(Path(data_dir).expanduser().resolve())
    if batch_size is not None:
        cfg.trainer.batch_size = batch_size
    cfg.trainer.progress = progress  # this command's, not the training run's
    run = build_run(cfg, resolve_device(device_name))
    load_weights(run.model, state, path)
    loader = make_loader(run.splits.test, cfg)
    test = evaluate(run, loader)
    paper_acc = OmegaConf.select(cfg, "paper.test_acc", default=None)  # a reproduction's checkpoint
    metrics = test_metrics(test, paper_acc)
    metrics.update(epoch=state["epoch"], checkpoint=str(Path(path).resolve()))
    if neurobench:
        require_neurobench_counts(run.model)
        metrics["neurobench"] = neurobench_results(run, loader)
    return metrics


def require_neurobench() -> None:
    """ConfigError with the way to install it, when the optional neurobench package is missing."""
    try:
        import neurobench  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"neurobench=true needs the neurobench package, which cannot be imported ({e}): install it "
                          "with pip install 'snnexp[neurobench]' (or pip install neurobench)") from None


def require_neurobench_counts(model) -> None:
    """ConfigError for a network with layers NeuroBench does not count (it counts Linear and Conv layers only): its
    numbers would leave out a learned-delay layer's synaptic operations, where ours count them."""
    from snnexp.nn.delays import delayed_layers

    if delayed_layers(model):
        raise ConfigError("neurobench=true: NeuroBench counts the synaptic operations of Linear and Conv layers only, "
                          "not those of learned-delay layers (DFC in model.spec); snnexp eval without neurobench=true "
                          "counts them")


def neurobench_results(run: Run, loader) -> Dict[str, Any]:
    """NeuroBench's own results (snnexp.report.neurobench.run_benchmark) for the run's network on the test batches of
    `loader`, with the input spikes of our own test pass (the same seeded generator), by NeuroBench's names."""
    from snnexp.report.neurobench import Encode, run_benchmark

    generator = torch.Generator(run.device).manual_seed(EVAL_SEED)
    preprocessors = [] if run.splits.sequence else [Encode(run.encoder, run.cfg.trainer.T, generator)]
    return run_benchmark(run.model, loader, preprocessors, run.readout, run.device)
