"""make gpu-check: test and benchmark snnexp's CUDA path on a GPU machine that reaches no package registry.

    python bench/gpu_check.py prepare      here, where the package registries are reachable
    python3 bench/gpu_check.py run         there (and here: the checks that need no GPU)

`prepare` downloads into gpu-wheels/ (git-ignored) the wheels that such a machine lacks, for its Python (3.12,
cp312) and platform (manylinux x86_64): the GPU machine is taken to hold PyTorch with CUDA and Triton, torchvision,
TensorBoard, h5py and numpy, and nothing else of snnexp's needs. WHEELS lists what the check really imports: snnexp's
own dependencies for training on the built-in digits (scikit-learn and scipy only read that dataset), SpikingJelly
for the benchmarks, pytest for the tests, and hatchling to install snnexp in place. Each at the version this venv
holds, which is the version the tests pass with here. antlr4-python3-runtime is published as source only; its wheel
(pure Python) is built here.

`run` makes a venv beside the repository (.gpu-venv, with the machine's own packages visible: its PyTorch and
Triton), installs from gpu-wheels/ the packages the machine lacks, offline and with no dependency resolution
(`pip install --no-index --no-deps`), installs snnexp itself in place (`-e .`), and runs, within about 8 minutes:
  1. the CUDA and Triton tests: tests/test_cuda.py (the Triton kernel on the hardware, the check that
     tests/test_fused.py runs here in Triton's interpreter; the neuron modules and the default convnet on CUDA
     against the CPU; AMP with float16);
  2. `snnexp train trainer.device=cuda` on the built-in digits, with and without trainer.amp=true, and with
     model=spikformer;
  3. the neuron-op benchmark (bench/bench_neuron.py) and the convnet training-step benchmark
     (bench/bench_train_step.py) against SpikingJelly on the GPU;
and prints one table: each check's result, samples/s, the ratio against SpikingJelly, the peak GPU memory.
Where no GPU is found, `run` checks what it can without one (every package has a cp312 wheel in the folder; the
wheels install offline into a fresh venv of Python 3.12 when one is found here) and says that no GPU was found.

Standard library only at the top: on the GPU machine this script runs before anything is installed.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEEL_DIR = REPO / "gpu-wheels"
VENV = REPO / ".gpu-venv"
TARGET = {"python": "3.12", "abi": "cp312",
          "platforms": ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                        "manylinux2014_x86_64", "manylinux1_x86_64"]}
WHEELS = [
    # snnexp itself: configs, the command line, the frame cache's lock, progress bars, the built-in digits
    "hydra-core", "omegaconf", "antlr4-python3-runtime", "PyYAML", "filelock", "tqdm",
    "scikit-learn", "scipy", "joblib", "threadpoolctl",
    # the benchmarks' peer, and what it imports beyond PyTorch and numpy
    "spikingjelly", "loguru",
    # the tests
    "pytest", "iniconfig", "pluggy", "packaging", "Pygments",
    # `pip install -e .` without fetching the build backend
    "hatchling", "editables", "pathspec", "trove-classifiers",
]
SOURCE_ONLY = {"antlr4-python3-runtime"}  # no wheel on the index: built here
LIMIT_MIB = 64  # what a copy to the GPU machine may carry beside the repository
BUDGET_S = 8 * 60  # the whole run on the GPU
STEP_TIMEOUT_S = {"tests": 240, "train": 120, "neuron": 180, "step": 150}


# ----------------------------------------------------------------------------------------------- here: prepare

def pinned(name: str) -> str:
    """name==the version this venv holds (what the tests pass with), or the name alone if it is not installed."""
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def prepare(wheels: Path) -> int:
    if wheels.exists():  # two versions of one package would stop the offline install
        shutil.rmtree(wheels)
    wheels.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    binary = [pinned(n) for n in WHEELS if n not in SOURCE_ONLY]
    platforms = [arg for p in TARGET["platforms"] for arg in ("--platform", p)]
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", TARGET["python"],
                    "--implementation", "cp", *platforms, "-d", str(wheels), *binary], check=True)
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), *(pinned(n) for n in SOURCE_ONLY)], check=True)
    size = sum(p.stat().st_size for p in wheels.glob("*.whl")) / 2**20
    print(f"{wheels}: {len(list(wheels.glob('*.whl')))} wheels, {size:.1f} MiB (limit {LIMIT_MIB} MiB)")
    missing = missing_wheels(wheels)
    if missing or size > LIMIT_MIB:
        print(f"gpu-check: {'no cp312 wheel of ' + ', '.join(missing) if missing else f'over {LIMIT_MIB} MiB'}",
              file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------- the wheels in the folder

def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_tags(filename: str):
    """(distribution, python tag, abi tag, platform tag) of a wheel's file name (PEP 427), or None."""
    parts = filename[:-len(".whl")].split("-") if filename.endswith(".whl") else []
    if len(parts) not in (5, 6):
        return None
    return _canonical(parts[0]), parts[-3], parts[-2], parts[-1]


