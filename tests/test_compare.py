"""`snnexp compare`: one table of runs, sorted, as text, CSV and Markdown, on a sweep in progress too."""

import csv
import json
import re
from statistics import mean, stdev

import pytest
import yaml

from conftest import run_snnexp
from snnexp.cli import main as cli_main
from snnexp.errors import CompareError
from snnexp.report.compare import COST, main


def fake_run(path, overrides, epochs, metrics=None, trained=True):
    """A run folder as snnexp train leaves it (`trained`: a session started, run_info.json; else refused)."""
    (path / ".hydra").mkdir(parents=True)
    if trained:
        (path / "run_info.json").write_text("[]")
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))  # as Hydra writes it
    (path / ".hydra" / "config.yaml").write_text(f"trainer:\n  epochs: {epochs}\n")
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))


def metrics(epoch, best, final, rates):
    return {"epoch": epoch, "best_test_acc": best, "test_acc": final, "wall_s": 10.0 * epoch,
            "train_samples_per_s": 500.0, "firing_rate": rates, "spikes_per_sample": 1000 * final,
            "activation_sparsity": 0.8, "effective_acs_per_sample": 25000.4 * final,
            "effective_macs_per_sample": 3000.0, "dense_ops_per_sample": 522752.0,
            "energy_per_sample_pj": 0.9 * 25000.4 * final + 4.6 * 3000.0, "parameter_count": 22435,
            "footprint_bytes": 90256, "connection_sparsity": 0.125}


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "outputs" / "multirun" / "2026-11-23_10-00-00"
    fake_run(root / "neuron=lif", ["neuron=lif", "trainer.epochs=3"], 3, metrics(3, 0.90, 0.89, {"a": 0.1, "b": 0.3}))
    fake_run(root / "neuron=plif", ["neuron=plif", "trainer.epochs=3"], 3, metrics(3, 0.95, 0.95, {"a": 0.2}))
    fake_run(root / "neuron=if", ["neuron=if", "trainer.epochs=3"], 3, metrics(1, 0.70, 0.70, {"a": 0.5}))  # running
    fake_run(root / "neuron=stbp", ["neuron=stbp", "trainer.epochs=3"], 3)  # not through its first epoch
    return root


