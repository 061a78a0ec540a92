"""What a new user meets in the first hour (issue 32): the screen shows progress and results, not the network's
printout; every pass over the data shows a progress bar on a terminal."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from conftest import run_snnexp

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
