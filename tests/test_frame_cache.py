"""FrameCache: built once, keyed by everything that changes the frames, atomic, safe under concurrency, and checked on
every load (a damaged cache is refused with its folder named; one built without the checks is rebuilt)."""

import hashlib
import json
import multiprocessing as mp
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_snnexp
from event_writers import make_nmnist
from snnexp.data.cache import FrameCache
from snnexp.errors import CorruptFile, DatasetError

SHAPE = (2, 2, 3, 3)  # T, polarity, H, W


class FakeConvert:
    """frames = the sample's number everywhere; appends one line per conversion to a log file."""

    def __init__(self, log: Path, fail_at=None, delay=0.0):
        self.log, self.fail_at, self.delay = str(log), fail_at, delay

    def __call__(self, source):
        with open(self.log, "a") as f:
            f.write(f"{source}\n")
        time.sleep(self.delay)
        if source == self.fail_at:
            raise KeyboardInterrupt  # the user pressing Ctrl-C mid-build
        if source == "corrupt":
            raise CorruptFile("corrupt: not a recording")
        return np.full(SHAPE, int(source), dtype=np.uint16)


def conversions(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


KEY = {"dataset": "fake", "split": "train", "T": 2}
SOURCES = [str(i) for i in range(6)]
LABELS = [i % 3 for i in range(6)]
CLASSES = 3


def build(root, log, key=KEY, sources=SOURCES, labels=LABELS, workers=1, on_corrupt="error", fail_at=None, delay=0.0):
    """FrameCache(root, key).get_or_build of the fake samples, their conversions logged to `log`."""
    return FrameCache(root, key).get_or_build(sources, labels, FakeConvert(log, fail_at, delay), SHAPE, workers,
                                              on_corrupt, num_classes=CLASSES)


def test_built_once_then_read(tmp_path):
    log = tmp_path / "log"
    frames, labels, meta = build(tmp_path / "c", log)
    assert conversions(log) == 6
    assert [int(f[0, 0, 0, 0]) for f in frames] == list(range(6)) and labels.tolist() == LABELS
    frames, labels, _ = build(tmp_path / "c", log)
    assert conversions(log) == 6  # read from disk, not converted again
    assert isinstance(frames, np.memmap)


def test_a_changed_key_builds_a_new_cache_and_never_serves_the_old(tmp_path):
    log = tmp_path / "log"
    old = FrameCache(tmp_path / "c", KEY)
    build(tmp_path / "c", log)
    new = FrameCache(tmp_path / "c", {**KEY, "T": 3})
    assert new.dir != old.dir and not new.dir.exists()
    build(tmp_path / "c", log, key={**KEY, "T": 3})
    assert conversions(log) == 12
    assert json.loads((new.dir / "meta.json").read_text())["key"]["T"] == 3


def test_an_interrupted_build_never_looks_complete_and_is_redone(tmp_path):
    log = tmp_path / "log"
    cache = FrameCache(tmp_path / "c", KEY)
    with pytest.raises(KeyboardInterrupt, match=re.escape(f"while building the frame cache {cache.dir}: what was "
                                                          "written of it is never read; the next run builds it again")):
        build(tmp_path / "c", log, fail_at="3")
    assert not cache.dir.exists()
    assert len(list((tmp_path / "c").glob("*.tmp-*"))) <= 1  # the half-written build (if kept), under a temporary name
    frames, _, _ = build(tmp_path / "c", log)
    assert [int(f[0, 0, 0, 0]) for f in frames] == list(range(6))
    assert not list((tmp_path / "c").glob("*.tmp-*"))  # the stale build was cleaned up


def _build_in_process(root, log, out):
    frames, labels, _ = build(root, log, delay=0.05)
    np.save(out, np.asarray(frames))


def test_concurrent_builds_give_one_valid_cache(tmp_path):
    log = tmp_path / "log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_build_in_process, args=(tmp_path / "c", log, tmp_path / f"out{i}.npy"))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert conversions(log) == 6  # one build; the other jobs waited for it and read it
    outs = [np.load(tmp_path / f"out{i}.npy") for i in range(3)]
    assert all(np.array_equal(outs[0], o) for o in outs)
    assert len([d for d in (tmp_path / "c").iterdir() if d.is_dir()]) == 1


def test_corrupt_sources_stop_the_build_or_are_skipped_and_counted(tmp_path):
    sources = ["0", "corrupt", "2"]
    with pytest.raises(CorruptFile, match="corrupt: not a recording"):
        build(tmp_path / "a", tmp_path / "log", sources=sources, labels=[0, 1, 2])
    assert not FrameCache(tmp_path / "a", KEY).dir.exists()
    frames, labels, meta = build(tmp_path / "b", tmp_path / "log", sources=sources, labels=[0, 1, 2],
                                 on_corrupt="skip")
    assert frames.shape == (2, *SHAPE) and labels.tolist() == [0, 2]
    assert meta["skipped"] == ["corrupt: not a recording"] and meta["sources"] == ["0", "2"]


def test_worker_processes_give_the_same_frames(tmp_path):
    a, _, _ = build(tmp_path / "a", tmp_path / "l1")
    b, _, _ = build(tmp_path / "b", tmp_path / "l2", workers=2)
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------- a cache on disk is checked, not believed

def rewrite_labels(cache_dir: Path, labels, checksum_too=False) -> None:
    """labels.npy replaced; with `checksum_too`, meta.json's checksum made to match (a consistent cache whose labels
    are wrong: only the range check can tell)."""
    np.save(cache_dir / "labels.npy", np.asarray(labels, dtype=np.int64))
    if checksum_too:
        meta = json.loads((cache_dir / "meta.json").read_text())
        meta["checks"]["labels.npy"]["sha256"] = hashlib.sha256((cache_dir / "labels.npy").read_bytes()).hexdigest()
        (cache_dir / "meta.json").write_text(json.dumps(meta))


def damage(cache_dir: Path, case: str) -> str:
    """Damage a built cache of the fake samples as `case` says; returns what the refusal must say."""
    frames = cache_dir / "frames.npy"
    if case == "scrambled labels":
        rewrite_labels(cache_dir, [LABELS[i] for i in (1, 0, 3, 2, 5, 4)])  # same classes, same size
        return "labels.npy differs from the labels it was built with (its checksum)"
    if case in ("label 10", "label -1"):
        rewrite_labels(cache_dir, [int(case.split()[1])] + LABELS[1:])
        return "labels.npy differs from the labels it was built with (its checksum)"
    if case in ("label 3, its checksum updated", "label -1, its checksum updated"):
        rewrite_labels(cache_dir, [int(case.split()[1][:-1])] + LABELS[1:], checksum_too=True)
        return f"label {case.split()[1][:-1]} outside the 3 classes 0..2"
    if case == "frames of another T":
        np.save(frames, np.zeros((6, 4, *SHAPE[1:]), dtype=np.uint16))  # T=4 under the T=2 key
        return "frames.npy holds uint16 [6, 4, 2, 3, 3], expected uint16 [6, 2, 2, 3, 3]"
    if case == "fewer frames than labels":
        np.save(frames, np.zeros((5, *SHAPE), dtype=np.uint16))
        return "frames.npy holds uint16 [5, 2, 2, 3, 3], expected uint16 [6, 2, 2, 3, 3]"
    if case == "frames of another dtype":
        np.save(frames, np.zeros((6, *SHAPE), dtype=np.float32))
        return "frames.npy holds float32 [6, 2, 2, 3, 3], expected uint16 [6, 2, 2, 3, 3]"
    if case == "truncated frames.npy":
        frames.write_bytes(frames.read_bytes()[:-10])
        return "frames.npy cannot be read ("
    if case == "meta.json not JSON":
        (cache_dir / "meta.json").write_text('{"key": ')
        return "meta.json is not readable JSON ("
    if case == "meta.json not a dict":
        (cache_dir / "meta.json").write_text("[1, 2, 3]")
        return "meta.json does not describe this cache (no dict, or another key)"
    if case == "meta.json missing":
        (cache_dir / "meta.json").unlink()
        return "it has no meta.json"
    if case == "labels.npy missing":
        (cache_dir / "labels.npy").unlink()
        return "labels.npy is missing"
    raise ValueError(case)


DAMAGES = ["scrambled labels", "label 10", "label -1", "label 3, its checksum updated",
           "label -1, its checksum updated", "frames of another T", "fewer frames than labels",
           "frames of another dtype", "truncated frames.npy", "meta.json not JSON", "meta.json not a dict",
           "meta.json missing", "labels.npy missing"]


@pytest.mark.parametrize("case", DAMAGES)
def test_a_damaged_cache_is_refused_naming_its_folder_and_how_to_rebuild_it(tmp_path, case):
    log = tmp_path / "log"
    cache = FrameCache(tmp_path / "c", KEY)
    build(tmp_path / "c", log)
    problem = damage(cache.dir, case)
    with pytest.raises(CorruptFile) as err:
        build(tmp_path / "c", log)
    assert str(err.value).startswith(f"frame cache {cache.dir} is damaged: {problem}")
    assert str(err.value).endswith(f"; remove it (rm -r {cache.dir}) and run again, which rebuilds it")
    assert conversions(log) == 6  # refused, not rebuilt behind the user's back
    shutil.rmtree(cache.dir)  # what the message says to do
    frames, labels, _ = build(tmp_path / "c", log)
    assert conversions(log) == 12 and labels.tolist() == LABELS and frames.shape == (6, *SHAPE)


def test_a_label_outside_the_classes_is_refused_before_a_cache_is_kept(tmp_path):
    with pytest.raises(DatasetError, match="^4: label 3 outside the 3 classes 0..2$"):
        build(tmp_path / "c", tmp_path / "log", labels=[0, 1, 2, 0, 3, 1])
    assert not FrameCache(tmp_path / "c", KEY).dir.exists()  # else every later load would refuse it


def test_a_cache_built_without_checks_is_rebuilt_in_place(tmp_path):
    """A cache of the snnexp before the checks (meta.json without "checks"), here with its labels scrambled: it
    cannot be checked, so it is rebuilt in its folder, and the right labels are served."""
    log = tmp_path / "log"
    cache = FrameCache(tmp_path / "c", KEY)
    build(tmp_path / "c", log)
    meta = json.loads((cache.dir / "meta.json").read_text())
    del meta["checks"]
    (cache.dir / "meta.json").write_text(json.dumps(meta))
    np.save(cache.dir / "labels.npy", np.asarray(LABELS[::-1], dtype=np.int64))
    frames, labels, meta = build(tmp_path / "c", log)
    assert conversions(log) == 12 and labels.tolist() == LABELS and "checks" in meta
    assert [p.name for p in (tmp_path / "c").iterdir() if p.is_dir()] == [cache.dir.name]  # nothing left aside
    build(tmp_path / "c", log)
    assert conversions(log) == 12  # and reused after


def test_a_damaged_cache_stops_a_training_run_with_one_line(tmp_path):
    """Through the CLI as a user runs it: a small N-MNIST, a first run builds the caches, then the training cache's
    labels are scrambled within 0-9: the next run exits 2, naming the folder, with no traceback."""
    make_nmnist(tmp_path / "data", per_digit=1)
    args = ["train", "dataset=nmnist", "dataset.cache_dir=cache", "dataset.download=false", "trainer.T=2",
            "trainer.epochs=1", "trainer.max_steps=1", "trainer.batch_size=4", "model=mlp"]
    run_snnexp(*args, "hydra.run.dir=run1", cwd=tmp_path)
    (train,) = [p for p in (tmp_path / "cache").glob("nmnist-train-*") if p.is_dir()]
    np.save(train / "labels.npy", np.roll(np.load(train / "labels.npy"), 1))
    proc = run_snnexp(*args, "hydra.run.dir=run2", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (f"snnexp: error: frame cache {train} is damaged: labels.npy differs from the labels it was built with "
            f"(its checksum); remove it (rm -r {train}) and run again, which rebuilds it") in proc.stderr
    assert not (tmp_path / "run2" / "metrics.json").exists()
