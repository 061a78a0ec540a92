"""What `snnexp compare` prints (compare.py reads the runs): the columns of a run's row, runs that differ only in
trainer.seed merged into one row, the columns shown by default, and the text table, made to fit 120 characters.

A merged row holds the mean of each number over its runs, the sample standard deviation of each accuracy
(`statistics.stdev`, shown as `mean ± std` in percentage points) and `n`, its count of runs. By default the table
shows the overrides that differ between its rows (one column per key; those the same in every row are printed once,
above it), the accuracies, the epochs done (with how the run ended) and samples/s; `--columns` picks any others.
"""

import textwrap
from statistics import mean, stdev
from typing import Dict, List, Optional, Tuple

from snnexp.errors import CompareError

# NeuroBench's set and the energy estimate, per test sample (report/activity.py, report/cost.py): metrics.json keys;
# runs written before they existed leave them empty
COST = ["activation_sparsity", "effective_acs_per_sample", "effective_macs_per_sample", "dense_ops_per_sample",
        "energy_per_sample_pj", "parameter_count", "footprint_bytes", "connection_sparsity"]
# best_test_acc: the accuracy of the epoch best on the test set; val_chosen_test_acc: the test accuracy of the epoch
# best on the validation set (runs with dataset.val_fraction > 0), best_val_acc that epoch's validation accuracy
ACCURACIES = ["best_test_acc", "val_chosen_test_acc", "best_val_acc", "test_acc"]
# every column of a run's row: compare.csv and compare.md hold them all, one row per run
COLUMNS = ["run", "overrides", "status", "epochs", "epoch", *ACCURACIES, "wall_s", "samples_per_s", "firing_rate",
           "spikes_per_sample", *COST]
NUMERIC = {"epoch", *ACCURACIES, "wall_s", "samples_per_s", "firing_rate", "spikes_per_sample", *COST}
HEADERS = {"best_test_acc": "best acc %", "val_chosen_test_acc": "val-chosen acc %", "best_val_acc": "best val acc %",
           "test_acc": "final acc %", "wall_s": "wall s", "samples_per_s": "samples/s", "firing_rate": "mean rate",
           "spikes_per_sample": "spikes/sample", "activation_sparsity": "act. sparsity",
           "effective_acs_per_sample": "ACs/sample", "effective_macs_per_sample": "MACs/sample",
           "dense_ops_per_sample": "dense ops/sample", "energy_per_sample_pj": "energy uJ/sample",
           "parameter_count": "params", "footprint_bytes": "footprint B", "connection_sparsity": "conn. sparsity"}
LEGEND = ["best acc %: the best epoch's test accuracy (chosen on the test set)",
          "val-chosen acc %: the test accuracy of the epoch with the best validation accuracy"]
SEED = "trainer.seed"
WIDTH = 120  # the printed table's widest line, where its columns allow
NARROWEST = 10  # a text cell is not shortened below this
ABSENT = object()  # an override a run does not have


def fmt(key: str, value) -> str:
    """A number of the table as printed: accuracies in percent, energy in microjoules."""
    if value is None:
        return ""
    if key in ACCURACIES:
        return f"{100 * value:.2f}"
    if key in ("firing_rate", "activation_sparsity", "connection_sparsity"):
        return f"{value:.4f}"
    if key in ("wall_s", "samples_per_s"):
        return f"{value:.1f}"
    if key in ("spikes_per_sample", "effective_acs_per_sample", "effective_macs_per_sample", "dense_ops_per_sample",
               "parameter_count", "footprint_bytes"):
        return f"{value:.0f}"
    if key == "energy_per_sample_pj":
        return f"{value / 1e6:.4g}"  # microjoules
    return str(value)


def settings(items: List[str]) -> Dict[str, Optional[str]]:
    """Overrides (key=value) as key -> value; None for one without a value (`~key`)."""
    pairs = [item.partition("=") for item in items]
    return {key: value if sep else None for key, sep, value in pairs}


def _item(key: str, value: Optional[str]) -> str:
    return key if value is None else f"{key}={value}"


def sort_rows(rows: List[Dict], column: str, ascending: bool) -> List[Dict]:
    """Sorted by `column`; rows without its value (not started) last either way."""
    present = sorted((r for r in rows if r[column] is not None), key=lambda r: r[column], reverse=not ascending)
    return present + [r for r in rows if r[column] is None]


def group(rows: List[Dict]) -> List[Dict]:
    """The rows merged by their overrides other than trainer.seed, in the order of each group's first row."""
    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        key = tuple(sorted((k, v) for k, v in r["settings"].items() if k != SEED))
        groups.setdefault(key, []).append(r)
    return [_merge(members) for members in groups.values()]


def _merge(members: List[Dict]) -> Dict:
    """One row for runs that differ only in their seed: the mean of each number, the sample standard deviation of
    each accuracy over the runs that have it, n; trainer.seed lists the seeds (`0,1`, as a sweep is typed)."""
    first = members[0]
    seeds = {r["settings"].get(SEED) for r in members}
    together = {**first["settings"]}
    if len(seeds) > 1:
        together[SEED] = ",".join(sorted((s for s in seeds if s is not None), key=_seed_order))
    merged = {"run": first["run"] + (f" (+{len(members) - 1})" if len(members) > 1 else ""),
              "overrides": " ".join(sorted(_item(k, v) for k, v in together.items())), "settings": together,
              "n": len(members), "std": {}}
    for key in ("status", "epochs"):
        merged[key] = ", ".join(dict.fromkeys(r[key] for r in members))
    for key in NUMERIC:
        values = [r[key] for r in members if r[key] is not None]
        merged[key] = mean(values) if values else None
        if key in ACCURACIES and len(values) > 1:
            merged["std"][key] = stdev(values)
    return merged