def fits_target(py: str, abi: str, platform: str) -> bool:
    """A wheel that pip installs on CPython 3.12, manylinux x86_64."""
    pure = platform == "any" and abi == "none" and any(t in ("py3", "py312", "cp312") for t in py.split("."))
    native = abi in ("cp312", "abi3") and any(p in TARGET["platforms"] for p in platform.split("."))
    return pure or native


def missing_wheels(wheels: Path) -> list:
    """The packages of WHEELS without a wheel in `wheels` that installs on the GPU machine."""
    have = {tags[0] for f in os.listdir(wheels) if (tags := wheel_tags(f)) and fits_target(*tags[1:])} \
        if wheels.is_dir() else set()
    return [name for name in WHEELS if _canonical(name) not in have]


# --------------------------------------------------------------------------------------------- there: the run

def find_python312():
    """A Python 3.12 on this machine (the GPU machine's version) that runs, or None."""
    candidates = [shutil.which("python3.12"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/"
                                                                                    "python3.12")), reverse=True)]
    for python in filter(None, candidates):  # a pyenv shim of a version not selected is found, but fails
        if subprocess.run([python, "--version"], capture_output=True).returncode == 0:
            return python
    return None


def offline_install(python: str, wheels: Path, venv: Path, system_site: bool, only_missing: bool):
    """Make `venv` with `python` and install the wheels offline, without dependency resolution: (ok, what it says).
    `system_site`: the venv sees the packages `python` sees (the GPU machine's PyTorch and Triton); `only_missing`:
    leave out packages it already sees."""
    code, out = _run([python, "-m", "venv", *(["--system-site-packages"] if system_site else []), str(venv)], 120)
    if code != 0:
        return False, f"{python} -m venv: {_last_line(out)}"
    vpy = str(venv / "bin" / "python")
    if system_site:
        _see_packages_of(python, vpy)
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    if only_missing:
        present = subprocess.run([vpy, "-c", "import sys, importlib.metadata as m\nfor n in sys.argv[1:]:\n"
                                  "  try: m.version(n); print(n)\n  except m.PackageNotFoundError: pass", *WHEELS],
                                 capture_output=True, text=True).stdout.split()
        skip = {_canonical(n) for n in present}
        files = [f for f in files if wheel_tags(Path(f).name)[0] not in skip]
    if not files:
        return True, "nothing to install: every package is there"
    code, out = _run([vpy, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps",
                      *files], 300)
    if code != 0:
        return False, _last_line(out)
    return True, f"{len(files)} wheels installed offline, no dependency resolution"


def _see_packages_of(python: str, vpy: str) -> None:
    """--system-site-packages shows a venv the base interpreter's packages; where `python` is itself a venv's (the
    GPU machine's python3 is), its own site-packages are added through a .pth file, after the new venv's own."""
    where = "import site, sys; print('\\n'.join(site.getsitepackages()))"
    theirs = subprocess.run([python, "-c", where], capture_output=True, text=True).stdout.split("\n")
    ours = subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True).stdout.strip()
    Path(ours, "gpu_machine_packages.pth").write_text("".join(f"{p}\n" for p in theirs if p.strip()))


def install_in_place(python: str) -> tuple:
    """snnexp itself, editable, offline: hatchling from the wheels builds it (no build isolation, nothing fetched)."""
    code, out = _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps",
                      "--no-build-isolation", "-e", "."], 120)
    return code == 0, "ok" if code == 0 else "FAILED: " + _last_line(out)


def _last_line(out: str) -> str:
    return (out.strip().splitlines() or ["no output"])[-1][:160]