def table_rows(stdout):
    """The printed table's header and rows, each as its cells (columns are two or more spaces apart): the lines
    after the `common:` ones, up to the legend or the blank line that ends the table."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if not line.startswith(("common: ", "  ")))
    end = next(i for i, line in enumerate(lines) if i > start and (not line or line.startswith(("±:", "best acc %:"))))
    return [re.split(r" {2,}", line.strip()) for line in lines[start:end]]


def test_compare_sorts_and_writes_csv_and_markdown(sweep, capsys):
    assert main([str(sweep), "--columns", "all"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:5]] == ["neuron=plif", "neuron=lif", "neuron=if", "neuron=stbp"]
    # mean firing rate over the layers, spikes, activation sparsity, ACs, MACs, dense operations, energy in uJ
    # (0.9 pJ x 22250.356 + 4.6 pJ x 3000 = 33825.32 pJ), parameters, bytes, connection sparsity; no validation set
    assert out[2].split()[1:] == ["neuron=lif", "trainer.epochs=3", "done", "3/3", "3", "90.00", "89.00", "30.0",
                                  "500.0", "0.2000", "890", "0.8000", "22250", "3000", "522752", "0.03383", "22435",
                                  "90256", "0.1250"]
    assert out[0].split("  ")[-8:] == ["act. sparsity", "ACs/sample", "MACs/sample", "dense ops/sample",
                                       "energy uJ/sample", "params", "footprint B", "conn. sparsity"]
    assert out[3].split()[3:6] == ["1/3", "epochs", "1/3"]  # a run in progress shows how far it is
    assert out[4].split()[1:] == ["neuron=stbp", "trainer.epochs=3", "started", "0/3"]
    rows = list(csv.DictReader((sweep / "compare.csv").open()))
    assert [r["run"] for r in rows] == ["neuron=plif", "neuron=lif", "neuron=if", "neuron=stbp"]
    assert float(rows[0]["best_test_acc"]) == 0.95
    md = (sweep / "compare.md").read_text().splitlines()
    assert md[0].startswith("| run | overrides | status |") and len(md) == 6


def test_compare_sort_by_another_column_ascending(sweep, capsys, tmp_path):
    assert main([str(sweep), "--sort", "wall_s", "--ascending", "--out", str(tmp_path / "table")]) == 0
    assert [r[0] for r in table_rows(capsys.readouterr().out)[1:4]] == ["if", "lif", "plif"]
    assert (tmp_path / "table" / "compare.md").is_file()


def cli_exit_code(*args) -> int:
    """`snnexp compare ...` in this process: the exit code (the CLI reports errors and exits)."""
    with pytest.raises(SystemExit) as stop:
        cli_main(["compare", *args])
    return stop.value.code


def test_compare_bad_input(tmp_path, capsys):
    assert cli_exit_code(str(tmp_path / "nope")) == 2
    assert capsys.readouterr().err.strip() == f"snnexp: error: {tmp_path / 'nope'} does not exist"
    assert cli_exit_code(str(tmp_path)) == 2
    assert f"no snnexp runs under {tmp_path}" in capsys.readouterr().err
    fake_run(tmp_path / "r", ["neuron=lif"], 1, metrics(1, 0.5, 0.5, {}))
    assert cli_exit_code(str(tmp_path), "--sort", "speed") == 2
    assert "cannot sort by 'speed': use one of run, overrides" in capsys.readouterr().err
    assert cli_exit_code(str(tmp_path), "--columns", "run,speed") == 2
    error = capsys.readouterr().err
    assert error.startswith("snnexp: error: --columns 'run,speed': unknown column(s) 'speed'; give 'all', or names")
    assert "best_test_acc, val_chosen_test_acc, best_val_acc, test_acc" in error and error.endswith(", neuron\n")


def test_a_run_stopped_by_max_steps_is_done_not_unfinished(tmp_path):
    """`trainer.max_steps=20` stops a run inside its first epoch, as asked: it shows as done, with the limit, where a
    run still training shows how far it is."""
    from snnexp.report.compare import row

    stopped, running = tmp_path / "stopped", tmp_path / "running"
    fake_run(stopped, ["trainer.max_steps=20"], 15, {**metrics(1, 0.5, 0.5, {}), "step": 20})
    (stopped / ".hydra" / "config.yaml").write_text("trainer:\n  epochs: 15\n  max_steps: 20\n")
    fake_run(running, [], 15, {**metrics(1, 0.5, 0.5, {}), "step": 23})
    assert row(stopped)["status"] == "done: max_steps=20"
    assert row(running)["status"] == "1/15 epochs"


def test_folders_that_trained_nothing_are_left_out_unless_asked(sweep, tmp_path, capsys):
    """A run refused before training (no run_info.json), an eval folder and an export folder are not runs to compare;
    --all lists them."""
    fake_run(sweep / "refused", ["trainer.T=0"], 3, trained=False)
    fake_run(sweep / "ev", ["checkpoint=x.pt"], 3, {**metrics(1, 0.9, 0.9, {}), "checkpoint": "x.pt"})
    fake_run(sweep / "ex", ["checkpoint=x.pt", "out=net.nir"], 3, trained=False)
    assert main([str(sweep), "--columns", "run"]) == 0
    assert table_rows(capsys.readouterr().out)[1:] == [["neuron=plif"], ["neuron=lif"], ["neuron=if"], ["neuron=stbp"]]
    assert main([str(sweep), "--all", "--out", str(tmp_path / "t"), "--columns", "run,epochs"]) == 0
    rows = table_rows(capsys.readouterr().out)[1:]
    assert {"refused", "ev", "ex"} <= {r[0] for r in rows} and ["refused", "not started"] in rows
    fake_run(tmp_path / "only" / "refused", ["trainer.T=0"], 3, trained=False)
    assert cli_exit_code(str(tmp_path / "only")) == 2
    assert "no training runs under" in capsys.readouterr().err


def test_an_eval_folder_is_shown_as_an_eval(tmp_path):
    """snnexp eval leaves .hydra/ and metrics.json too, with no trainer.epochs: its status is 'eval', not a
    count of epochs out of none."""
    from snnexp.report.compare import row

    ev = tmp_path / "ev"
    fake_run(ev, ["checkpoint=run/checkpoints/best.pt"], 3, {**metrics(1, 0.9, 0.9, {}), "checkpoint": "best.pt"})
    (ev / ".hydra" / "config.yaml").write_text("checkpoint: run/checkpoints/best.pt\n")
    assert row(ev)["status"] == "eval"


def half(text):
    return text[:len(text) // 2]


DAMAGE = {  # file of the run -> what is written there instead, and what the warning says of it
    "metrics.json as a list": ("metrics.json", "[0.9, 0.89]", "holds [0.9, 0.89], not an object of metrics"),
    "a string accuracy": ("metrics.json", json.dumps(metrics(3, "0.9", 0.89, {})),
                          "best_test_acc is '0.9', not a number"),
    "a NaN accuracy": ("metrics.json", json.dumps(metrics(3, 0.9, float("nan"), {})), "test_acc is nan, not a number"),
    "a text val-chosen accuracy": ("metrics.json", json.dumps({**metrics(3, 0.9, 0.8, {}), "val_chosen_test_acc": ""}),
                                   "val_chosen_test_acc is '', not a number"),
    "an infinite validation accuracy": ("metrics.json", json.dumps({**metrics(3, 0.9, 0.8, {}), "best_val_acc": 1e999}),
                                        "best_val_acc is inf, not a number"),
    "a firing rate as text": ("metrics.json", json.dumps(metrics(3, 0.9, 0.89, "high")),
                              "firing_rate is 'high', not a number per layer"),
    "truncated metrics.json": ("metrics.json", half(json.dumps(metrics(3, 0.9, 0.89, {}))), "is not valid JSON"),
    "a folder as metrics.json": ("metrics.json", None, "is a folder, not a file"),
    "invalid overrides.yaml": (".hydra/overrides.yaml", "- neuron=lif\n- [trainer", "is not valid YAML"),
    "overrides.yaml not a list": (".hydra/overrides.yaml", "neuron: lif\n", "not a list of overrides"),
    "a folder as overrides.yaml": (".hydra/overrides.yaml", None, "is a folder, not a file"),
    "invalid config.yaml": (".hydra/config.yaml", "trainer: {epochs: 3", "is not valid YAML"),
    "epochs as text": (".hydra/config.yaml", "trainer:\n  epochs: three\n", "trainer.epochs is 'three', not a whole"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_run_file_skips_that_run_with_a_warning(sweep, tmp_path, damage):
    """One bad run in a sweep: a warning names its file and what is wrong, the other runs still make the table."""
    name, content, problem = damage
    path = sweep / "neuron=lif" / name
    path.unlink()
    path.mkdir() if content is None else path.write_text(content)
    proc = run_snnexp("compare", str(sweep), cwd=tmp_path)  # exit 0
    (warning,) = proc.stderr.splitlines()
    assert warning.startswith(f"snnexp: warning: skipping a run: {path.resolve()}") and problem in warning
    assert [r[0] for r in table_rows(proc.stdout)[1:]] == ["plif", "if", "stbp"]
    assert "\n3 runs\nwrote compare.csv" in proc.stdout


def test_when_every_run_is_damaged_the_error_says_how_many_and_why(tmp_path):
    for name in ("a", "b"):
        fake_run(tmp_path / name, ["neuron=lif"], 3)
        (tmp_path / name / "metrics.json").write_text('{"epoch": 3, "best_test')
    proc = run_snnexp("compare", str(tmp_path), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    error = proc.stderr.splitlines()[-1]
    assert error.startswith(f"snnexp: error: no runs to compare under {tmp_path}: 2 found, skipped for a damaged "
                            f"file ({tmp_path / 'a' / 'metrics.json'} is not valid JSON")
    assert error.endswith("; and 1 more, in the warnings above)") and len(proc.stderr.splitlines()) == 3


def test_compare_csv_escapes_text_that_a_spreadsheet_would_run_but_not_negative_numbers(tmp_path):
    formulas = ['=HYPERLINK("http://evil.example","x")', "+cmd|' /C calc'!A0", "-2+3", "\t=1+1"]
    for i, override in enumerate(formulas):
        fake_run(tmp_path / f"r{i}", [override], 3, {**metrics(3, 0.5 + i / 10, 0.5, {}), "wall_s": -0.5})
    fake_run(tmp_path / "@SUM(1+1)", ["neuron=lif"], 3, metrics(3, 0.9, 0.9, {}))
    run_snnexp("compare", str(tmp_path), cwd=tmp_path)
    rows = list(csv.DictReader((tmp_path / "compare.csv").open(newline="")))
    assert [(r["run"], r["overrides"]) for r in rows] == [("'@SUM(1+1)", "neuron=lif"),
                                                          *[(f"r{i}", "'" + f) for i, f in reversed(list(
                                                              enumerate(formulas)))]]
    assert rows[1]["wall_s"] == "-0.5" and rows[1]["status"] == "done"  # a number stays a number


def test_null_metrics_show_as_empty(tmp_path, capsys):
    fake_run(tmp_path / "r", ["neuron=lif"], 3, {**metrics(1, 0.5, 0.5, {}), "epoch": None, "wall_s": None})
    assert main([str(tmp_path), "--columns", "status,epochs,best_test_acc,wall_s"]) == 0
    assert table_rows(capsys.readouterr().out)[1] == ["0/3 epochs", "0/3", "50.00"]


def test_compare_cannot_write_its_table(sweep, tmp_path):
    (tmp_path / "taken").write_text("")
    proc = run_snnexp("compare", str(sweep), "--out", str(tmp_path / "taken"), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"snnexp: error: cannot write the table into {tmp_path / 'taken'}: File exists")


def seeded_sweep(root, runs):
    """A finished sweep: `runs` maps a run's overrides (without its seed) to its (best, final, samples/s) per seed."""
    for overrides, results in runs.items():
        for seed, (best, final, speed) in enumerate(results):
            items = [*overrides.split(), "trainer.epochs=2", f"trainer.seed={seed}"]
            m = {**metrics(2, best, final, {"a": 0.1}), "train_samples_per_s": speed}
            fake_run(root / ",".join(items), items, 2, m)
    return root


