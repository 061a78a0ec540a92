"""`snnexp compare PATH...`: one table of the runs under the given folders, as text, CSV and Markdown.

A run is any folder with `.hydra/overrides.yaml` (what `snnexp train` leaves). Finished and unfinished
runs alike: a run still training (or stopped) shows the epochs it has done, so the table works on a sweep
in progress.
"""

import argparse
import csv
import io
import json
from pathlib import Path
from statistics import mean
from typing import Dict, List, Optional

from omegaconf import OmegaConf

from snnexp.errors import CompareError

# NeuroBench's set and the energy estimate, per test sample (snnexp.activity, snnexp.cost): metrics.json keys; runs
# written before they existed leave them empty
COST = ["activation_sparsity", "effective_acs_per_sample", "effective_macs_per_sample", "dense_ops_per_sample",
        "energy_per_sample_pj", "parameter_count", "footprint_bytes", "connection_sparsity"]
COLUMNS = ["run", "overrides", "status", "epoch", "best_test_acc", "test_acc", "wall_s", "samples_per_s",
           "firing_rate", "spikes_per_sample", *COST]
NUMERIC = {"epoch", "best_test_acc", "test_acc", "wall_s", "samples_per_s", "firing_rate", "spikes_per_sample", *COST}



def find_runs(paths: List[Path]) -> Dict[Path, Path]:
    """Every run under the given folders -> the folder it was found under."""
    runs = {}
    for root in paths:
        if not root.exists():
            raise CompareError(f"{root} does not exist")
        for marker in [root / ".hydra" / "overrides.yaml", *root.rglob(".hydra/overrides.yaml")]:
            if marker.is_file():
                runs.setdefault(marker.parent.parent.resolve(), root.resolve())
    return dict(sorted(runs.items()))


def _overrides(run: Path) -> str:
    items = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "overrides.yaml")) or []
    return " ".join(sorted(i for i in items if not i.startswith(("resume=", "hydra.", "trainer.progress"))))


def row(run: Path, base: Optional[Path] = None) -> Dict:
    """One run's line: what metrics.json says so far (nothing yet for a run still in its first epoch)."""
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    cfg_path = run / ".hydra" / "config.yaml"
    epochs = OmegaConf.select(OmegaConf.load(cfg_path), "trainer.epochs") if cfg_path.is_file() else None
    rates = metrics.get("firing_rate") or {}
    if not metrics:
        status = "started"
    elif "checkpoint" in metrics:  # snnexp eval's folder: one test pass of a checkpoint
        status = "eval"
    elif epochs is not None and metrics.get("epoch", 0) >= epochs:
        status = "done"
    else:
        status = f"{metrics.get('epoch', 0)}/{epochs} epochs"
    name = str(run.relative_to(base)) if base is not None and run != base and run.is_relative_to(base) else str(run)
    return {
        "run": name,
        "overrides": _overrides(run),
        "status": status,
        "epoch": metrics.get("epoch"),
        "best_test_acc": metrics.get("best_test_acc"),
        "test_acc": metrics.get("test_acc"),
        "wall_s": metrics.get("wall_s"),
        "samples_per_s": metrics.get("train_samples_per_s"),
        "firing_rate": mean(rates.values()) if rates else None,
        "spikes_per_sample": metrics.get("spikes_per_sample"),  # per test sample
        **{key: metrics.get(key) for key in COST},
    }


def table(paths: List[Path], sort: str = "best_test_acc", ascending: bool = False) -> List[Dict]:
    if sort not in COLUMNS:
        raise CompareError(f"cannot sort by '{sort}': use one of {', '.join(COLUMNS)}")
    runs = find_runs(paths)
    if not runs:
        raise CompareError(f"no snnexp runs under {', '.join(map(str, paths))} (a run has .hydra/overrides.yaml)")
    rows = [row(run, base) for run, base in runs.items()]  # named relative to the folder given
    if len(paths) > 1:  # and which of the folders
        for r, base in zip(rows, runs.values()):
            if not Path(r["run"]).is_absolute():
                r["run"] = f"{base.name}/{r['run']}"
    present = [r for r in rows if r[sort] is not None]
    missing = [r for r in rows if r[sort] is None]
    present.sort(key=lambda r: r[sort], reverse=not ascending)
    return present + missing  # runs without the value (not started) go last either way


def _fmt(key, value) -> str:
    if value is None:
        return ""
    if key in ("best_test_acc", "test_acc"):
        return f"{100 * value:.2f}"
    if key == "firing_rate":
        return f"{value:.4f}"
    if key in ("wall_s", "samples_per_s"):
        return f"{value:.1f}"
    if key in ("spikes_per_sample", "effective_acs_per_sample", "effective_macs_per_sample", "dense_ops_per_sample",
               "parameter_count", "footprint_bytes"):
        return f"{value:.0f}"
    if key == "energy_per_sample_pj":
        return f"{value / 1e6:.4g}"  # microjoules
    if key in ("activation_sparsity", "connection_sparsity"):
        return f"{value:.4f}"
    return str(value)


HEADERS = {"best_test_acc": "best acc %", "test_acc": "final acc %", "wall_s": "wall s", "samples_per_s": "samples/s",
           "firing_rate": "mean rate", "spikes_per_sample": "spikes/sample", "activation_sparsity": "act. sparsity",
           "effective_acs_per_sample": "ACs/sample", "effective_macs_per_sample": "MACs/sample",
           "dense_ops_per_sample": "dense ops/sample", "energy_per_sample_pj": "energy uJ/sample",
           "parameter_count": "params", "footprint_bytes": "footprint B", "connection_sparsity": "conn. sparsity"}


def as_text(rows: List[Dict]) -> str:
    cells = [[HEADERS.get(c, c) for c in COLUMNS]] + [[_fmt(c, r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.rjust(w) if COLUMNS[i] in NUMERIC else v.ljust(w)
                               for i, (v, w) in enumerate(zip(line, widths))).rstrip() for line in cells)


def as_markdown(rows: List[Dict]) -> str:
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in COLUMNS) + " |",
             "|" + "|".join("---:" if c in NUMERIC else "---" for c in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_fmt(c, r[c]).replace("|", "\\|") for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def as_csv(rows: List[Dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(prog="snnexp compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path, help="run or sweep folders (e.g. outputs/multirun/2026-...)")
    ap.add_argument("--sort", default="best_test_acc", help=f"column to sort by: {', '.join(COLUMNS)}")
    ap.add_argument("--ascending", action="store_true", help="smallest first (default: largest first)")
    ap.add_argument("--out", type=Path, help="write compare.csv and compare.md here (default: the first path)")
    args = ap.parse_args(argv)
    rows = table(args.paths, args.sort, args.ascending)  # CompareError: reported by the CLI
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else Path("."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.csv").write_text(as_csv(rows))
    (out / "compare.md").write_text(as_markdown(rows) + "\n")
    print(as_text(rows))
    print(f"\n{len(rows)} runs; wrote {out / 'compare.csv'} and {out / 'compare.md'}")
    return 0
