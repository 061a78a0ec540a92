"""`snnexp compare PATH...`: one table of the runs under the given folders, as text, CSV and Markdown.

A run is a folder with `.hydra/overrides.yaml` (what `snnexp` leaves). By default the table lists training runs,
finished and unfinished alike: a run still training (or stopped) shows the epochs it has done, so the table works on
a sweep in progress. Folders that trained nothing are left out unless `--all` is given: `snnexp eval` and `snnexp
export` folders, and runs refused before training (a bad setting: their folder has no run_info.json, which a
training session writes when it starts).

The printed table (report/columns.py) fits 120 characters: the overrides that differ between the runs (those alike
are printed once, above it), the best and final test accuracy (and the validation-chosen one where a run has it),
the epochs done and samples/s. Runs that differ only in trainer.seed make one row: the mean ± the sample standard
deviation of each accuracy, the mean of the other numbers, and n (`--no-group`: a row per run). `--columns` picks
other columns, `--columns all` every one. compare.csv and compare.md keep every column, a row per run; compare.txt
is the printed table. A sweep (`snnexp train -m`) ends with this table of its runs (report/sweep.py).
"""

import argparse
import csv
import io
import json
import reprlib
import sys
from pathlib import Path
from statistics import mean
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml  # PyYAML, which omegaconf and Hydra require

from snnexp.errors import CheckpointError, CompareError
from snnexp.report.columns import (
    ACCURACIES,
    COLUMNS,
    COST,
    HEADERS,
    NUMERIC,
    as_text,
    choose_columns,
    fmt,
    group,
    settings,
    sort_rows,
)

# the numbers the table reads from metrics.json (firing_rate, one per layer, is checked on its own)
NUMBERS_READ = ["epoch", *ACCURACIES, "wall_s", "train_samples_per_s", "spikes_per_sample", *COST]


def find_runs(paths: List[Path]) -> Dict[Path, Path]:
    """Every run under the given folders -> the folder it was found under."""
    runs = {}
    for root in paths:
        if not root.exists():
            raise CompareError(f"{root} does not exist")
        for marker in [root / ".hydra" / "overrides.yaml", *root.rglob(".hydra/overrides.yaml")]:
            if _present(marker):  # a folder of that name too: a damaged run, which row() reports
                runs.setdefault(marker.parent.parent.resolve(), root.resolve())
    return dict(sorted(runs.items()))


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()  # a broken link is a damaged file, not a missing one


def _read(path: Path, parse: Callable[[str], Any]) -> Any:
    """A run file, parsed; a CheckpointError that names the file and what is wrong with it."""
    try:
        return parse(path.read_text())
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a file") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not text: damaged, or not written by snnexp") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CheckpointError(f"{path} is not valid YAML: {getattr(e, 'problem', None) or e}{where}") from None
    except ValueError as e:  # json's errors, and its refusal of an integer of over 4300 digits
        raise CheckpointError(f"{path} is not valid JSON (truncated or damaged): {e}") from None