def test_the_default_table_shows_what_differs_and_fits_120_columns(sweep, tmp_path, capsys, monkeypatch):
    """An override the same in every run is said once above the table, not as a column; how far each run is,
    folded into its epochs column."""
    monkeypatch.chdir(sweep.parent)
    assert main([sweep.name]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "common: trainer.epochs=3"
    header, *rows = table_rows(out)
    assert header == ["neuron", "best acc %", "final acc %", "epochs", "samples/s"]  # no trainer.epochs column
    assert rows == [["plif", "95.00", "95.00", "3/3", "500.0"], ["lif", "90.00", "89.00", "3/3", "500.0"],
                    ["if", "70.00", "70.00", "1/3", "500.0"], ["stbp", "0/3"]]
    assert max(map(len, out.splitlines())) <= 120
    assert (sweep / "compare.txt").read_text() in out  # the printed table, saved


def test_runs_that_differ_only_in_their_seed_make_one_row_of_mean_and_sample_std(tmp_path, capsys):
    runs = {"neuron=lif trainer.T=4": [(0.91, 0.90, 400.0), (0.93, 0.91, 500.0), (0.96, 0.92, 900.0)],
            "neuron=lif trainer.T=8": [(0.80, 0.79, 300.0)],  # another T: not merged with the lif runs above
            "neuron=plif trainer.T=4": [(0.97, 0.95, 600.0), (0.98, 0.97, 800.0)]}
    seeded_sweep(tmp_path / "s", runs)
    assert main([str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    header, *rows = table_rows(out)
    assert header == ["neuron", "trainer.T", "n", "best acc %", "final acc %", "epochs", "samples/s"]

    def expected(results):
        cells = [f"{100 * mean(values):.2f}" + (f" ± {100 * stdev(values):.2f}" if len(values) > 1 else "")
                 for values in ([r[0] for r in results], [r[1] for r in results])]
        return [str(len(results)), *cells, "2/2", f"{mean(r[2] for r in results):.1f}"]

    assert rows == [[*key.replace("neuron=", "").replace("trainer.T=", "").split(), *expected(runs[key])]
                    for key in ("neuron=plif trainer.T=4", "neuron=lif trainer.T=4", "neuron=lif trainer.T=8")]
    assert out.splitlines()[0] == "common: trainer.epochs=2"  # the seeds differ from row to row
    assert len(list(csv.DictReader((tmp_path / "s" / "compare.csv").open()))) == 6  # one row per run
    assert "6 runs in 3 rows" in out


def test_no_group_lists_every_run_with_its_seed(tmp_path, capsys):
    seeded_sweep(tmp_path / "s", {"neuron=lif": [(0.9, 0.9, 1.0), (0.8, 0.8, 1.0)], "neuron=plif": [(0.7, 0.7, 1.0)]})
    assert main([str(tmp_path / "s"), "--no-group"]) == 0
    header, *rows = table_rows(capsys.readouterr().out)
    assert header[:2] == ["neuron", "trainer.seed"] and "n" not in header
    assert [r[:3] for r in rows] == [["lif", "0", "90.00"], ["lif", "1", "80.00"], ["plif", "0", "70.00"]]


def test_columns_picks_the_printed_columns_and_all_of_them_go_to_the_files(sweep, capsys):
    assert main([str(sweep), "--columns", "wall_s, neuron,run"]) == 0
    header, *rows = table_rows(capsys.readouterr().out)
    assert header == ["wall s", "neuron", "run"] and rows[0] == ["30.0", "plif", "neuron=plif"]
    columns = next(csv.reader((sweep / "compare.csv").open()))
    assert {"run", "overrides", "status", "epochs", "wall_s", "firing_rate", "best_val_acc", *COST} <= set(columns)
    assert main([str(sweep), "--columns", "all"]) == 0
    header = table_rows(capsys.readouterr().out)[0]
    assert header[:4] == ["run", "overrides", "status", "epochs"] and "conn. sparsity" in header
    with pytest.raises(CompareError, match=r"unknown column\(s\) 'speed', 'acc'; .* run, overrides, status"):
        main([str(sweep), "--columns", "speed,wall_s,acc"])
    with pytest.raises(CompareError, match="no column named"):
        main([str(sweep), "--columns", ","])


def test_a_run_stopped_by_max_steps_reads_max_steps_in_the_table(tmp_path, capsys):
    fake_run(tmp_path / "a", ["neuron=lif", "trainer.max_steps=20"], 15, {**metrics(1, 0.5, 0.5, {}), "step": 20})
    (tmp_path / "a" / ".hydra" / "config.yaml").write_text("trainer:\n  epochs: 15\n  max_steps: 20\n")
    fake_run(tmp_path / "b", ["neuron=plif"], 15, {**metrics(1, 0.6, 0.6, {}), "step": 23})  # still training
    assert main([str(tmp_path), "--columns", "neuron,epochs"]) == 0
    assert table_rows(capsys.readouterr().out)[1:] == [["plif", "1/15"], ["lif", "max_steps=20"]]


def test_a_validation_chosen_accuracy_gets_its_column_and_a_legend(tmp_path, capsys):
    """best acc % is chosen on the test set; a run with a validation set also has the test accuracy of the epoch
    that the validation set chose. A table without such a run has no such column."""
    fake_run(tmp_path / "v" / "a", ["neuron=lif"], 3, {**metrics(3, 0.9, 0.8, {}), "val_chosen_test_acc": 0.85,
                                                      "best_val_acc": 0.88})
    fake_run(tmp_path / "v" / "b", ["neuron=plif"], 3, metrics(3, 0.7, 0.7, {}))  # written before val_fraction
    assert main([str(tmp_path / "v")]) == 0
    out = capsys.readouterr().out
    header, *rows = table_rows(out)
    assert header[:4] == ["neuron", "best acc %", "val-chosen acc %", "final acc %"]
    assert rows[0][:4] == ["lif", "90.00", "85.00", "80.00"] and rows[1][:3] == ["plif", "70.00", "70.00"]
    assert "best acc %: the best epoch's test accuracy (chosen on the test set)" in out
    assert "val-chosen acc %: the test accuracy of the epoch with the best validation accuracy" in out
    assert float(next(csv.DictReader((tmp_path / "v" / "compare.csv").open()))["best_val_acc"]) == 0.88
    fake_run(tmp_path / "t" / "a", ["neuron=lif"], 3, metrics(3, 0.9, 0.8, {}))
    assert main([str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out.split("\nwrote ")[0]  # (the folder's name says validation)
    assert "val-chosen" not in out and "validation" not in out


def test_a_realistic_sweep_fits_120_columns_and_long_values_are_shortened(tmp_path, capsys, monkeypatch):
    """3 neurons x 2 T x 2 learning rates x 2 seeds with a validation set, one run with a long network spec."""
    spec = "model.spec=" + "-".join(["c64k3", "bn", "plif", "mp2"] * 12)
    for neuron in ("lif", "plif", "alif"):
        for t in (4, 8):
            for lr in ("1e-3", "5e-4"):
                for seed in (0, 1):
                    items = [f"neuron={neuron}", f"trainer.T={t}", f"optim.lr={lr}", f"trainer.seed={seed}",
                             "dataset=fashion_mnist", "trainer.epochs=15"] + ([spec] if neuron == "alif" else [])
                    m = {**metrics(15, 0.9 + seed / 100, 0.89, {}), "val_chosen_test_acc": 0.88 + seed / 100}
                    fake_run(tmp_path / "s" / f"{neuron}{t}{lr}{seed}", items, 15, m)
    monkeypatch.chdir(tmp_path)
    for grouped in ([], ["--no-group"]):
        assert main(["s", *grouped]) == 0
        out = capsys.readouterr().out
        assert max(len(line) for line in out.splitlines()) <= 120, out
        assert len(table_rows(out)) == 1 + (12 if grouped == [] else 24)
        head, tail = table_rows(out)[1][0].split("...")  # alif's spec: both of its ends still shown
        assert spec.startswith(f"model.spec={head}") and spec.endswith(tail) and len(head) > 4 and len(tail) > 4
