"""TensorBoard's HPARAMS table with the result first: one experiment summary per log folder (`outputs/`), listing
the hparams of every run under it and a short, ordered set of metrics, test accuracy first.

TensorBoard takes the table's columns from the first experiment summary (tag `_hparams_/experiment`) it finds among
all the runs under --logdir, whole. Without one it makes its own: every scalar tag a metric, in alphabetical order
(28 for the default convnet, test accuracy the 22nd, far off screen). Its page shows the first 5 metrics and the
first 5 hparams, those whose values differ between runs first: the summary marks them.

Where the summary lives: in the run's log folder, the first folder of the run folder's path below the folder
`snnexp train` was started in (`outputs` for the default run and sweep folders, `runs` for hydra.run.dir=runs/a),
the folder the README's `tensorboard --logdir outputs` names; so every run and sweep under it, whatever keys they
override, lines up in one table. A run folder outside the start folder uses its parent (a sweep's folder). A run
folder directly in the start folder (hydra.run.dir=a) has none: the start folder is the user's own (a project,
a home folder), neither to write nor to search. TensorBoard picks an arbitrary one of two summaries, so a summary
found below the one being written (a log folder inside another) is removed.

How it is kept up to date: each run writes its hparams to hparams.json in its own folder, then, holding the log
folder's lock (runs of a parallel sweep register at once), rewrites the summary from the hparams.json of every run
under the folder; a damaged one is skipped with a warning. A rewrite is a new TensorBoard run,
`hparams-table/<time>`, after which the previous one is deleted: TensorBoard, its data server and its Python loader
alike, keeps the first metadata it reads for a tag of a run, so a summary rewritten in place would stay stale in a
running TensorBoard, while a run whose event files are gone is dropped at its next reload. Only runs that
`snnexp train` started are registered (a `fit` called from Python has no log folder), and a summary that cannot be
written is a warning: the run goes on."""

import json
import logging
import math
import numbers
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Dict, List, Optional

from filelock import FileLock
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from snnexp.files import temporary_name, write_json_atomic

log = logging.getLogger("snnexp")

RUN_FILE = "hparams.json"  # a run's hparams, in its folder
SUMMARY_DIR = "hparams-table"  # in the log folder: the lock and the summary's run, <time>/
SUMMARY_SUFFIX = ".snnexp-hparams"  # ends the summary's event file name: the files this module may delete
MAX_DEPTH = 5  # run folders are looked for this many levels below the log folder (a sweep's jobs: 3)
MAX_FOLDERS = 20_000  # and in this many folders at most (a parent that holds more than runs: /tmp)
MAX_RUN_FILE = 1 << 20  # bytes; a larger hparams.json is not read

# the table's metrics, in column order: (tag, column title, description). The tags are scalars each run writes in
# its own folder; TensorBoard shows the last value of each (test/best_acc's: the best epoch's accuracy)
METRICS = [
    ("test/best_acc", "best test acc", "the best test accuracy of all epochs"),
    ("test/acc", "final test acc", "the test accuracy of the last epoch"),
    ("test/val_chosen_acc", "test acc at best val acc",
     "the test accuracy of the epoch with the best validation accuracy (runs with dataset.val_fraction > 0)"),
    ("test/loss", "test loss", "the test loss of the last epoch"),
    ("train/loss", "train loss", "the training loss of the last epoch"),
    ("train/samples_per_s", "train samples/s", "training speed in the last epoch"),
    ("activity/firing_rate", "firing rate", "the test set's firing rate, the mean over the spiking layers"),
    ("activity/energy_per_sample_pj", "energy/sample pJ", "the estimated energy of one inference, in picojoules"),
]
VALIDATION_ONLY = {"test/val_chosen_acc"}  # listed when a run under the log folder holds out a validation set