def _is_number(value) -> bool:
    """A finite JSON number. json reads NaN and Infinity too, which would sort anywhere, and integers too large for a
    float, which the formatting cannot print: the comparison with the largest float is False for all three."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def _metrics(run: Path) -> Dict:
    """metrics.json, checked: an object whose numbers the table reads are numbers or absent (null counts as absent)."""
    path = run / "metrics.json"
    if not _present(path):
        return {}  # a run still in its first epoch
    metrics = _read(path, json.loads)
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{path} holds {reprlib.repr(metrics)}, not an object of metrics (name: value)")
    for key in NUMBERS_READ:
        if metrics.get(key) is not None and not _is_number(metrics[key]):
            raise CheckpointError(f"{path}: {key} is {reprlib.repr(metrics[key])}, not a number")
    rates = metrics.get("firing_rate") or {}
    if not isinstance(rates, dict) or not all(_is_number(v) for v in rates.values()):
        raise CheckpointError(f"{path}: firing_rate is {reprlib.repr(rates)}, not a number per layer")
    return metrics


def _trainer(run: Path, keys=("epochs", "max_steps")) -> Dict[str, Optional[int]]:
    """trainer.epochs and trainer.max_steps in the run's .hydra/config.yaml, read once; None where absent (an eval
    folder has no trainer.epochs, most runs no max_steps)."""
    path = run / ".hydra" / "config.yaml"
    if not _present(path):
        return dict.fromkeys(keys)
    cfg = _read(path, yaml.safe_load)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} holds {reprlib.repr(cfg)}, not a mapping of settings")
    trainer = cfg.get("trainer") or {}
    if not isinstance(trainer, dict):
        raise CheckpointError(f"{path}: trainer is {reprlib.repr(trainer)}, not a group of settings")
    for key in keys:
        value = trainer.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise CheckpointError(f"{path}: trainer.{key} is {reprlib.repr(value)}, not a whole number")
    return {key: trainer.get(key) for key in keys}


def _overrides(run: Path) -> List[str]:
    """The run's overrides (key=value), sorted; resume=, Hydra's own and trainer.progress left out."""
    path = run / ".hydra" / "overrides.yaml"
    items = _read(path, yaml.safe_load) or []  # Hydra writes [] for none; an empty file means none too
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise CheckpointError(f"{path} holds {reprlib.repr(items)}, not a list of overrides (key=value)")
    return sorted(i for i in items if not i.startswith(("resume=", "hydra.", "trainer.progress")))


def _progress(run: Path, metrics: Dict, epochs: Optional[int], max_steps: Optional[int]) -> Tuple[str, str]:
    """The run's status, and its epochs column: the epochs done out of trainer.epochs ('1/15' for a run still
    training), 'max_steps=N' for a run stopped by trainer.max_steps as asked."""
    done, step = metrics.get("epoch") or 0, metrics.get("step")  # epoch null: none done
    if not metrics:  # a run still in its first epoch, or one refused before training
        return ("started", f"0/{epochs}") if _present(run / "run_info.json") else ("not started", "not started")
    if "checkpoint" in metrics:  # snnexp eval's folder: one test pass of a checkpoint
        return "eval", "eval"
    if epochs is not None and done >= epochs:
        return "done", f"{done}/{epochs}"
    if max_steps is not None and isinstance(step, int) and step >= max_steps:  # stopped as asked: finished
        return f"done: max_steps={max_steps}", f"max_steps={max_steps}"
    return f"{done}/{epochs} epochs", f"{done}/{epochs}"


def row(run: Path, base: Optional[Path] = None) -> Dict:
    """One run's line: what metrics.json says so far (nothing yet for a run still in its first epoch), and its
    overrides as `settings` (key -> value). A run file that cannot be read, or holds what snnexp does not write,
    raises CheckpointError naming it."""
    metrics, trainer = _metrics(run), _trainer(run)
    status, epochs = _progress(run, metrics, trainer["epochs"], trainer["max_steps"])
    rates = metrics.get("firing_rate") or {}
    overrides = _overrides(run)
    name = str(run.relative_to(base)) if base is not None and run != base and run.is_relative_to(base) else str(run)
    return {
        "run": name,
        "overrides": " ".join(overrides),
        "settings": settings(overrides),
        "n": 1,
        "status": status,
        "epochs": epochs,
        "epoch": metrics.get("epoch"),
        **{key: metrics.get(key) for key in ACCURACIES},
        "wall_s": metrics.get("wall_s"),
        "samples_per_s": metrics.get("train_samples_per_s"),
        "firing_rate": mean(rates.values()) if rates else None,
        "spikes_per_sample": metrics.get("spikes_per_sample"),  # per test sample
        **{key: metrics.get(key) for key in COST},
    }


def table(paths: List[Path], sort: str = "best_test_acc", ascending: bool = False, everything: bool = False
          ) -> List[Dict]:
    """The rows of the runs under `paths`, sorted; with `everything`, also the folders that trained nothing."""
    if sort not in COLUMNS:
        raise CompareError(f"cannot sort by '{sort}': use one of {', '.join(COLUMNS)}")
    where = ", ".join(map(str, paths))
    runs = find_runs(paths)
    if not runs:
        raise CompareError(f"no snnexp runs under {where} (a run has .hydra/overrides.yaml)")
    rows, skipped = _rows(runs, several=len(paths) > 1)
    left_out = [] if everything else [r for r in rows if r["status"] in ("eval", "not started")]
    rows = [r for r in rows if r not in left_out]
    if not rows and left_out:
        raise CompareError(f"no training runs under {where}: {len(left_out)} folder(s) of snnexp eval or export, or "
                           "of runs refused before training; --all lists them")
    if not rows:
        more = f"; and {len(skipped) - 1} more, in the warnings above" if len(skipped) > 1 else ""
        raise CompareError(f"no runs to compare under {where}: {len(skipped)} found, skipped for a damaged file "
                           f"({skipped[0]}{more})")
    return sort_rows(rows, sort, ascending)


def _rows(runs: Dict[Path, Path], several: bool):
    """The runs' lines, and what was wrong with each run skipped: a damaged run is reported on stderr and left out,
    so that one bad folder in a sweep does not hide the others."""
    rows, skipped = [], []
    for run, base in runs.items():
        try:
            r = row(run, base)  # named relative to the folder given
        except CheckpointError as e:
            print(f"snnexp: warning: skipping a run: {e}", file=sys.stderr)
            skipped.append(str(e))
            continue
        if several and not Path(r["run"]).is_absolute():  # and which of the folders
            r["run"] = f"{base.name}/{r['run']}"
        rows.append(r)
    return rows, skipped


def as_markdown(rows: List[Dict]) -> str:
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in COLUMNS) + " |",
             "|" + "|".join("---:" if c in NUMERIC else "---" for c in COLUMNS) + "|"]
    lines += ["| " + " | ".join(fmt(c, r[c]).replace("|", "\\|") for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


# A spreadsheet takes a cell that begins with one of these as a formula (tab and carriage return: some strip them
# first), so an override or folder name such as `+cmd|' /C calc'!A0` or `=HYPERLINK(...)` would run when compare.csv
# is opened. OWASP's advice on CSV injection: a quote in front makes the cell text.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value):
    """Text cells escaped; numbers left as they are: a number (a value of -0.5) is never a formula, and the numeric
    columns hold numbers only (_metrics checks them), so they stay numbers in the spreadsheet. A real override that
    begins with + (`+trainer.x=1`) shows its quote, the price of never running one."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def as_csv(rows: List[Dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")  # not n, settings
    writer.writeheader()
    writer.writerows({key: _csv_cell(value) for key, value in r.items()} for r in rows)
    return out.getvalue()


