"""`snnexp <command> [hydra overrides]`: one Hydra app per command, configs from conf/."""

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from snnexp import __version__, arguments, conf_dir, keys
from snnexp.config import validate
from snnexp.errors import ConfigError, Interrupted, SnnexpError
from snnexp.train import distributed

log = logging.getLogger("snnexp")

USAGE = f"""snnexp {__version__}: spiking neural network experiments from the command line

usage: snnexp <command> [overrides]

commands:
  train    train a network:            snnexp train dataset=mnist neuron=lif trainer.T=8
           sweep (one run per combo):  snnexp train -m neuron=lif,plif trainer.T=4,8
  eval     test a saved checkpoint:    snnexp eval checkpoint=outputs/.../checkpoints/best.pt
  export   the network for hardware:   snnexp export checkpoint=outputs/.../checkpoints/best.pt format=nir
  compare  one table of runs:          snnexp compare outputs/multirun/2026-... [--sort test_acc]

`snnexp <command> --help` lists the config groups and their options.
Runs are written under outputs/; compare them with `tensorboard --logdir outputs`.
"""


def _fail(message: str, code: int = 2) -> None:
    """Exit codes (snnexp.errors): 2 bad input (config, data, checkpoint, output folder), 3 a run whose numbers
    went non-finite, 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM) after saving."""
    print(f"snnexp: error: {message}", file=sys.stderr)
    sys.exit(code)


def _report(e: SnnexpError) -> None:
    """An error the user can fix: its message, no traceback, its exit code."""
    if isinstance(e, Interrupted):  # the run was saved: say how to go on
        _ignore_signals()
        run_dir = HydraConfig.get().runtime.output_dir
        print(f"snnexp: interrupted by {e}\nresume with:  {_resume_command()}\n"
              f"          or:  snnexp train resume={run_dir}", file=sys.stderr)
        sys.exit(e.exit_code)
    _fail(str(e), e.exit_code)


def _guarded(task):
    def wrapper(cfg: DictConfig):
        try:
            return task(cfg)
        except MissingMandatoryValue as e:
            key = getattr(e, "full_key", None) or str(e)
            _fail(f"missing value for '{key}': give it on the command line, e.g. {key}=...")
        except InstantiationException as e:
            cause = e.__cause__ or e
            if isinstance(cause, SnnexpError):  # raised by a dataset or model that Hydra built
                _report(cause)
            _fail(f"cannot build a part of the run from the config: {cause}")
        except SnnexpError as e:
            _report(e)
        except KeyboardInterrupt as e:  # here, where the run's folder is known
            _stopped(e)

    wrapper.__name__ = task.__name__
    return wrapper


def _hparams(cfg: DictConfig) -> dict:
    """The run's row of TensorBoard's HPARAMS table: its config group choices, the keys that set most experiments
    apart (T, batch size, epochs, seed, learning rate, validation share) and every dotted key given on the command
    line, except those that change neither the result nor its speed (a data folder, the progress bar). Values are
    bools, numbers or strings (report.hparams.hparam_value: a list as its JSON), the same type for a key in every
    run; a key set to null is left out."""
    from snnexp.report.hparams import hparam_value

    hc = HydraConfig.get()
    hp = {group: option for group, option in hc.runtime.choices.items()
          if not group.startswith("hydra") and option is not None}
    keys = ["trainer.T", "trainer.batch_size", "trainer.epochs", "trainer.seed", "optim.lr", "dataset.val_fraction"]
    keys += [o.lstrip("+~").partition("=")[0] for o in hc.overrides.task]
    for key in (k for k in keys if "." in k and k not in ("dataset.data_dir", "trainer.progress")):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            hp[key] = hparam_value(value)
    return hp


