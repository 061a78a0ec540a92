"""What comes from disk is data (snnexp.trust): a checkpoint's stored config and a run folder's overrides may name
only what snnexp's own config groups (or the user's --config-dir) name; anything else is refused before it is built.

The attacks are the ones a probe of the code before snnexp.trust ran: a checkpoint whose config nests Hydra
targets that write a pickle with numpy.savetxt and read it back with torch.load(weights_only=False), which runs
a command; and a run folder whose overrides.yaml adds a Hydra callback, which Hydra builds before snnexp runs.
Each test checks that nothing ran (the marker files the attacks would write are absent).

tests/data/run_d4fc93f is a run folder written by the commit before these checks (d4fc93f: `snnexp train
model=mlp neuron=lif surrogate=sigmoid trainer.epochs=1 trainer.T=2 model.hidden=[16]`): it must still eval, export
and resume."""

import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_snnexp
from snnexp import conf_dir
from snnexp.errors import CheckpointError
from snnexp.train.checkpoint import stored_config
from snnexp.trust import check_replayed, check_stored_config

OLD_RUN = Path(__file__).parent / "data" / "run_d4fc93f"


@pytest.fixture
def old_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    return run


class _Touch:
    """A pickle that runs `touch PATH` when loaded (what torch.load(weights_only=False) would do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.path}",)


def pickle_chain(tmp_path: Path) -> dict:
    """The probe's nested chain: numpy.savetxt writes a protocol-0 pickle (ASCII) to a file, torch.load with
    weights_only=False reads it and so runs `touch ran`; Hydra builds both as arguments of a dict."""
    payload = tmp_path / "payload.pt"
    text = pickle.dumps(_Touch(tmp_path / "ran"), protocol=0).decode()
    return {"_target_": "builtins.dict",
            "write": {"_target_": "numpy.savetxt", "fname": str(payload), "X": [text], "fmt": "%s", "newline": ""},
            "run": {"_target_": "torch.load", "f": str(payload), "weights_only": False}}


def crafted_checkpoint(run: Path, tmp_path: Path) -> Path:
    """The old run's best.pt with the chain nested in the readout's config (a part eval and export build)."""
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["readout"]["trap"] = pickle_chain(tmp_path)
    path = tmp_path / "crafted.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_checkpoint_that_names_foreign_targets_is_refused_and_nothing_runs(old_run, tmp_path, command):
    crafted = crafted_checkpoint(old_run, tmp_path)
    proc = run_snnexp(command, f"checkpoint={crafted}", f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path,
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "readout.trap._target_='builtins.dict'" in proc.stderr and "never code" in proc.stderr
    assert not (tmp_path / "payload.pt").exists() and not (tmp_path / "ran").exists()


def test_a_run_folder_that_adds_a_hydra_callback_is_refused_before_hydra_builds_it(old_run, tmp_path):
    marker = tmp_path / "ran.txt"
    overrides = old_run / ".hydra" / "overrides.yaml"
    stored = yaml.safe_load(overrides.read_text())
    overrides.write_text(yaml.safe_dump([*stored, "+hydra.callbacks.x._target_=numpy.savetxt",
                                         f"+hydra.callbacks.x.fname={marker}", "+hydra.callbacks.x.X=[1]"]))
    proc = run_snnexp("train", f"resume={old_run}", "trainer.epochs=2", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'+hydra.callbacks.x._target_=numpy.savetxt'" in proc.stderr and "Hydra's own config" in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("override, why", [
    ("++hydra.job.chdir=true", "Hydra's own config"),
    ("hydra/launcher=joblib", "Hydra's own config"),
    ("+neuron@hydra.callbacks.x=lif", "Hydra's own config"),
    ("+trainer.epoch=3", "adds the key trainer.epoch"),
    ("++neuron.foo=1", "adds the key neuron.foo"),
    ("model._target_=os.system", "model._target_='os.system'"),
    ("readout.x={_target_: shutil.copyfile, src: a, dst: b}", "readout.x._target_='shutil.copyfile'"),
    ('trainer.seed="${oc.create:{_target_: os.system}}"', "interpolation"),
    ("neuron=lif,plif", "is a sweep"),
    ("trainer.T=[", "is not an override Hydra can read"),
])
def test_replayed_overrides_may_only_set_snnexps_own_groups_and_keys(override, why):
    with pytest.raises(CheckpointError, match="resume: .*overrides.yaml holds the override") as e:
        check_replayed(["neuron=lif", override], Path("run/.hydra/overrides.yaml"), [conf_dir()])
    assert repr(override) in str(e.value) and why in str(e.value)


def test_replayed_overrides_of_our_own_groups_and_keys_pass():
    check_replayed(["neuron=lif", "+experiment=plif_mnist", "model.hidden=[16]", "optim._target_=torch.optim.SGD",
                    "dataset.data_dir='/data/a=b'", "~paper"], Path("overrides.yaml"), [conf_dir()])


def test_a_stored_config_with_an_interpolation_a_target_that_is_no_name_or_no_mapping_is_refused():
    with pytest.raises(CheckpointError, match=r"interpolation at trainer.T \('\$\{oc.env:HOME\}'\)"):
        check_stored_config({"trainer": {"T": "${oc.env:HOME}"}}, "x.pt", [conf_dir()])
    with pytest.raises(CheckpointError, match=r"names model._target_=\{'a': 1\}"):
        check_stored_config({"model": {"_target_": {"a": 1}}}, "x.pt", [conf_dir()])
    with pytest.raises(CheckpointError, match="x.pt: its stored config is a list"):
        check_stored_config([], "x.pt", [conf_dir()])


def test_a_target_from_the_users_own_config_dir_is_trusted_when_given(old_run, tmp_path):
    state = torch.load(old_run / "checkpoints" / "best.pt", weights_only=True)
    state["config"]["optim"] = {"_target_": "torch.optim.RMSprop", "lr": 0.001}
    torch.save(state, tmp_path / "rmsprop.pt")
    proc = run_snnexp("eval", "checkpoint=rmsprop.pt", "hydra.run.dir=e1", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "optim._target_='torch.optim.RMSprop'" in proc.stderr
    (tmp_path / "mine" / "optim").mkdir(parents=True)
    (tmp_path / "mine" / "optim" / "rmsprop.yaml").write_text("_target_: torch.optim.RMSprop\nlr: 0.001\n")
    proc = run_snnexp("eval", "--config-dir", "mine", "checkpoint=rmsprop.pt", "hydra.run.dir=e2", cwd=tmp_path)
    assert "test_acc" in proc.stdout


def test_a_run_folder_written_before_these_checks_still_evals_exports_and_resumes(old_run, tmp_path):
    best = old_run / "checkpoints" / "best.pt"
    assert "test_acc 10.00%" in run_snnexp("eval", f"checkpoint={best}", "hydra.run.dir=e", cwd=tmp_path).stdout
    assert "NIR graph" in run_snnexp("export", f"checkpoint={best}", "out=net.nir", "hydra.run.dir=x",
                                     cwd=tmp_path).stdout
    out = run_snnexp("train", f"resume={old_run}", "trainer.epochs=2", cwd=tmp_path)
    assert "resumed from" in out.stdout + out.stderr
    assert (old_run / "metrics.json").read_text().count('"epoch": 2') == 1


def test_an_unreadable_overrides_file_is_a_clear_error(old_run, tmp_path):
    (old_run / ".hydra" / "overrides.yaml").write_text("{not: a list}\n")
    proc = run_snnexp("train", f"resume={old_run}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is not a list of overrides" in proc.stderr and "Traceback" not in proc.stderr


def test_a_checkpoint_does_not_say_where_this_machine_writes(tmp_path):
    dataset = {"_target_": "snnexp.data.nmnist", "data_dir": "/elsewhere", "download": True,
               "cache_dir": str(tmp_path / "not_the_cache")}
    cfg = stored_config({"config": {"dataset": dataset}}, "x.pt")
    assert cfg.dataset.cache_dir is None and cfg.dataset.download is False and cfg.dataset.data_dir == "/elsewhere"
