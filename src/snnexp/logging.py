"""What a run writes for TensorBoard: per-epoch scalars, images and histograms and an hparams session, so that
`tensorboard --logdir outputs` compares runs in the SCALARS, IMAGES, HISTOGRAMS and HPARAMS tabs."""

from pathlib import Path
from typing import Any, Dict

import numpy as np
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from snnexp.activity import confusion_image, raster_image


class RunLogger:
    """Used as a context manager, it closes the writer at the end and marks the hparams session finished when the
    block ended without an error."""

    def __init__(self, run_dir: Path, purge_step=None):
        """purge_step: a resumed run's first epoch; points from that epoch on, written before the run
        stopped, are hidden, so the curves continue without duplicates."""
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(success=exc_type is None)
        return False

    def start(self, hparam_dict: Dict) -> None:
        """Open the run's hparams session. Only the session start info is written (no experiment summary):
        TensorBoard then builds the HPARAMS table from all runs' sessions, with every scalar tag as a
        metric, so runs that differ in different keys still line up."""
        _, session_start, self._session_end = hparams(hparam_dict, {})
        self.writer.file_writer.add_summary(session_start)

    def scalars(self, values: Dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def images(self, values: Dict[str, np.ndarray], step: int) -> None:
        """uint8 images: [H, W] grayscale or [H, W, 3] RGB."""
        for tag, img in values.items():
            self.writer.add_image(tag, img, step, dataformats="HW" if img.ndim == 2 else "HWC")
        self.writer.flush()

    def histograms(self, values: Dict[str, np.ndarray], step: int) -> None:
        for tag, array in values.items():
            self.writer.add_histogram(tag, array, step)
        self.writer.flush()

    def activity(self, test_m: Dict[str, Any], epoch: int) -> None:
        """Images and histograms of a test pass (snnexp.activity): the spike raster of the fixed test batch's
        first sample per spiking layer, that batch's confusion matrix, the per-neuron firing rates per layer."""
        images = {f"spike_raster/{k}": raster_image(v) for k, v in test_m["raster"].items()}
        if test_m["confusion"] is not None:
            images["confusion/test_batch"] = confusion_image(test_m["confusion"])
        self.images(images, epoch)
        self.histograms({f"firing_rate_hist/{k}": v for k, v in test_m["neuron_rates"].items()}, epoch)

    def close(self, success: bool) -> None:
        """Mark the hparams session finished (TensorBoard shows a run that died as unfinished)."""
        if success:
            self.writer.file_writer.add_summary(self._session_end)
        self.writer.close()
