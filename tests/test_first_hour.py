"""What a new user meets in the first hour (issue 32): the screen shows progress and results, not the network's
printout; every pass over the data shows a progress bar on a terminal; a misspelt key, group or option stops the
command with the closest match instead of being ignored."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from conftest import run_snnexp
from snnexp import keys
from snnexp.errors import ConfigError

FAST = ["trainer.epochs=1", "trainer.max_steps=3", "hydra.run.dir=r"]


def test_the_network_is_printed_in_the_log_file_and_on_the_screen_only_when_asked(tmp_path):
    out = run_snnexp("train", *FAST, "trainer.progress=false", cwd=tmp_path)
    assert "SpecNet(" not in out.stdout + out.stderr and "SpecNet(" in (tmp_path / "r" / "train.log").read_text()
    assert f"network: 22435 parameters on cpu (printed in {tmp_path / 'r' / 'train.log'}" in out.stdout
    out = run_snnexp("train", *FAST, "trainer.progress=false", "trainer.print_network=true", "hydra.run.dir=s",
                     cwd=tmp_path)
    assert "SpecNet(" in out.stdout


def on_a_terminal(args, cwd) -> str:
    """`python -m snnexp *args` with a pseudo-terminal as its output (tqdm draws bars only there): all it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    proc = subprocess.Popen([sys.executable, "-m", "snnexp", *args], cwd=cwd, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the process ended and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_training_validation_test_and_eval_passes_show_progress_on_a_terminal(tmp_path):
    shown = on_a_terminal(["train", *FAST, "dataset.val_fraction=0.1"], tmp_path)
    for bar in ("epoch 1/1:", "validation:", "test:"):
        assert bar in shown, bar
    shown = on_a_terminal(["eval", "checkpoint=r/checkpoints/last.pt", "hydra.run.dir=e"], tmp_path)
    assert "test:" in shown and "test_acc" in shown


# ------------------------------------------------------------------------------------------------ strict keys

@pytest.mark.parametrize("args, says", [
    (["+trainer.epoch=3"], "+trainer.epoch: trainer takes no key 'epoch', so nothing would read it; did you mean "
                           "trainer.epochs?"),
    (["trainer.epoch=3"], "trainer.epoch: trainer has no key 'epoch'; did you mean trainer.epochs?"),
    (["+neuron.foo=1"], "+neuron.foo: neuron (PLIF) takes no key 'foo'"),
    (["neuron=lif", "+neuron.tau0=2"], "neuron (LIF) takes no key 'tau0', so nothing would read it; did you mean "
                                       "neuron.tau?"),
    (["+optim.bogus=1"], "+optim.bogus: optim (Adam) takes no key 'bogus'"),
    (["+foo=1"], "+foo: the config takes no key 'foo'"),
    (["neuron=plf"], "neuron=plf: no such option; did you mean neuron=plif? (neuron's options: alif, if, lif, "
                     "masked_psn, plif, psn, sliding_psn, stbp;"),
    (["-m", "neuron=lif,plf"], "neuron=plf: no such option; did you mean neuron=plif?"),  # every value of a sweep
    (["nueron=lif"], "nueron: snnexp train has no config group or key 'nueron'; did you mean neuron?"),
    (["neuron.tau=3.0"], "neuron.tau: neuron (PLIF) has no key 'tau'; did you mean neuron.tau0?; neuron=alif, "
                         "neuron=lif have it"),
    (["dataset.val_fractio=0.1"], "did you mean dataset.val_fraction?"),
])
def test_an_unknown_key_group_or_option_is_named_with_the_closest_match(args, says):
    with pytest.raises(ConfigError) as err:
        keys.check("train", args)
    assert says in str(err.value)


@pytest.mark.parametrize("args", [
    ["+optim.betas=[0.9,0.99]"],  # Adam takes it, the config does not set it
    ["+paper.test_acc=0.9"],  # read by the run (a reproduction's published accuracy)
    ["neuron=lif", "neuron.tau=3.0"],
    ["-m", "neuron=lif,plif", "trainer.T=2,4"],
    ["+hydra.job.env_set.X=1"],  # Hydra's own settings are Hydra's
])
def test_what_exists_passes(args):
    keys.check("train", args)


def test_the_command_stops_at_a_typo_with_one_line(tmp_path):
    out = run_snnexp("train", "+trainer.epoch=3", cwd=tmp_path, check=False)
    assert out.returncode == 2 and "did you mean trainer.epochs?" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "outputs").exists()
    out = run_snnexp("train", "neuron=plf", cwd=tmp_path, check=False)
    assert out.returncode == 2 and "did you mean neuron=plif?" in out.stderr