def cuda_available() -> bool:
    """This Python's PyTorch sees a CUDA device (the GPU machine's python3 holds PyTorch; here, the venv's)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def cpu_side_checks(wheels: Path, python312) -> list:
    """What can be checked without a GPU: the folder's wheels, and an offline install with Python 3.12."""
    missing = missing_wheels(wheels)
    rows = [{"check": f"{wheels.name}/: a cp312 wheel of each of {len(WHEELS)} packages",
             "result": "ok" if not missing else "missing: " + ", ".join(missing)}]
    if missing:
        return rows
    if python312 is None:
        rows.append({"check": "offline install, Python 3.12", "result": "skipped: no Python 3.12 here"})
        return rows
    with tempfile.TemporaryDirectory() as tmp:
        ok, said = offline_install(python312, wheels, Path(tmp) / "venv", system_site=False, only_missing=False)
        vpy = str(Path(tmp) / "venv" / "bin" / "python")
        if ok:  # the pure-Python ones import (the compiled ones need the GPU machine's numpy)
            code, out = _run([vpy, "-c", "import hydra, omegaconf, yaml, filelock, tqdm, loguru, pytest"], 60)
            ok, said = code == 0, said if code == 0 else _last_line(out)
        rows.append({"check": f"offline install into a fresh venv of {python312}",
                     "result": "ok: " + said if ok else "FAILED: " + said})
        if ok:
            rows.append({"check": "pip install -e . there (snnexp in place, offline)",
                         "result": install_in_place(vpy)[1]})
    return rows