def write(rows: List[Dict], out: Path, text: Optional[str] = None) -> None:
    """compare.csv and compare.md (every column, a row per run) into `out`, and the printed table as compare.txt;
    a CompareError if the folder cannot take them."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.csv").write_text(as_csv(rows), encoding="utf-8")
        (out / "compare.md").write_text(as_markdown(rows) + "\n", encoding="utf-8")
        if text is not None:
            (out / "compare.txt").write_text(text + "\n", encoding="utf-8")
    except OSError as e:
        reason = e.strerror or e
        raise CompareError(f"cannot write the table into {out}: {reason} (choose another folder with --out)") from None


def wrote(out: Path) -> str:
    return f"wrote compare.csv, compare.md and compare.txt into {out}"


def summary(paths: List[Path], sort: str = "best_test_acc", ascending: bool = False, everything: bool = False,
            columns: Optional[str] = None, grouped: bool = True) -> Tuple[List[Dict], str]:
    """The rows of the runs under `paths` (one per run, for the files) and the table as printed: runs that differ
    only in trainer.seed merged unless not `grouped`, the columns `columns` names (None: the default set), and a
    line that counts the runs."""
    rows = table(paths, sort, ascending, everything)
    shown = sort_rows(group(rows), sort, ascending) if grouped else rows
    text = as_text(shown, choose_columns(shown, columns, grouped), grouped)
    merged = f" in {len(shown)} rows: runs that differ only in trainer.seed are merged (--no-group lists each)" \
        if len(shown) < len(rows) else ""
    return rows, f"{text}\n\n{len(rows)} runs{merged}"


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(prog="snnexp compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path, help="run or sweep folders (e.g. outputs/multirun/2026-...)")
    ap.add_argument("--sort", default="best_test_acc", help=f"column to sort by: {', '.join(COLUMNS)}")
    ap.add_argument("--ascending", action="store_true", help="smallest first (default: largest first)")
    ap.add_argument("--columns", help="the columns to print, separated by commas, or 'all' (default: the overrides "
                                      "that differ, n, the accuracies, epochs and samples/s); the columns above, n, "
                                      "and override keys such as trainer.T")
    ap.add_argument("--no-group", action="store_true", help="a row per run (default: runs that differ only in "
                                                             "trainer.seed in one row, mean ± std and n)")
    ap.add_argument("--out", type=Path, help="write compare.csv, compare.md (every column, a row per run) and "
                                             "compare.txt (the printed table) here (default: the first path)")
    ap.add_argument("--all", action="store_true", help="also the folders that trained nothing (snnexp eval and "
                                                         "export folders, runs refused before training)")
    args = ap.parse_args(argv)
    # CompareError: reported by the CLI
    rows, text = summary(args.paths, args.sort, args.ascending, args.all, args.columns, not args.no_group)
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else Path("."))
    write(rows, out, text)
    print(text)
    print(wrote(out))
    return 0
