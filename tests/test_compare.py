"""`snnexp compare`: one table of runs, sorted, as text, CSV and Markdown, on a sweep in progress too."""

import csv
import json

import pytest
import yaml

from conftest import run_snnexp
from snnexp.cli import main as cli_main
from snnexp.report.compare import main


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


def test_compare_sorts_and_writes_csv_and_markdown(sweep, capsys):
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:5]] == ["neuron=plif", "neuron=lif", "neuron=if", "neuron=stbp"]
    # mean firing rate over the layers, spikes, activation sparsity, ACs, MACs, dense operations, energy in uJ
    # (0.9 pJ x 22250.356 + 4.6 pJ x 3000 = 33825.32 pJ), parameters, bytes, connection sparsity
    assert out[2].split()[1:] == ["neuron=lif", "trainer.epochs=3", "done", "3", "90.00", "89.00", "30.0", "500.0",
                                  "0.2000", "890", "0.8000", "22250", "3000", "522752", "0.03383", "22435", "90256",
                                  "0.1250"]
    assert out[0].split("  ")[-8:] == ["act. sparsity", "ACs/sample", "MACs/sample", "dense ops/sample",
                                       "energy uJ/sample", "params", "footprint B", "conn. sparsity"]
    assert out[3].split()[3:5] == ["1/3", "epochs"]  # a run in progress shows how far it is
    assert out[4].split()[1:] == ["neuron=stbp", "trainer.epochs=3", "started"]
    rows = list(csv.DictReader((sweep / "compare.csv").open()))
    assert [r["run"] for r in rows] == ["neuron=plif", "neuron=lif", "neuron=if", "neuron=stbp"]
    assert float(rows[0]["best_test_acc"]) == 0.95
    md = (sweep / "compare.md").read_text().splitlines()
    assert md[0].startswith("| run | overrides | status |") and len(md) == 6


def test_compare_sort_by_another_column_ascending(sweep, capsys, tmp_path):
    assert main([str(sweep), "--sort", "wall_s", "--ascending", "--out", str(tmp_path / "table")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:4]] == ["neuron=if", "neuron=lif", "neuron=plif"]
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
    assert main([str(sweep)]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if line.strip()]
    assert rows[:4] == ["neuron=plif", "neuron=lif", "neuron=if", "neuron=stbp"] and "refused" not in rows
    assert main([str(sweep), "--all", "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert {"refused", "ev", "ex"} <= {line.split()[0] for line in out.splitlines()[1:] if line.strip()}
    assert "not started" in out
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
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:4]] == ["neuron=plif", "neuron=if", "neuron=stbp"]
    assert "\n3 runs; wrote" in proc.stdout


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
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1:5] == ["neuron=lif", "0/3", "epochs", "50.00"]


def test_compare_cannot_write_its_table(sweep, tmp_path):
    (tmp_path / "taken").write_text("")
    proc = run_snnexp("compare", str(sweep), "--out", str(tmp_path / "taken"), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"snnexp: error: cannot write the table into {tmp_path / 'taken'}: File exists")