class Deadline:
    """The run's time budget: each step gets its own timeout, cut to what is left."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def timeout(self, step: str) -> float:
        return max(0.0, min(STEP_TIMEOUT_S[step], self.end - time.monotonic()))


def _run(cmd, timeout, env=None):
    """(exit code or None on timeout, stdout + stderr)."""
    if timeout <= 0:
        return None, "no time left in the budget"
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        return proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"


def run_tests(py: str, deadline: Deadline) -> dict:
    code, out = _run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                     deadline.timeout("tests"))
    summary = next((line for line in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|error)", line)),
                   out.strip().splitlines()[-1] if out.strip() else "no output")
    return {"check": "tests/test_cuda.py (Triton kernel, modules, convnet, AMP)",
            "result": ("ok: " if code == 0 else "FAILED: ") + summary.strip("= ")}


# snnexp train in a child Python that prints the allocator's peak when the run ends
TRAIN = ("import sys, torch\nfrom snnexp.cli import main\ncode = 0\ntry:\n    main(sys.argv[1:])\n"
         "except SystemExit as e:\n    code = e.code if isinstance(e.code, int) else 1\n"
         "print('GPU_PEAK_MIB', torch.cuda.max_memory_allocated() / 2**20)\nsys.exit(code)")


def run_train(py: str, amp: bool, deadline: Deadline, out_dir: Path, model: str = "") -> dict:
    """`model`: a model=... override (the spiking transformers' SpikeProduct and pools on the GPU); none: the
    default convnet."""
    run_dir = out_dir / f"train{'_amp' if amp else ''}{'_' + model if model else ''}"
    args = ["train", "trainer.device=cuda", f"trainer.amp={str(amp).lower()}", "trainer.epochs=3",
            "trainer.progress=false", f"hydra.run.dir={run_dir}"] + ([f"model={model}"] if model else [])
    code, out = _run([py, "-c", TRAIN, *args], deadline.timeout("train"))
    row = {"check": f"snnexp train trainer.device=cuda{' trainer.amp=true' if amp else ''}"
                    f"{' model=' + model if model else ''} (digits, 3 epochs)"}
    peak = re.search(r"GPU_PEAK_MIB ([\d.]+)", out)
    if code != 0 or not (run_dir / "metrics.json").is_file():
        return {**row, "result": "FAILED: " + _last_line(out)}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {**row, "result": f"ok: test acc {100 * metrics['test_acc']:.2f}%",
            "samples_per_s": metrics.get("train_samples_per_s"), "peak_mib": float(peak.group(1)) if peak else None}


def run_neuron_bench(py: str, deadline: Deadline) -> list:
    code, out = _run([py, "bench/bench_neuron.py", "--device", "cuda", "--repeats", "10", "--impls",
                      "snnexp fused", "SpikingJelly"], deadline.timeout("neuron"))
    results = REPO / "bench" / "results" / "neuron_cuda.json"
    if code != 0 or not results.is_file():
        return [{"check": "neuron op vs SpikingJelly (bench_neuron.py)",
                 "result": "FAILED: " + _last_line(out)}]
    rows = []
    for r in json.loads(results.read_text())["rows"]:
        ours, sj = r["snnexp fused"], r["SpikingJelly"]
        rows.append({"check": f"{r['neuron'].upper()} op {r['shape']} forward+backward",
                     "result": f"ok: {ours['ms']:.2f} ms (SpikingJelly {sj['ms']:.2f} ms)",
                     "vs_spikingjelly": sj["ms"] / ours["ms"], "peak_mib": ours.get("peak_mb")})
    return rows


def run_step_bench(py: str, deadline: Deadline) -> dict:
    code, out = _run([py, "bench/bench_train_step.py", "--device", "cuda", "--nets", "convnet", "--variants",
                      "snnexp default"], deadline.timeout("step"))
    results = REPO / "bench" / "results" / "train_step_convnet_cuda.json"
    row = {"check": "convnet training step vs SpikingJelly (bench_train_step.py)"}
    if code != 0 or not results.is_file():
        return {**row, "result": "FAILED: " + _last_line(out)}
    (net,) = json.loads(results.read_text())
    ours, sj = net["samples_per_s"]["snnexp default"], net["samples_per_s"]["SpikingJelly"]
    return {**row, "result": "ok", "samples_per_s": ours, "vs_spikingjelly": ours / sj,
            "peak_mib": net.get("peak_mb", {}).get("snnexp default")}


def gpu_run(wheels: Path) -> list:
    """On the GPU machine: install, then tests, training runs and benchmarks within BUDGET_S."""
    deadline = Deadline(BUDGET_S)
    if VENV.exists():
        shutil.rmtree(VENV)
    ok, said = offline_install(sys.executable, wheels, VENV, system_site=True, only_missing=True)
    rows = [{"check": "offline install of the packages this machine lacks", "result": ("ok: " if ok else "FAILED: ")
             + said}]
    py = str(VENV / "bin" / "python")
    in_place, said = install_in_place(py) if ok else (False, "skipped")
    rows.append({"check": "pip install -e . (snnexp in place)", "result": said})
    if not in_place:
        return rows
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(run_tests(py, deadline))
        rows += [run_train(py, amp, deadline, Path(tmp)) for amp in (False, True)]
        rows.append(run_train(py, False, deadline, Path(tmp), model="spikformer"))
    rows += run_neuron_bench(py, deadline)
    rows.append(run_step_bench(py, deadline))
    return rows


# --------------------------------------------------------------------------------------------------- the table

COLUMNS = [("check", "check", "{}"), ("result", "result", "{}"), ("samples_per_s", "samples/s", "{:.0f}"),
           ("vs_spikingjelly", "vs SpikingJelly", "x{:.2f}"), ("peak_mib", "peak GPU MiB", "{:.0f}")]


def format_table(rows: list) -> str:
    """One row per check, "-" where a column does not apply; ratios are SpikingJelly's time over ours (> 1: ours is
    faster)."""
    cells = [[title for _, title, _ in COLUMNS]]
    for row in rows:
        cells.append([fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def failed(rows: list) -> bool:
    return any(row["result"].startswith(("FAILED", "missing")) for row in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["prepare", "run"])
    ap.add_argument("--wheels", type=Path, default=WHEEL_DIR, help="the wheel folder (default: gpu-wheels/)")
    ap.add_argument("--python", default="auto", help="without a GPU: the Python 3.12 to try the offline install "
                    "with (auto: found on this machine; none: skip)")
    args = ap.parse_args(argv)
    if args.command == "prepare":
        return prepare(args.wheels)
    if not cuda_available():
        python312 = {"auto": find_python312(), "none": None}.get(args.python, args.python)
        rows = cpu_side_checks(args.wheels, python312)
        print(format_table(rows))
        print(f"\nno GPU found ({sys.executable}: torch.cuda.is_available() is not True): the CUDA tests and "
              f"benchmarks were not run. Copy the repository with {args.wheels.name}/ to a GPU machine and run "
              f"python3 bench/gpu_check.py run there.")
        return 1 if failed(rows) else 0
    start = time.monotonic()
    rows = gpu_run(args.wheels)
    print(format_table(rows))
    print(f"\n{_device_name()}; {time.monotonic() - start:.0f} s in all")
    return 1 if failed(rows) else 0


def _device_name() -> str:
    import torch

    return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"


if __name__ == "__main__":
    sys.exit(main())
