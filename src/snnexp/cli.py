"""`snnexp <command> [hydra overrides]`: one Hydra app per command, configs from conf/."""

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from snnexp import __version__
from snnexp.config import ConfigError, validate

log = logging.getLogger("snnexp")

USAGE = f"""snnexp {__version__}: spiking neural network experiments from the command line

usage: snnexp <command> [overrides]

commands:
  train    train a network:            snnexp train dataset=mnist neuron=lif trainer.T=8
           sweep (one run per combo):  snnexp train -m neuron=lif,plif trainer.T=4,8
  eval     test a saved checkpoint:    snnexp eval checkpoint=outputs/.../checkpoints/best.pt

`snnexp <command> --help` lists the config groups and their options.
Runs are written under outputs/; compare them with `tensorboard --logdir outputs`.
"""


def conf_dir() -> Path:
    """conf/ travels inside the wheel (snnexp/conf); in a source checkout or editable install it is
    the repository's conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise SystemExit("snnexp: cannot find its configs (conf/train.yaml); reinstall snnexp")


def _user_errors():
    """Errors that are the user's to fix: reported in one message, no traceback."""
    from snnexp.data import CorruptFile, DatasetError
    from snnexp.engine import CheckpointError
    from snnexp.models import ModelError, SpecError

    return (ConfigError, SpecError, ModelError, DatasetError, CorruptFile, CheckpointError, FloatingPointError)


def _fail(message: str) -> None:
    print(f"snnexp: error: {message}", file=sys.stderr)
    sys.exit(2)


def _guarded(task):
    def wrapper(cfg: DictConfig):
        try:
            return task(cfg)
        except _user_errors() as e:
            _fail(str(e))
        except MissingMandatoryValue as e:
            key = getattr(e, "full_key", None) or str(e)
            _fail(f"missing value for '{key}': give it on the command line, e.g. {key}=...")
        except InstantiationException as e:
            cause = e.__cause__ or e
            if isinstance(cause, _user_errors()):  # raised by a dataset or model that Hydra built
                _fail(str(cause))
            _fail(f"cannot build a part of the run from the config: {cause}")

    wrapper.__name__ = task.__name__
    return wrapper


def _hparams(cfg: DictConfig) -> dict:
    """The run's choices and overrides for TensorBoard's HPARAMS tab."""
    hc = HydraConfig.get()
    hp = {group: option for group, option in hc.runtime.choices.items()
          if not group.startswith("hydra") and option is not None}
    for key in ("trainer.T", "trainer.batch_size", "trainer.epochs", "trainer.seed", "optim.lr"):
        hp[key] = OmegaConf.select(cfg, key)
    for override in hc.overrides.task:
        key, _, _ = override.lstrip("+~").partition("=")
        if "." in key:
            value = OmegaConf.select(cfg, key, default=None)
            hp[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return hp


@_guarded
def train(cfg: DictConfig):
    validate(cfg)
    from snnexp.engine import fit

    if "data_dir" in cfg.dataset:  # relative to where the user started snnexp; stored absolute
        cfg.dataset.data_dir = os.path.normpath(to_absolute_path(cfg.dataset.data_dir))
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = fit(cfg, run_dir, _hparams(cfg))
    return metrics["best_test_acc"]


@_guarded
def evaluate(cfg: DictConfig):
    from snnexp.engine import evaluate_checkpoint, write_json

    metrics = evaluate_checkpoint(to_absolute_path(cfg.checkpoint), cfg.device, cfg.data_dir, cfg.batch_size)
    out = Path(HydraConfig.get().runtime.output_dir) / "metrics.json"
    write_json(out, metrics)
    paper = f" (paper: {100 * metrics['paper_test_acc']:.2f}%)" if "paper_test_acc" in metrics else ""
    print(f"test_acc {100 * metrics['test_acc']:.2f}%{paper}  test_loss {metrics['test_loss']:.4f}  "
          f"(epoch {metrics['epoch']} of {metrics['checkpoint']}); saved {out}")
    return metrics["test_acc"]


COMMANDS = {"train": train, "eval": evaluate}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] in ("-V", "--version"):
        print(f"snnexp {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"snnexp: error: unknown command '{command}': use one of {', '.join(COMMANDS)}\n\n{USAGE}",
              file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"snnexp {command}", *rest]  # Hydra parses sys.argv
    app = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=command)(COMMANDS[command])
    app()
