"""What a run writes for TensorBoard: per-epoch scalars, images and histograms and an hparams session, so that
`tensorboard --logdir outputs` compares runs in the SCALARS, IMAGES, HISTOGRAMS and HPARAMS tabs (the HPARAMS
table's columns: report/hparams.py).

A write that fails (a full disk, a folder that became read-only) is a CheckpointError naming the run directory and
the reason, raised at the write (each method flushes) or at close, as for checkpoints and metrics.json."""

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Dict

import numpy as np
from tensorboard.plugins.hparams.summary_v2 import hparams_pb
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from snnexp.errors import CheckpointError
from snnexp.files import WRITE_ADVICE
from snnexp.report.hparams import hparam_value, register

log = logging.getLogger("snnexp")


# TensorBoard's CUSTOM SCALARS tab, written by every run (the tab merges the runs' layouts): the result first, then
# what explains it, each chart with every run's curve; tags are regular expressions that match anywhere in a tag
# (the epoch's loss anchored: "train/loss" alone also draws the steps/ sub-run's train/loss_step, 1 to N on x)
LAYOUT = {
    "1 accuracy": {"accuracy: train, test, best test, paper": [
        "Multiline", ["train/acc", "test/acc", "test/best_acc", "paper/test_acc"]],
                   "with a validation set: validation, and the test accuracy of its best epoch": [
        "Multiline", ["val/acc", "test/val_chosen_acc"]]},
    "2 loss": {"loss: train, test": ["Multiline", ["^train/loss$", "^test/loss$"]],
               "training loss at every step": ["Multiline", ["train/loss_step"]]},
    "3 firing rate": {"firing rate per layer": ["Multiline", [r"firing_rate/layer.*"]]},
    "4 speed": {"training samples/s": ["Multiline", ["train/samples_per_s"]]},
}


class RunLogger:
    """Used as a context manager, it closes the writer at the end and marks the hparams session finished when the
    block ended without an error."""

    def __init__(self, run_dir: Path, purge_step=None, purge_train_step=None):
        """purge_step: a resumed run's first epoch; points from that epoch on, written before the run
        stopped, are hidden, so the curves continue without duplicates. purge_train_step: the same for the
        per-step training loss, from the first step after the checkpoint resumed from.

        The per-step loss has its own writer, in the run's `steps/` folder (a sub-run in TensorBoard, as Keras
        writes train/ and validation/): its x axis counts optimizer steps where the run's own counts epochs, and
        TensorBoard hides a resumed run's points by step number across all the tags of a folder."""
        self.run_dir = Path(run_dir)
        started = set(threading.enumerate())
        with self._reported():
            self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
            self.steps = SummaryWriter(log_dir=str(Path(run_dir) / "steps"), purge_step=purge_train_step)
        self._step_losses = []
        # the writer's own thread writes the file and keeps its OSError for the next call to raise (which
        # _reported turns into ours); the thread's default hook would also print it as a traceback
        self._threads = set(threading.enumerate()) - started
        self._hook = threading.excepthook
        threading.excepthook = self._quiet_writer_thread

    def _quiet_writer_thread(self, args) -> None:
        if not (args.thread in self._threads and issubclass(args.exc_type, OSError)):
            self._hook(args)

    @contextmanager
    def _reported(self):
        try:
            yield
        except OSError as e:
            raise CheckpointError(f"cannot write TensorBoard events in {self.run_dir}: {e.strerror or e} "
                                  f"{WRITE_ADVICE}") from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(success=exc_type is None)
        return False

    def start(self, hparam_dict: Dict) -> None:
        """Open the run's hparams session, its row in the HPARAMS table, and enter the run in its log folder's
        experiment summary (report.hparams: the table's columns, the result first). A value is a bool, number or
        string (hparam_value); a None is left out."""
        values = {key: hparam_value(value) for key, value in hparam_dict.items() if value is not None}
        # trial_id "": no session group name, so that TensorBoard names the row by the run's folder
        session_start = hparams_pb(values, trial_id="")
        _, _, self._session_end = hparams({}, {})  # torch's helper: summary_v2 makes no session end
        with self._reported():
            self.writer.file_writer.add_summary(session_start)
            self.writer.add_custom_scalars(LAYOUT)
        register(self.run_dir, values)

    def scalars(self, values: Dict[str, float], step: int) -> None:
        with self._reported():
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
            self.writer.flush()
            self._write_step_losses()

    def step_loss(self, loss: float, step: int) -> None:
        """One optimizer step's training loss (train/loss_step, x = the run's step count), kept until the epoch's
        scalars are written, a checkpoint is saved in the epoch (write_step_losses) or the run stops: like them,
        written after a checkpoint, so that a failing write (a full disk) loses no training."""
        self._step_losses.append((step, loss))

    def write_step_losses(self) -> None:
        with self._reported():
            self._write_step_losses()

    def _write_step_losses(self) -> None:
        for step, loss in self._step_losses:
            self.steps.add_scalar("train/loss_step", loss, step)
        self._step_losses.clear()
        self.steps.flush()

    def images(self, values: Dict[str, np.ndarray], step: int) -> None:
        """uint8 images: [H, W] grayscale or [H, W, 3] RGB."""
        with self._reported():
            for tag, img in values.items():
                self.writer.add_image(tag, img, step, dataformats="HW" if img.ndim == 2 else "HWC")
            self.writer.flush()

    def histograms(self, values: Dict[str, np.ndarray], step: int) -> None:
        with self._reported():
            for tag, array in values.items():
                self.writer.add_histogram(tag, array, step)
            self.writer.flush()

    def activity(self, test_m, epoch: int, tags) -> None:
        """Images and histograms of a test pass (report.metrics.TestSummary): the spike raster of the fixed test
        batch's first sample per spiking layer, that batch's confusion matrix, the per-neuron firing rates per layer;
        layers named by `tags` (report.metrics.LayerTags)."""
        images = {f"spike_raster/{tags.of(k)}": raster_image(v) for k, v in test_m.raster.items()}
        if test_m.confusion is not None:
            images["confusion/test_batch"] = confusion_image(test_m.confusion)
        self.images(images, epoch)
        self.histograms({f"firing_rate_hist/{tags.of(k)}": v for k, v in test_m.neuron_rates.items()}, epoch)

    def close(self, success: bool) -> None:
        """Mark the hparams session finished (TensorBoard shows a run that died as unfinished). A write that
        fails here is raised after a run that succeeded; after one that failed it is only logged, so that the
        run's own error is the one reported."""
        try:
            with self._reported():
                if success:
                    self.writer.file_writer.add_summary(self._session_end)
                try:
                    self._write_step_losses()  # of a run stopped in the middle of an epoch
                    self.writer.close()
                finally:
                    self.steps.close()
        except CheckpointError as e:
            if success:
                raise
            log.warning("%s", e)
        finally:
            if threading.excepthook == self._quiet_writer_thread:
                threading.excepthook = self._hook