def hparam_value(value):
    """`value` as a cell of the table: a bool, a number or a string (a list or dict as its JSON); None stays None
    (no cell). One type per key in every run: TensorBoard makes a column whose runs differ in type a string column."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else str(float(value))
    return json.dumps(value, default=_plain)


def _plain(value):
    """json.dumps' fallback: a config's list or dict (OmegaConf's ListConfig, DictConfig) as one, anything else as
    its str."""
    if isinstance(value, Mapping):
        return dict(value)
    return list(value) if isinstance(value, Sequence) else str(value)


def register(run_dir: Path, hparams: Dict) -> None:
    """Enter a run that `snnexp train` started in its log folder's summary; anything that goes wrong is a warning."""
    try:
        root = _cli_log_folder(Path(run_dir))
        if root is None:
            return
        write_json_atomic(Path(run_dir) / RUN_FILE, {"hparams": hparams})
        update_summary(root)
    except Exception as e:  # the table is a convenience: the run does not depend on it
        log.warning("the HPARAMS table was not updated for %s: %s: %s", run_dir, type(e).__name__, e)


def _cli_log_folder(run_dir: Path) -> Optional[Path]:
    """The log folder when `run_dir` is the output folder of Hydra's current job, else None."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    runtime = HydraConfig.get().runtime
    if Path(runtime.output_dir).resolve() != run_dir.resolve():
        return None
    return log_folder(run_dir.resolve(), Path(runtime.cwd).resolve())


def log_folder(run_dir: Path, started_in: Path) -> Optional[Path]:
    """Where the summary of a run's table lives, None for a run folder directly in the start folder (see the
    module's docstring)."""
    try:
        parts = run_dir.relative_to(started_in).parts
    except ValueError:  # outside the folder snnexp was started in
        return run_dir.parent
    return started_in / parts[0] if len(parts) >= 2 else None


def update_summary(root: Path) -> None:
    """Rewrite `root`'s summary from the hparams of the runs under it, holding its lock."""
    (root / SUMMARY_DIR).mkdir(parents=True, exist_ok=True)
    with FileLock(root / SUMMARY_DIR / "lock", timeout=60):
        runs, nested = read_runs(root)
        if not runs:
            return
        fresh = _write_summary(root / SUMMARY_DIR, experiment(runs))
        for folder in [*(root / SUMMARY_DIR).iterdir(), *nested]:
            if folder.is_dir() and folder != fresh:
                _remove_summaries(folder)


def read_runs(root: Path):
    """The hparams of each run folder under `root` (a folder holding hparams.json), and the summary folders
    found below it (other log folders' tables, to remove)."""
    runs, nested = [], []
    for seen, (folder, dirs, files) in enumerate(os.walk(root)):
        if seen == MAX_FOLDERS:
            log.warning("looked for runs in the first %d folders under %s only", MAX_FOLDERS, root)
            break
        depth = len(Path(folder).relative_to(root).parts)
        if RUN_FILE in files:
            dirs.clear()  # a run folder holds no other run
            hparams = read_run_file(Path(folder) / RUN_FILE)
            if hparams is not None:
                runs.append(hparams)
            continue
        nested += [Path(folder) / SUMMARY_DIR] if depth > 0 and SUMMARY_DIR in dirs else []
        dirs[:] = [d for d in sorted(dirs) if not d.startswith(".") and d != SUMMARY_DIR and depth < MAX_DEPTH]
    return runs, [p for n in nested for p in n.iterdir()]


def read_run_file(path: Path) -> Optional[Dict]:
    """A run's hparams.json: data to check, never to run; a file that is not {"hparams": {name: bool, number or
    string}} is skipped with a warning."""
    try:
        if path.stat().st_size > MAX_RUN_FILE:
            raise ValueError(f"larger than {MAX_RUN_FILE} bytes")
        hparams = json.loads(path.read_bytes())["hparams"]
        bad = [k for k, v in hparams.items() if not _valid(v)]
        if bad:
            raise ValueError(f"not a bool, number or string: {bad[0]!r}")
        return hparams
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as e:
        log.warning("skipped %s in the HPARAMS table: %s: %s", path, type(e).__name__, e)
        return None


def _valid(value) -> bool:
    """A value that hparams.json may hold: a bool, a string, or a number that a float holds (not NaN or inf)."""
    if isinstance(value, (bool, str)):
        return True
    try:
        return isinstance(value, (int, float)) and math.isfinite(float(value))
    except OverflowError:  # an int of hundreds of digits
        return False


def experiment(runs: List[Dict]) -> api_pb2.Experiment:
    """The table's columns: every hparam of any run (sorted by name; TensorBoard puts those that differ first) and
    the metrics in METRICS' order."""
    names = sorted(set().union(*runs))
    fractions = [r.get("dataset.val_fraction", 0) for r in runs]
    validation = any(_kind(f) is float and f > 0 for f in fractions)
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=title, description=text)
               for tag, title, text in METRICS if validation or tag not in VALIDATION_ONLY]
    return api_pb2.Experiment(hparam_infos=[_hparam_info(n, [r[n] for r in runs if n in r], len(runs))
                                            for n in names], metric_infos=metrics, time_created_secs=time.time())


