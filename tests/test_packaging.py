"""conf/ must travel with the package: a built wheel finds its configs without the repository."""

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


def test_wheel_carries_every_config_and_finds_it(tmp_path):
    pytest.importorskip("hatchling", reason="the dev extra installs hatchling to build the wheel")
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path / "dist")],
                   cwd=REPO, check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("snnexp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml in (REPO / "conf").rglob("*.yaml"):
        assert f"snnexp/conf/{yaml.relative_to(REPO / 'conf').as_posix()}" in names
    # unpack it away from the repository and run the CLI from there
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", "import snnexp.cli as c; print(c.__file__); print(c.conf_dir())"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(site / "snnexp" / "cli.py"), str(site / "snnexp" / "conf")]
    out = subprocess.run([sys.executable, "-m", "snnexp", "train", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "neuron: alif, if, lif, masked_psn, plif, psn, sliding_psn, stbp" in out