# -- images, made with numpy alone (matplotlib is no runtime dependency) ----------------------------------------

def raster_image(raster: np.ndarray, height: int = 512, width: int = 256) -> np.ndarray:
    """[neurons, T] 0/1 -> an [H, W] uint8 image: a black cell for a spike on white, a row per neuron, a column
    per time step, each cell scaled up to about height x width pixels in all (cells 1 to 8 pixels high, 2 to 32
    wide)."""
    neurons, steps = raster.shape
    h = int(np.clip(height // max(neurons, 1), 1, 8))
    w = int(np.clip(width // max(steps, 1), 2, 32))
    img = np.where(raster > 0, 0, 255).astype(np.uint8)
    return np.repeat(np.repeat(img, h, axis=0), w, axis=1)


def confusion_matrix_cells(confusion: np.ndarray, size: int = 320) -> np.ndarray:
    """[classes, classes] counts -> an [H, W] uint8 grayscale image of the row-normalised matrix (rows the true
    class, columns the predicted): the darker, the larger the share of the row; a class absent from the batch is a
    white row. Cells scaled up to about `size` pixels (4 to 32 each)."""
    cm = np.asarray(confusion, dtype=np.float64)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    cell = int(np.clip(size // max(cm.shape[0], 1), 4, 32))
    img = np.round(255 * (1 - share)).astype(np.uint8)
    return np.repeat(np.repeat(img, cell, axis=0), cell, axis=1)


def confusion_image(confusion: np.ndarray, size: int = 320) -> np.ndarray:
    """The matrix of `confusion_matrix_cells` with each class's index written beside its row (left: the true class)
    and above its column (top: the predicted class), in black on white; where the cells are smaller than a digit
    (many classes), every n-th class's, so that the labels do not overlap."""
    cells = confusion_matrix_cells(confusion, size)
    k = len(confusion)
    cell = cells.shape[0] // max(k, 1)
    labels = [_number(i, max(1, cell // 8)) for i in range(k)]
    left = max((lab.shape[1] for lab in labels), default=0) + 4
    top = max((lab.shape[0] for lab in labels), default=0) + 4
    img = np.full((top + cells.shape[0], left + cells.shape[1]), 255, dtype=np.uint8)
    img[top:, left:] = cells
    every = -(-(labels[0].shape[0] + 1) // cell) if labels else 1  # rows a label needs (columns: wider still)
    every = max(every, -(-(max((lab.shape[1] for lab in labels), default=0) + 3) // cell))  # 3 px apart
    for i in range(0, k, every):
        lab = labels[i]
        h, w = lab.shape
        row = min(max(i * cell + cell // 2 - h // 2, 0), cells.shape[0] - h)
        col = min(max(i * cell + cell // 2 - w // 2, 0), cells.shape[1] - w)
        img[top + row:top + row + h, left - 2 - w:left - 2] = lab  # the row's true class
        img[top - 2 - h:top - 2, left + col:left + col + w] = lab  # the column's predicted class
    return img


# 3 x 5 pixel digits for the class indices of confusion_image (no font library is a runtime dependency)
_DIGITS = {"0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
           "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
           "8": "111101111101111", "9": "111101111001111"}


def _number(n: int, scale: int) -> np.ndarray:
    """`n` in black (0) on white (255), each font pixel `scale` x `scale`, one pixel column between digits."""
    glyphs = [np.array([int(b) for b in _DIGITS[d]], dtype=bool).reshape(5, 3) for d in str(n)]
    gap = np.zeros((5, 1), dtype=bool)
    ink = np.concatenate([g for glyph in glyphs for g in (glyph, gap)][:-1], axis=1)
    return np.where(np.kron(ink, np.ones((scale, scale), dtype=bool)), 0, 255).astype(np.uint8)