def torch_threads(cfg: DictConfig) -> int:
    """trainer.threads, or when null: all cores, shared out among the parallel jobs of hydra/launcher=joblib
    (n_jobs of them, all cores for n_jobs=-1) or the processes torchrun started on this machine, so that they do
    not oversubscribe it."""
    import torch

    threads = cfg.trainer.threads
    if threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        launcher = HydraConfig.get().launcher
        jobs = distributed.local_processes()  # torchrun's processes on this machine
        if "Joblib" in str(launcher.get("_target_", "")):
            n_jobs = launcher.get("n_jobs") or -1
            jobs = cores if n_jobs < 0 else n_jobs
        threads = max(1, cores // jobs)
    torch.set_num_threads(threads)
    return threads


@_guarded
def train(cfg: DictConfig):
    validate(cfg)
    from snnexp.train.build import part_problems  # imports torch: after the checks that need none

    problems = part_problems(cfg)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    hc = HydraConfig.get()
    problem = distributed.check(cfg.trainer.strategy, cfg.trainer.batch_size, hc.launcher.get("_target_", ""),
                                hc.sweeper.get("_target_", ""))
    if problem:
        raise ConfigError(problem)
    from snnexp.train.loop import fit

    if "data_dir" in cfg.dataset:  # relative to where the user started snnexp; stored absolute
        cfg.dataset.data_dir = os.path.normpath(to_absolute_path(cfg.dataset.data_dir))
    run_dir = Path(hc.runtime.output_dir)
    torch_threads(cfg)
    checkpoint = None
    if cfg.get("resume") not in (None, False):
        checkpoint = run_dir / "checkpoints" / "last.pt"
        if not checkpoint.is_file():  # a sweep job that had not started: it starts now
            log.info("resume: no checkpoint in %s yet, starting this job from the beginning", run_dir)
            checkpoint = None
    metrics = fit(cfg, run_dir, _hparams(cfg), resume=checkpoint)
    return metrics["best_test_acc"]


@_guarded
def evaluate(cfg: DictConfig):
    from snnexp.train.checkpoint import write_json
    from snnexp.train.evaluate import evaluate_checkpoint

    if not isinstance(cfg.neurobench, bool):
        raise ConfigError(f"neurobench={cfg.neurobench!r}: must be true or false")
    metrics = evaluate_checkpoint(to_absolute_path(cfg.checkpoint), cfg.device, cfg.data_dir, cfg.batch_size,
                                  cfg.neurobench, _config_dirs())
    out = Path(HydraConfig.get().runtime.output_dir) / "metrics.json"
    write_json(out, metrics)
    paper = f" (paper: {100 * metrics['paper_test_acc']:.2f}%)" if "paper_test_acc" in metrics else ""
    print(f"test_acc {100 * metrics['test_acc']:.2f}%{paper}  test_loss {metrics['test_loss']:.4f}  "
          f"spikes/sample {metrics['spikes_per_sample']:.0f}  activation sparsity {metrics['activation_sparsity']:.4f}"
          f"\nper sample: effective ACs {metrics['effective_acs_per_sample']:.1f}  effective MACs "
          f"{metrics['effective_macs_per_sample']:.1f}  dense ops {metrics['dense_ops_per_sample']:.0f}  energy "
          f"{metrics['energy_per_sample_pj'] / 1e6:.4g} uJ\nnetwork: {metrics['parameter_count']} parameters, "
          f"footprint {metrics['footprint_bytes']} bytes, connection sparsity {metrics['connection_sparsity']:.4f}"
          f"\n(epoch {metrics['epoch']} of {metrics['checkpoint']}); saved {out}")
    if "neurobench" in metrics:
        from neurobench import __version__ as version

        print(f"NeuroBench {version} Benchmark, its own results:",
              *(f"{name} {value}" for name, value in metrics["neurobench"].items()), sep="\n  ")
    return metrics["test_acc"]


@_guarded
def export(cfg: DictConfig):
    from snnexp.export import describe, export_checkpoint

    out = to_absolute_path(cfg.out) if cfg.out is not None else None
    path, graph = export_checkpoint(to_absolute_path(cfg.checkpoint), cfg.format, out, cfg.dt, _config_dirs())
    print(f"wrote {path}: NIR graph of {len(graph.nodes)} nodes, dt {cfg.dt} s per time step", *describe(graph),
          sep="\n  ")


def _config_dirs() -> list:
    """The config folders this command searches (snnexp's conf/, --config-dir, hydra.searchpath): the trusted ones,
    whose targets a checkpoint's config may name (snnexp.trust)."""
    return [Path(s.path) for s in HydraConfig.get().runtime.config_sources if s.schema == "file"]


COMMANDS = {"train": train, "eval": evaluate, "export": export}
_ARGS: list = []  # the command line of this call, for the resume hint


def _resume_command() -> str:
    kept = [a for a in _ARGS if not a.startswith(("resume=", "hydra.run.dir=", "hydra.sweep.dir="))]
    return " ".join(["snnexp train", *kept, "resume=true"])


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] in ("-V", "--version"):
        print(f"snnexp {__version__}")
        return
    try:
        _run(argv[0], argv[1:])
    except SnnexpError as e:  # raised before Hydra started (inside it, _guarded reports them)
        _report(e)
    except KeyboardInterrupt as e:
        _stopped(e)


def _stopped(e: KeyboardInterrupt) -> None:
    """Ctrl-C outside training, or a second Ctrl-C / SIGTERM in it (session.StopNow): one line, exit 128 + N. A file
    being written was removed (files.atomic_path); the checkpoints saved before are intact."""
    _ignore_signals()
    signum = getattr(e, "signum", signal.SIGINT)
    again = f"a second {signal.Signals(signum).name}, without saving" if hasattr(e, "signum") else "SIGINT"
    hint = f"; to go on from the last checkpoint saved: snnexp train resume={HydraConfig.get().runtime.output_dir}" \
        if hasattr(e, "signum") and HydraConfig.initialized() else ""
    print(f"snnexp: stopped at once by {again}{hint}", file=sys.stderr)
    sys.exit(128 + signum)


def _ignore_signals() -> None:
    """The process is stopping for a signal: a further Ctrl-C (or SIGTERM) could only cut its message and exit short,
    with a traceback from wherever it landed (an atexit callback)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _run(command: str, rest: list) -> None:
    """`snnexp <command> <rest>`: compare at once; else resolve resume=, check the output folder, run Hydra's app."""
    _ARGS[:] = rest
    if command == "compare":  # reads run folders; no config to compose
        from snnexp.report.compare import main as compare

        sys.exit(compare(rest))
    if command not in COMMANDS:
        print(f"snnexp: error: unknown command '{command}': use one of {', '.join([*COMMANDS, 'compare'])}\n\n{USAGE}",
              file=sys.stderr)
        sys.exit(2)
    if command == "train" and not any(a in rest for a in ("-h", "--help", "--hydra-help", "--cfg", "-c", "--info")):
        rest = arguments.resolve_resume(rest)
    if not any(a in rest for a in ("-h", "--help", "--hydra-help", "--cfg", "-c", "--info")):
        arguments.check_writable(rest)
    rest = [arguments.quote_path(a) for a in rest]
    if not any(a in rest for a in ("-h", "--help", "--hydra-help", "--info")):
        keys.check(command, *arguments.overrides_and_config_dirs(rest))  # a misspelt key stops here, named
    if command == "train" and distributed.launched():  # torchrun: one run directory for all its processes
        rest = distributed.setup(rest)
    sys.argv = [f"snnexp {command}", *rest]  # Hydra parses sys.argv
    app = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=command)(COMMANDS[command])
    try:
        app()
    finally:
        distributed.shutdown()
