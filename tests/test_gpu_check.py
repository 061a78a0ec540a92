"""bench/gpu_check.py (make gpu-check) where no GPU is: its arguments, the wheels it accepts for the GPU machine,
the offline install into a venv that sees the machine's own packages, the table, and the message without CUDA.
The GPU half (tests/test_cuda.py, the training runs, the benchmarks) runs on a GPU machine."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402

SCRIPT = REPO / "bench" / "gpu_check.py"
PURE = "py3-none-any"
NATIVE = "cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64"


def fake_wheels(folder: Path, skip=(), tags=None) -> Path:
    """Empty files named as wheels of every package gpu_check needs (but `skip`), with `tags` for some."""
    folder.mkdir(exist_ok=True)
    for name in gpu_check.WHEELS:
        if name not in skip:
            tag = (tags or {}).get(name, PURE)
            (folder / f"{name.replace('-', '_')}-1.0-{tag}.whl").write_bytes(b"")
    return folder


def real_wheel(folder: Path, name: str) -> Path:
    """A minimal installable wheel of a module `name` that defines VALUE = 42."""
    path = folder / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"{name}.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def test_the_table_has_a_column_per_figure_and_a_dash_where_none_applies():
    rows = [{"check": "tests", "result": "ok: 6 passed"},
            {"check": "convnet step", "result": "ok", "samples_per_s": 12345.6, "vs_spikingjelly": 3.456,
             "peak_mib": 812.4}]
    lines = gpu_check.format_table(rows).splitlines()
    assert lines[0].split("  ")[0] == "check" and "vs SpikingJelly" in lines[0] and "peak GPU MiB" in lines[0]
    assert set(lines[1]) == {"-", " "} and len(lines) == 4
    assert lines[2].split() == ["tests", "ok:", "6", "passed", "-", "-", "-"]
    assert lines[3].split()[-3:] == ["12346", "x3.46", "812"]
    starts = [lines[0].index(title) for title in ("samples/s", "vs SpikingJelly", "peak GPU MiB")]
    assert [lines[3].index(cell) for cell in ("12346", "x3.46", "812")] == starts  # aligned under the titles


@pytest.mark.parametrize("name, tags, fits", [
    ("hydra-core", PURE, True), ("PyYAML", NATIVE, True), ("PyYAML", "cp312-abi3-manylinux_2_28_x86_64", True),
    ("scipy", "cp311-cp311-manylinux_2_17_x86_64", False), ("scipy", "cp312-cp312-macosx_11_0_arm64", False),
    ("scipy", "cp312-cp312-manylinux_2_17_aarch64", False), ("loguru", "py2-none-any", False)])
def test_a_wheel_counts_only_when_pip_installs_it_on_the_gpu_machine(tmp_path, name, tags, fits):
    fake_wheels(tmp_path / "w", tags={name: tags})
    assert gpu_check.missing_wheels(tmp_path / "w") == ([] if fits else [name])


def test_arguments_are_checked():
    for args in ([], ["bogus"], ["run", "--wheels"]):
        proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
        assert proc.returncode == 2 and "usage: gpu_check.py" in proc.stderr


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")


@NO_CUDA
def test_without_cuda_it_checks_the_wheels_and_says_no_gpu_was_found(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "run", "--wheels", str(fake_wheels(tmp_path / "w")),
                           "--python", "none"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "w/: a cp312 wheel of each of 21 packages  ok" in proc.stdout
    assert "skipped: no Python 3.12 here" in proc.stdout
    assert "no GPU found" in proc.stdout and "the CUDA tests and benchmarks were not run" in proc.stdout

@NO_CUDA
def test_a_missing_wheel_is_named(tmp_path, capsys):
    assert gpu_check.main(["run", "--wheels", str(fake_wheels(tmp_path / "v", ["scipy"])), "--python", "none"]) == 1
    out = capsys.readouterr().out
    assert "missing: scipy" in out and "no GPU found" in out


def test_the_venv_sees_the_machines_packages_and_gets_only_the_missing_ones(tmp_path):
    """The GPU machine's python3 is itself a venv's: the check's venv must see its PyTorch (here: this venv's) and
    install from the folder only what it lacks."""
    wheels = tmp_path / "w"
    wheels.mkdir()
    real_wheel(wheels, "gpucheck_probe")
    ok, said = gpu_check.offline_install(sys.executable, wheels, tmp_path / "venv", system_site=True, only_missing=True)
    assert ok and said.startswith("1 wheels installed offline"), said
    code = "import torch, hydra, gpucheck_probe; print(gpucheck_probe.VALUE, torch.__version__)"
    proc = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.split() == ["42", torch.__version__], proc.stderr
