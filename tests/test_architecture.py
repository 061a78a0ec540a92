"""The shape of the code: imports point one way (no cycle, lazy imports inside functions included), the error tree is
torch-free, the training loop names no neuron, no private torch API is used, no function or module grows past what
reads at once, the package's top level stays small (its folders show the architecture: nn/, ops/, data/, train/,
report/), and the old import paths still work."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "snnexp"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 350
MAX_TOP_LEVEL_MODULES = 12


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: set) -> set:
    """The snnexp modules `path` imports anywhere in it (top level or inside functions): `from a.b import c` is
    a.b.c when that is a module, else a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "snnexp"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "snnexp":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found & known


# The package's face: snnexp.compose, snnexp.fit and snnexp.load resolve, when first used (snnexp/__init__.py's
# __getattr__), to snnexp.api, which sits on top of everything as the command does. That one edge is the entry
# point for Python users, not a dependency of the package's own code.
FACADE = {"snnexp": {"snnexp.api"}}


def import_graph() -> dict:
    known = modules()
    return {name: imports_of(path, set(known)) - {name} - FACADE.get(name, set()) for name, path in known.items()}


def find_cycle(graph: dict):
    """A list of modules that import each other in a ring, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_ring():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_between_snnexp_modules():
    graph = import_graph()
    assert "snnexp.ops.fused" in graph["snnexp.nn.neurons"]  # the graph sees real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


# the packages' order: a module imports only from its own rank or a lower one (docs/architecture.md)
RANKS = {"snnexp": 0, "moved": 0, "errors": 0, "config": 0, "files": 0, "trust": 0, "ops": 1, "nn": 2, "data": 2,
         "report": 3, "train": 4, "export": 5, "arguments": 6, "cli": 6, "__main__": 6, "api": 6, "keys": 6}


def test_the_packages_depend_one_way():
    """ops (the kernels) know nothing of nn (the modules), nn nothing of data, train or report, report nothing of
    train: from conf/'s parts up to the command."""
    def rank(module):
        return RANKS[module.split(".")[1] if "." in module else "snnexp"]

    upward = sorted(f"{a} -> {b}" for a, imported in import_graph().items() for b in imported if rank(b) > rank(a))
    assert not upward, upward


def test_the_error_tree_imports_nothing():
    tree = ast.parse((PACKAGE / "errors.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_a_config_error_is_reported_before_torch_is_imported(tmp_path):
    code = ("import sys\nfrom snnexp.cli import main\ntry:\n    main(['train', 'trainer.T=0'])\n"
            "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stderr


def test_no_private_torch_api():
    """torch._C is PyTorch's private API: an upgrade may change it under us."""
    uses = [f"{p.relative_to(SRC)}:{i}" for p in PACKAGE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\btorch\._C\b", line)]
    assert not uses, uses


@pytest.mark.parametrize("module", ["build", "epoch", "evaluate", "loop"])
def test_the_training_loop_names_no_neuron_and_no_surrogate(module):
    imported = import_graph()[f"snnexp.train.{module}"]
    assert not {m for m in imported if m.startswith(("snnexp.nn.neurons", "snnexp.nn.surrogate"))}
    text = (PACKAGE / "train" / f"{module}.py").read_text()
    assert not re.findall(r"\b(PLIF|LIF|STBPLIF|alpha|slope|height)\b", text)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_over_350_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


def test_a_small_top_level_and_one_exception_root():
    """At most 12 modules beside the packages; every exception class snnexp defines derives from errors.SnnexpError,
    but session.StopNow, which is a KeyboardInterrupt by design (the second Ctrl-C: stop at once)."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    defined = {(p.relative_to(PACKAGE).as_posix(), node.name, tuple(ast.unparse(b) for b in node.bases))
               for p in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, ast.ClassDef) and any(re.search(r"(Error|Exception|Interrupt|Unavailable)$",
                                                                   ast.unparse(b)) for b in node.bases)}
    outside = {(path, name) for path, name, bases in defined if path != "errors.py"}
    assert outside == {("data/archives.py", "_Unsafe"), ("train/session.py", "StopNow")}, outside
    import snnexp.data.archives
    import snnexp.errors as errors
    assert issubclass(snnexp.data.archives._Unsafe, errors.SnnexpError)
    tree = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, BaseException)]
    assert all(issubclass(c, errors.SnnexpError) for c in tree)


def test_old_import_paths_still_work_and_name_the_new_place():
    """Scripts written before the move (issue 30) import from snnexp.neurons, snnexp.layers, snnexp.engine: the names
    are the new modules' own objects, and a FutureWarning names where they live now."""
    code = ("import warnings\nwarnings.simplefilter('always')\n"
            "from snnexp.neurons import PLIF\nfrom snnexp.layers import BatchNormThroughTime, VotingReadout\n"
            "from snnexp.neurons.fused import lif_multistep_fused\nfrom snnexp.engine import build_run\n"
            "import snnexp.nn.neurons, snnexp.nn.norms, snnexp.ops.fused, snnexp.train.build\n"
            "print(PLIF is snnexp.nn.neurons.PLIF, BatchNormThroughTime is snnexp.nn.norms.BatchNormThroughTime,\n"
            "      lif_multistep_fused is snnexp.ops.fused.lif_multistep_fused,\n"
            "      build_run is snnexp.train.build.build_run)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True"] * 4, out.stderr
    for old, new in [("snnexp.neurons", "snnexp.nn.neurons"), ("snnexp.layers", "snnexp.nn.norms"),
                     ("snnexp.neurons.fused", "snnexp.ops.fused"), ("snnexp.engine", "snnexp.train.build")]:
        assert f"FutureWarning: {old} moved: import from " in out.stderr and new in out.stderr, (old, out.stderr)
    out = subprocess.run([sys.executable, "-c", "from snnexp.layers import Nothing"], capture_output=True, text=True,
                         timeout=120)
    assert "cannot import name 'Nothing'" in out.stderr


def test_targets_stored_before_the_move_map_to_the_new_places():
    from snnexp.moved import new_targets
    stored = {"neuron": {"_target_": "snnexp.neurons.PLIF"}, "norm": {"_target_": "snnexp.layers.NeuNorm"},
              "readout": {"_target_": "snnexp.layers.VotingReadout"}, "model": {"_target_": "snnexp.models.SpecNet"},
              "loss": {"_target_": "snnexp.losses.MSERate"}, "dataset": {"_target_": "snnexp.data.digits"},
              "list": [{"_target_": "snnexp.surrogate.ATan"}]}
    assert new_targets(stored) == {
        "neuron": {"_target_": "snnexp.nn.neurons.PLIF"}, "norm": {"_target_": "snnexp.nn.norms.NeuNorm"},
        "readout": {"_target_": "snnexp.nn.readouts.VotingReadout"}, "model": {"_target_": "snnexp.nn.models.SpecNet"},
        "loss": {"_target_": "snnexp.nn.losses.MSERate"}, "dataset": {"_target_": "snnexp.data.digits"},
        "list": [{"_target_": "snnexp.nn.surrogate.ATan"}]}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_over_60_lines(path):
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long
