"""The command line's arguments beyond Hydra's own, handled before Hydra starts (torch-free, like cli.py):
`resume=true|PATH` turned into the overrides that reopen a run folder (its stored overrides checked by
snnexp.trust), the config folders a user adds (--config-dir), the output folder checked writable and not full, and
path values quoted for Hydra's override grammar."""

import os
import re
import shutil
import time
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from snnexp import conf_dir
from snnexp.errors import CheckpointError, ConfigError
from snnexp.trust import check_replayed


def task_overrides(args) -> list:
    """The overrides that define a run, as Hydra stores them: no flags, no hydra.* keys, no resume."""
    return sorted(a for a in args if "=" in a and not a.startswith(("-", "hydra.", "resume=", "+resume=")))


def stored_overrides(path: Path) -> list:
    """A run folder's overrides (.hydra/overrides.yaml: a list of strings), or CheckpointError saying what is wrong."""
    try:
        stored = yaml.safe_load(path.read_text()) or []
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CheckpointError(f"cannot read {path}: {getattr(e, 'strerror', None) or str(e).splitlines()[0]}") \
            from None
    if not isinstance(stored, list) or not all(isinstance(a, str) for a in stored):
        raise CheckpointError(f"{path} is not a list of overrides (Hydra writes one string per override)")
    return stored


def _matches(path: Path, wanted: list, read) -> bool:
    """Whether the overrides that `read(path)` finds are `wanted`; a file that cannot be read matches nothing."""
    try:
        return task_overrides(read(path)) == wanted
    except (CheckpointError, AttributeError, OmegaConfBaseException, yaml.YAMLError, OSError):
        return False


def user_config_dirs(args: list) -> list:
    """The config folders the user adds on this command line: --config-dir DIR (-cd DIR) and
    hydra.searchpath=[file://DIR, ...]."""
    dirs = []
    for i, a in enumerate(args):
        if a in ("--config-dir", "-cd") and i + 1 < len(args):
            dirs.append(args[i + 1])
        elif a.startswith("--config-dir="):
            dirs.append(a.split("=", 1)[1])
        elif a.lstrip("+").startswith("hydra.searchpath="):
            dirs += re.findall(r"file://([^,\]'\"]+)", a)
    return [Path(d).expanduser().resolve() for d in dirs]


# Hydra's flags that take the next argument as their value
VALUED_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn", "--experimental-rerun",
                "--cfg", "-c", "--package", "-p", "--shell-completion", "-sc")


def overrides_and_config_dirs(args: list) -> tuple:
    """(the overrides on a command line, without Hydra's flags and their values; the user's config folders), for
    snnexp.keys.check."""
    overrides = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] not in
                                                                             VALUED_FLAGS)]
    return overrides, user_config_dirs(args)