def _seed_order(seed: str):
    return (0, int(seed), "") if seed.isdigit() else (1, 0, seed)


def _overrides(rows: List[Dict], grouped: bool) -> Tuple[List[str], List[str]]:
    """The override keys whose values differ between the rows (trainer.seed not, where runs were merged by it), and
    the overrides that every row has alike (key=value)."""
    keys = sorted({k for r in rows for k in r["settings"]})
    varied = [k for k in keys if len({r["settings"].get(k, ABSENT) for r in rows}) > 1]
    common = [_item(k, rows[0]["settings"][k]) for k in keys if k not in varied]
    return [k for k in varied if not (grouped and k == SEED)], common


def default_columns(rows: List[Dict], grouped: bool) -> List[str]:
    """The overrides that differ (and the run's folder where they do not tell two rows apart), n where runs were
    merged, the accuracies (val-chosen where a run has it), epochs and samples/s."""
    varied, _ = _overrides(rows, grouped)
    if len({tuple(sorted(r["settings"].items())) for r in rows}) < len(rows):
        varied = ["run", *varied]
    n = ["n"] if any(r.get("n", 1) > 1 for r in rows) else []
    val = ["val_chosen_test_acc"] if any(r.get("val_chosen_test_acc") is not None for r in rows) else []
    return [*varied, *n, "best_test_acc", *val, "test_acc", "epochs", "samples_per_s"]


def choose_columns(rows: List[Dict], names: Optional[str], grouped: bool) -> List[str]:
    """--columns: None for the default set, `all`, or names separated by commas: the columns of a row, n, and the
    keys of the overrides. A CompareError lists the names it takes."""
    if names is None:
        return default_columns(rows, grouped)
    n = ["n"] if any(r.get("n", 1) > 1 for r in rows) else []
    if names.strip() == "all":
        return [*COLUMNS[:2], *n, *COLUMNS[2:]]
    valid = [*COLUMNS, "n", *sorted({k for r in rows for k in r["settings"]} - set(COLUMNS) - {"n"})]
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in valid]
    if unknown or not chosen:
        what = f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown else "no column named"
        raise CompareError(f"--columns {names!r}: {what}; give 'all', or names separated by commas from: "
                           f"{', '.join(valid)}")
    return chosen


def cell(row: Dict, column: str) -> str:
    """A row's value in `column` as printed: a number with `± std` where runs were merged, or an override's value."""
    if column not in COLUMNS and column != "n":  # an override's key
        value = row["settings"].get(column)
        return "" if value is None else value
    text = fmt(column, row.get(column))
    std = row.get("std", {}).get(column)
    return f"{text} ± {100 * std:.2f}" if std is not None else text


def as_text(rows: List[Dict], columns: Optional[List[str]] = None, grouped: bool = False) -> str:
    """The printed table: the overrides common to every row on a line above it (unless the overrides column is
    shown), its columns (the default set unless given) and, under it, what its accuracy columns mean."""
    columns = columns or default_columns(rows, grouped)
    common = _overrides(rows, grouped)[1] if rows else []
    lines = []
    if common and "overrides" not in columns:
        lines += textwrap.wrap("common: " + " ".join(common), WIDTH, subsequent_indent="  ", break_on_hyphens=False)
    lines += _table(rows, columns)
    if any(row.get("std", {}).get(c) is not None for row in rows for c in columns):
        lines.append("±: the sample standard deviation over the n runs (seeds) of a row")
    if "val_chosen_test_acc" in columns:
        lines += LEGEND
    return "\n".join(lines)


def _table(rows: List[Dict], columns: List[str]) -> List[str]:
    cells = [[HEADERS.get(c, c) for c in columns]] + [[cell(r, c) for c in columns] for r in rows]
    right = [c in NUMERIC or c == "n" for c in columns]
    natural = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    # a text column (an override, run, status, epochs) may be narrowed to NARROWEST, or to its header if wider
    floors = [w if r else min(w, max(NARROWEST, len(h))) for w, r, h in zip(natural, right, cells[0])]
    widths = _fit(natural, floors)
    return ["  ".join(_shorten(v, w).rjust(w) if r else _shorten(v, w).ljust(w)
                      for v, w, r in zip(line, widths, right)).rstrip() for line in cells]


def _fit(widths: List[int], floors: List[int]) -> List[int]:
    """Column widths that fit a line into WIDTH, the widest column that can be narrowed narrowed first (none below
    its floor); the widths unchanged where even the floors would not fit (too many columns): shortening would lose
    the values and not help."""
    def line(ws):
        return sum(ws) + 2 * (len(ws) - 1)

    if line(floors) > WIDTH:
        return widths
    widths = list(widths)
    while line(widths) > WIDTH:
        widest = max((i for i in range(len(widths)) if widths[i] > floors[i]), key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def _shorten(text: str, width: int) -> str:
    """`text` in `width` characters, its middle replaced by '...' as reprlib does (both ends tell values apart)."""
    if len(text) <= width:
        return text
    head = (width - 3) // 2
    return text[:head] + "..." + text[len(text) - (width - 3 - head):]
