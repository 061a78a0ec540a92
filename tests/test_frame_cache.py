"""FrameCache: built once, keyed by everything that changes the frames, atomic, safe under concurrency."""

import json
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest

from snnexp.data.cache import FrameCache
from snnexp.data.events import CorruptFile

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


def test_built_once_then_read(tmp_path):
    log = tmp_path / "log"
    frames, labels, meta = FrameCache(tmp_path / "c", KEY).get_or_build(SOURCES, LABELS, FakeConvert(log), SHAPE, 1)
    assert conversions(log) == 6
    assert [int(f[0, 0, 0, 0]) for f in frames] == list(range(6)) and labels.tolist() == LABELS
    frames, labels, _ = FrameCache(tmp_path / "c", KEY).get_or_build(SOURCES, LABELS, FakeConvert(log), SHAPE, 1)
    assert conversions(log) == 6  # read from disk, not converted again
    assert isinstance(frames, np.memmap)


def test_a_changed_key_builds_a_new_cache_and_never_serves_the_old(tmp_path):
    log = tmp_path / "log"
    old = FrameCache(tmp_path / "c", KEY)
    old.get_or_build(SOURCES, LABELS, FakeConvert(log), SHAPE, 1)
    new = FrameCache(tmp_path / "c", {**KEY, "T": 3})
    assert new.dir != old.dir and not new.is_complete()
    new.get_or_build(SOURCES, LABELS, FakeConvert(log), SHAPE, 1)
    assert conversions(log) == 12
    assert json.loads((new.dir / "meta.json").read_text())["key"]["T"] == 3


def test_an_interrupted_build_never_looks_complete_and_is_redone(tmp_path):
    log = tmp_path / "log"
    cache = FrameCache(tmp_path / "c", KEY)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build(SOURCES, LABELS, FakeConvert(log, fail_at="3"), SHAPE, 1)
    assert not cache.dir.exists() and not cache.is_complete()
    assert len(list((tmp_path / "c").glob("*.tmp-*"))) == 1  # the half-written build, under a temporary name
    frames, _, _ = FrameCache(tmp_path / "c", KEY).get_or_build(SOURCES, LABELS, FakeConvert(log), SHAPE, 1)
    assert [int(f[0, 0, 0, 0]) for f in frames] == list(range(6))
    assert not list((tmp_path / "c").glob("*.tmp-*"))  # the stale build was cleaned up


def _build_in_process(root, log, out):
    frames, labels, _ = FrameCache(root, KEY).get_or_build(SOURCES, LABELS, FakeConvert(log, delay=0.05), SHAPE, 1)
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
        FrameCache(tmp_path / "a", KEY).get_or_build(sources, [0, 1, 2], FakeConvert(tmp_path / "log"), SHAPE, 1)
    assert not FrameCache(tmp_path / "a", KEY).is_complete()
    frames, labels, meta = FrameCache(tmp_path / "b", KEY).get_or_build(
        sources, [0, 1, 2], FakeConvert(tmp_path / "log"), SHAPE, 1, on_corrupt="skip")
    assert frames.shape == (2, *SHAPE) and labels.tolist() == [0, 2]
    assert meta["skipped"] == ["corrupt: not a recording"] and meta["sources"] == ["0", "2"]


def test_worker_processes_give_the_same_frames(tmp_path):
    a, _, _ = FrameCache(tmp_path / "a", KEY).get_or_build(SOURCES, LABELS, FakeConvert(tmp_path / "l1"), SHAPE, 1)
    b, _, _ = FrameCache(tmp_path / "b", KEY).get_or_build(SOURCES, LABELS, FakeConvert(tmp_path / "l2"), SHAPE, 2)
    np.testing.assert_array_equal(a, b)