def _hparam_info(name: str, values: List, runs: int) -> api_pb2.HParamInfo:
    """A column: its type and domain from its values, as TensorBoard computes them without a summary (a string
    column when the runs' types differ); `differs` when two runs' values differ or some runs have none."""
    kinds = {_kind(v) for v in values}
    distinct = {(type(v) is bool, v) for v in values}
    info = api_pb2.HParamInfo(name=name, differs=len(values) < runs or len(distinct) > 1)
    if kinds == {float}:
        info.type = api_pb2.DATA_TYPE_FLOAT64
        info.domain_interval.min_value, info.domain_interval.max_value = min(values), max(values)
    elif kinds == {bool}:
        info.type = api_pb2.DATA_TYPE_BOOL
        info.domain_discrete.extend(sorted(set(values)))
    else:
        info.type = api_pb2.DATA_TYPE_STRING
        info.domain_discrete.extend(sorted({v if isinstance(v, str) else json.dumps(v) for v in values}))
    return info


def _kind(value) -> type:
    """bool, str or float (any number): the three types of a table's column."""
    return bool if isinstance(value, bool) else str if isinstance(value, str) else float


def _write_summary(folder: Path, exp: api_pb2.Experiment) -> Path:
    """The summary as a new TensorBoard run, folder/<time>/, its event file renamed into place whole (the temporary
    name has no "tfevents": TensorBoard does not read it)."""
    now = time.time()
    fresh = folder / f"{time.strftime('%Y-%m-%d_%H-%M-%S', time.localtime(now))}_{uuid.uuid4().hex[:6]}"
    fresh.mkdir()
    summary = summary_pb2.Summary()
    content = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(experiment=exp))
    summary.value.add(tag=metadata.EXPERIMENT_TAG, tensor=metadata.NULL_TENSOR, metadata=content)
    events = [event_pb2.Event(wall_time=now, file_version="brain.Event:2"),
              event_pb2.Event(wall_time=now, summary=summary)]
    tmp = temporary_name(fresh / "summary")
    try:
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            for event in events:
                writer.write(event.SerializeToString())
        os.replace(tmp, fresh / f"events.out.tfevents.{int(now)}{SUMMARY_SUFFIX}")
    finally:
        tmp.unlink(missing_ok=True)
    return fresh


def _remove_summaries(folder: Path) -> None:
    """Delete the summary event files in `folder` (and what a killed rewrite left), then the folder when that
    empties it: TensorBoard drops a run whose folder is gone. Nothing else is touched."""
    for path in folder.iterdir():
        if path.name.endswith(SUMMARY_SUFFIX) or path.name.startswith("summary.tmp-"):
            path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        log.warning("%s holds files other than an HPARAMS table's: left as it is", folder)
