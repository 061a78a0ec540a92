"""Resume trusts nothing on disk (issue 28): it catches up a run folder that a failed write left behind last.pt,
refuses a config that changes what the run computes and data that changed under a mid-epoch checkpoint, and one
run folder is trained in by one process at a time."""

import json
import signal
import subprocess
import time

import pytest
import torch
from torch.utils.data import Subset

from conftest import run_snnexp
from snnexp import data
from snnexp.errors import CheckpointError
from snnexp.train import checkpoint
from snnexp.train.evaluate import evaluate_checkpoint
from snnexp.train.loop import fit
from test_resume import compose_train, scalar_steps, start

SMALL = ["model=mlp", "trainer.T=2", "trainer.progress=false"]  # learns within 2 epochs: 0.4 s each


def test_a_failed_best_pt_write_at_the_last_epoch_is_caught_up_by_resume(tmp_path, monkeypatch):
    real_save = checkpoint.save

    def full_disk(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    def full_disk_at_best(path, state, meta, end_of_epoch=None):  # best.pt of epoch 2, the best, cannot be written
        with monkeypatch.context() as m:
            if path.name == "best.pt" and end_of_epoch == 2:
                m.setattr(checkpoint.torch, "save", full_disk)
            real_save(path, state, meta, end_of_epoch)

    cfg, last = compose_train(*SMALL, "trainer.epochs=2"), tmp_path / "checkpoints" / "last.pt"
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save", full_disk_at_best)
        with pytest.raises(CheckpointError) as err:
            fit(cfg, tmp_path, {})
    assert f"{last} holds epoch 2, the best so far: resuming the run (snnexp train resume={tmp_path})" in str(err.value)
    assert torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 1
    metrics = fit(cfg, tmp_path, {}, resume=last)  # nothing left to train: the folder is caught up
    assert metrics["best_epoch"] == 2 and json.loads((tmp_path / "metrics.json").read_text()) == metrics
    best = evaluate_checkpoint(tmp_path / "checkpoints" / "best.pt", "cpu")
    assert best["epoch"] == 2 and best["test_acc"] == metrics["best_test_acc"]
    assert scalar_steps(tmp_path, "test/acc") == [1, 2]


def test_a_dataset_that_shrank_under_a_mid_epoch_checkpoint_is_refused(tmp_path, monkeypatch):
    cfg, last = compose_train(*SMALL, "trainer.epochs=1", "trainer.max_steps=20"), tmp_path / "checkpoints" / "last.pt"
    fit(cfg, tmp_path, {})
    before = last.read_bytes()
    full = data.digits

    def shrunk(**kwargs):
        splits = full(**kwargs)
        splits.train = Subset(splits.train, range(700))
        return splits

    monkeypatch.setattr(data, "digits", shrunk)
    resumed = compose_train(*SMALL, "trainer.epochs=1")
    with pytest.raises(CheckpointError, match=r"the data changed since this checkpoint was saved \(train: 1437 -> 700 "
                                              r"samples\): resume with the run's own data"):
        fit(resumed, tmp_path, {}, resume=last)
    assert last.read_bytes() == before
    state = torch.load(last, weights_only=True)  # one written before the sizes were stored: its position is checked
    del state["data_sizes"]
    torch.save(state, last)
    with pytest.raises(CheckpointError, match="it stopped after 1280 samples of an epoch, the training set now has "
                                              "700"):
        fit(resumed, tmp_path, {}, resume=last)


def test_a_resume_that_changes_what_the_run_computes_is_refused_and_a_longer_run_moves_the_schedule(tmp_path):
    run_snnexp("train", *SMALL, "trainer.epochs=1", "trainer.max_steps=7", "hydra.run.dir=run", cwd=tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    before = last.read_bytes()
    for given, listed in ((["trainer.batch_size=16"], "trainer.batch_size: 64 -> 16"),
                          (["optim.lr=0.5", "trainer.T=4"], "optim.lr: 0.001 -> 0.5; trainer.T: 2 -> 4")):
        proc = run_snnexp("train", "resume=run", *given, cwd=tmp_path, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert f"this resume changes what the run computes ({listed}); a resume may change only trainer.epochs" in line
        assert last.read_bytes() == before
    # trainer.epochs may change, fully: cosine's T_max follows it, as in a run made with epochs=3 from the start
    out = run_snnexp("train", "resume=run", "trainer.epochs=3", "trainer.max_steps=30", cwd=tmp_path)
    assert "resume: trainer.epochs changed: 1 -> 3" in out.stdout + out.stderr
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 30 and state["config"]["trainer"]["epochs"] == 3
    assert state["scheduler"]["T_max"] == 3
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001 * 0.75)  # (1 + cos(pi / 3)) / 2


def test_a_second_process_in_the_same_run_folder_is_refused_with_the_first_ones_pid(tmp_path):
    run_snnexp("train", *SMALL, "trainer.epochs=1", "trainer.max_steps=5", "hydra.run.dir=run", cwd=tmp_path)
    lock = tmp_path / "run" / "train.lock"
    first = start(["resume=run", "trainer.max_steps=10"], tmp_path)
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
        assert time.time() < deadline and first.poll() is None, "the first resume never held the lock"
        time.sleep(0.02)
    first.send_signal(signal.SIGSTOP)  # it holds the lock while the second one tries
    try:
        second = run_snnexp("train", "resume=run", "trainer.max_steps=10", cwd=tmp_path, check=False)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.strip() == (f"snnexp: error: the run directory {tmp_path / 'run'} is in use: snnexp process "
                                     f"{first.pid} trains in it now (it holds train.lock); wait for it to end, or "
                                     "stop it, then try again")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 10
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 2  # the run's and the first resume's
    # a lock file left with the PID of a process that died (its OS lock died with it) does not block
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(f"{dead.pid}\n")
    run_snnexp("train", "resume=run", "trainer.max_steps=12", cwd=tmp_path)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 12 and lock.read_text() == ""
