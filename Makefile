# make train: create .venv if missing, install snnexp into it with what `snnexp train` needs and nothing more, and
# train on the built-in digits dataset (ARGS="neuron=lif trainer.epochs=3" for overrides).
# make test: the same venv plus the extras the tests use (dev: pytest, ruff, dv-processing; delays: dcls; bench: the peers
# SpikingJelly, snnTorch and Norse, compared against; neurobench), the fast test suite (what CI runs), then the trust
# tests (tests/test_trust.py) again under the lowest hydra-core that pyproject.toml allows: what a checkpoint or run
# folder may make Hydra build must not depend on which Hydra the user has. make test-all: also the slow tests.
# make lint: ruff (lint and import order, configured in pyproject.toml) on src, tests, bench and examples; CI runs it
# first. make bench: the benchmarks in bench/ (the same extras as the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.snnexp-installed
EXTRAS := $(VENV)/.snnexp-extras-installed

.PHONY: install train test test-all lint bench gpu-check clean

install: $(INSTALLED)

# snnexp and its run-time dependencies only
$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	@touch $@

# and the extras of the tests, the linter and the benchmarks
$(EXTRAS): pyproject.toml | $(INSTALLED)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench,neurobench,delays]'
	@touch $@

train: $(INSTALLED)
	$(VENV)/bin/snnexp train $(ARGS)

# pyproject.toml's lowest hydra-core, beside the venv's (--target: the venv keeps its own; PYTHONPATH picks this one)
HYDRA_MIN := $(VENV)/hydra-min
$(HYDRA_MIN): pyproject.toml | $(EXTRAS)
	rm -rf $@
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --target $@ \
		"hydra-core==$$(sed -n 's/.*"hydra-core>=\([0-9.]*\)".*/\1/p' pyproject.toml)"

# -n auto: pytest-xdist, one worker per core (most tests wait on one thread: Python starting, Hydra composing);
# --dist worksteal: an idle worker takes tests queued for the other, so the run does not end on one worker's tail;
# the CPU kernels are built first, once, rather than by every worker at once (a no-op once built)
KERNELS := $(PY) -c "from snnexp.ops.kernels import cpu; cpu.build()"

test: $(EXTRAS) $(HYDRA_MIN)
	$(KERNELS)
	$(PY) -m pytest -q -n auto --dist worksteal $(ARGS)
	@PYTHONPATH=$(HYDRA_MIN) $(PY) -c "import hydra; print('tests/test_trust.py under hydra-core', hydra.__version__)"
	PYTHONPATH=$(HYDRA_MIN) $(PY) -m pytest -q -n auto tests/test_trust.py

test-all: $(EXTRAS)
	$(KERNELS)
	$(PY) -m pytest -q -n auto --dist worksteal -m "" $(ARGS)

lint: $(EXTRAS)
	$(VENV)/bin/ruff check src tests bench examples

# benchmarks (see bench/ and docs/performance.md): print tables, write bench/results/*.json;
# the MNIST epoch and the frames need the real data in ../shared/data
bench: $(EXTRAS)
	$(PY) bench/bench_neuron.py
	$(PY) bench/bench_train_step.py
	$(PY) bench/bench_framework.py
	$(PY) bench/bench_memory.py
	$(PY) bench/bench_sparse.py
	$(PY) bench/bench_mnist_epoch.py
	$(PY) bench/bench_test_pass.py
	$(PY) bench/bench_tet.py
	$(PY) bench/bench_norms.py
	$(PY) bench/bench_psn.py
	$(PY) bench/bench_delays.py
	$(PY) bench/bench_learning.py
	$(PY) bench/bench_transformers.py
	$(PY) bench/bench_frames.py $(ARGS)

# make gpu-check (bench/gpu_check.py): the wheels an offline GPU machine lacks into gpu-wheels/ (downloaded again when
# pyproject.toml or the script changes), then the check: on a GPU the CUDA tests, training runs and benchmarks in one
# table; without one, the checks that need none (the wheels, an offline install with Python 3.12)
GPU_WHEELS := gpu-wheels/.prepared
$(GPU_WHEELS): pyproject.toml bench/gpu_check.py | $(EXTRAS)
	$(PY) bench/gpu_check.py prepare
	@touch $@

gpu-check: $(GPU_WHEELS)
	$(PY) bench/gpu_check.py run

clean:
	rm -rf $(VENV) outputs build dist src/*.egg-info gpu-wheels .gpu-venv