def resolve_resume(args: list) -> list:
    """resume=true / resume=PATH -> the overrides that make Hydra reopen the run (or sweep) directory. Hydra
    writes the resumed session's config to .hydra/resume-<time>/, so the run's own .hydra/ stays as it was."""
    value = next((a.split("=", 1)[1].strip("'\"") for a in args if a.startswith("resume=")), None)
    if value is None or value.lower() in ("null", "none", "false"):
        return args
    args = [*args, f"hydra.output_subdir=.hydra/resume-{time.strftime('%Y%m%d-%H%M%S')}"]
    if any(a.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for a in args):
        return args  # the user named the directory
    multirun = "-m" in args or "--multirun" in args
    outputs = Path("outputs")
    if value.lower() == "true":
        wanted = task_overrides(args)
        if multirun:
            found = [p.parent for p in outputs.glob("multirun/*/multirun.yaml")
                     if _matches(p, wanted, lambda f: list(OmegaConf.load(f).hydra.overrides.task))]
            key = "hydra.sweep.dir"
        else:
            found = [p.parents[1] for p in outputs.glob("**/.hydra/overrides.yaml")
                     if "multirun" not in p.parts and (p.parents[1] / "checkpoints" / "last.pt").is_file()
                     and _matches(p, wanted, stored_overrides)]
            key = "hydra.run.dir"
        if not found:
            kind = "sweep" if multirun else "run with a checkpoint"
            raise ConfigError(f"resume=true: no earlier {kind} under {outputs.resolve()} was made with these "
                              f"overrides ({' '.join(wanted) or 'none'}); give the run directory instead: resume=PATH")
        latest = max(found, key=lambda d: d.stat().st_mtime)
        return [*args, f"{key}={latest.resolve()}"]
    run_dir = Path(value).expanduser()
    if run_dir.is_file():  # .../checkpoints/last.pt
        run_dir = run_dir.parent.parent
    if not (run_dir / "checkpoints" / "last.pt").is_file() or not (run_dir / ".hydra" / "overrides.yaml").is_file():
        raise ConfigError(f"resume={value}: not a snnexp run directory with a checkpoint (expected "
                          f"{run_dir}/checkpoints/last.pt and {run_dir}/.hydra/overrides.yaml)")
    stored = run_dir / ".hydra" / "overrides.yaml"
    saved = [a for a in stored_overrides(stored) if not a.startswith(("resume=", "+resume="))]
    check_replayed(saved, stored, [conf_dir(), *user_config_dirs(args)])  # a run folder may come from elsewhere
    rest = [a for a in args if not a.startswith("resume=")]
    return [*saved, *rest, f"resume={run_dir.resolve()}", f"hydra.run.dir={run_dir.resolve()}"]


def check_writable(args: list) -> None:
    """Runs are written under outputs/ of the current directory (or hydra.run.dir / hydra.sweep.dir): say so
    now if that cannot be written, not as a traceback from deep inside Hydra or TensorBoard."""
    target = next((Path(a.split("=", 1)[1]) for a in args if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))),
                  Path("outputs"))
    existing = target.resolve()
    while not existing.exists():
        existing = existing.parent
    problem = f"{existing} is a file, not a folder" if not existing.is_dir() else \
        None if os.access(existing, os.W_OK | os.X_OK) else f"{existing} is not writable"
    if problem:
        raise ConfigError(f"cannot write the run directory {target.resolve()}: {problem}; start snnexp in a folder "
                          f"you can write to, or give hydra.run.dir=DIR")
    free = free_bytes(existing)
    if free < MIN_FREE:  # a full disk: said here, since Hydra's own writes (multirun.yaml, .hydra/) end in tracebacks
        raise ConfigError(f"cannot write the run directory {target.resolve()}: its disk is full ({free // 1024} KiB "
                          f"free at {existing}); free disk space, or give {_dir_key(args)}=DIR on a disk with room")


def _dir_key(args: list) -> str:
    """The override that moves this command's output folder."""
    return "hydra.sweep.dir" if "-m" in args or "--multirun" in args else "hydra.run.dir"


MIN_FREE = 64 * 1024  # bytes: less cannot hold Hydra's .hydra/*.yaml and the start of train.log


def free_bytes(folder: Path) -> float:
    """The bytes this user may still write on `folder`'s disk (inf where the file system does not say)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return float("inf")


# keys whose values are paths: a sweep job's folder is named by its overrides (.../neuron=lif,trainer.T=8/...), and
# Hydra's override grammar reads '=' or ',' in a bare value as syntax, so such a value is passed quoted
PATH_KEYS = ("checkpoint", "out", "resume", "hydra.run.dir", "hydra.sweep.dir", "dataset.data_dir", "dataset.cache_dir")


def quote_path(arg: str) -> str:
    key, eq, value = arg.partition("=")
    if not eq or key not in PATH_KEYS or value[:1] in ("'", '"') or not re.search(r"[=,\s\[\]{}()]", value):
        return arg
    return f"{key}='{value}'" if "'" not in value and "\\" not in value else arg
