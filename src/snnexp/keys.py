"""Strict keys: every key, config group and option a command line names must exist, or the command stops with one
line that names the closest match ("did you mean trainer.epochs?").

Hydra refuses an unknown key (`trainer.epoch=3`) but suggests `+trainer.epoch=3`, which it then accepts: a typo that
trains with the default and shows up as an hparam. Its refusal of an unknown option (`neuron=plf`) lists the options
without a suggestion. `check` composes the command's config from the overrides first (each value of a sweep in
turn; 0.1 s a composition) and words Hydra's refusals; then an added key (`+group.key=value`) must be one its
group's class takes (a parameter of its _target_, a field of the trainer's schema), since nothing reads any other.
"""

import difflib
import inspect
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from snnexp import conf_dir
from snnexp.config import TrainerConfig
from snnexp.errors import ConfigError

# keys that the run reads although no class takes them: a reproduction's published accuracy
READ_ELSEWHERE = {"paper": {"test_acc"}}
# arguments the code gives a class, never the config: the optimizer's parameters, the schedule's optimizer
PASSED_BY_CODE = {"params", "optimizer"}


def check(command: str, args: Sequence[str], config_dirs: Sequence[Path] = ()) -> None:
    """ConfigError naming the first unknown key, group or option among the overrides `args` of `snnexp <command>`
    (flags such as -m are skipped), with the closest match. `config_dirs`: the user's config folders (--config-dir),
    searched before snnexp's own."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    search = [f"hydra.searchpath=[{','.join(f'file://{Path(d).resolve()}' for d in config_dirs)}]"] \
        if config_dirs else []
    fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
    trials = [fixed] + [[*fixed, f"{o.get_key_element()}={v}"] for o in overrides if o.is_sweep_override()
                        for v in o.sweep_string_iterator()]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app (a test): this check is the app's business
        return
    added = [o for o in overrides if (o.is_add() or o.is_force_add()) and not _is_group(o.key_or_group, config_dirs)]
    with initialize_config_dir(str(conf_dir()), version_base="1.3", job_name=command):
        for trial in trials:
            try:
                compose(command, overrides=[*search, *trial])
            except HydraException as e:
                chosen = _with_choices(command, search, trial, config_dirs)
                raise ConfigError(_explain(e, chosen, command, config_dirs)) from None
            if added:  # checked against the config without them: which keys were there to be set
                plain = compose(command, overrides=[*search, *(t for t in trial if t not in
                                                               {o.input_line for o in added})])
                for o in added:
                    _check_added(o.key_or_group, plain)


def _with_choices(command: str, search: Sequence[str], overrides: Sequence[str],
                  config_dirs: Sequence[Path]) -> DictConfig:
    """The config with the options `overrides` choose (neuron=lif) and none of their keys: what a misspelt key is
    explained against (neuron=lif neuron.tau0=3: LIF's keys, not the default neuron's); the default config where
    those do not compose (an unknown option, which is explained without it). Composed only when a refusal is to be
    explained: a command line that composes pays for no more than its own compositions."""
    from hydra import compose
    from hydra.errors import HydraException

    choices = [o for o in overrides if _is_group(o.split("=", 1)[0].lstrip("+~"), config_dirs)]
    try:
        return compose(command, overrides=[*search, *choices])
    except HydraException:
        return compose(command, overrides=list(search))


def _is_group(name: str, config_dirs: Sequence[Path]) -> bool:
    return any((Path(d) / name).is_dir() for d in (conf_dir(), *config_dirs))


def _options(group: str, config_dirs: Sequence[Path]) -> List[str]:
    return sorted({p.stem for d in (conf_dir(), *config_dirs) for p in (Path(d) / group).glob("*.yaml")})


def _groups(config_dirs: Sequence[Path]) -> List[str]:
    return sorted({p.name for d in (conf_dir(), *config_dirs) for p in Path(d).iterdir()
                   if p.is_dir() and not p.name.startswith(("_", "."))})


def _closest(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {prefix}{match[0]}?" if match else ""


def _explain(error: Exception, base: DictConfig, command: str, config_dirs: Sequence[Path]) -> str:
    """Hydra's refusal in our words: an unknown option, group or key, with the closest match; another refusal in
    Hydra's words, with the first line of its cause ("Error merging override trainer.T=abc: Value 'abc' ...")."""
    first = str(error).splitlines()[0]
    if first.startswith("In ") and "Could not find '" in first:  # an option of a group: "Could not find 'neuron/plf'"
        group, _, option = first.split("Could not find '", 1)[1].rstrip("'").rpartition("/")
        options = _options(group, config_dirs)
        return (f"{group}={option}: no such option{_closest(option, options, group + '=')} ({group}'s options: "
                f"{', '.join(options)}; `snnexp {command} --help` lists every group)")
    if first.startswith("Could not override '"):
        return _unknown_key(first.split("'")[1], base, command, config_dirs)
    cause = str(error.__cause__ or "").strip().splitlines()
    return f"{first}: {cause[0]}" if cause else first


def _unknown_key(key: str, base: DictConfig, command: str, config_dirs: Sequence[Path]) -> str:
    """`key` is not in the config: a group misspelt (`nueron=lif`) or a key its group's option lacks."""
    parent, _, leaf = key.rpartition(".")
    if not parent:
        names = [*_groups(config_dirs), *[k for k in base if k != "hydra"]]
        return f"{key}: snnexp {command} has no config group or key '{key}'{_closest(key, names)}"
    node = OmegaConf.select(base, parent)
    keys = [k for k in node if not k.startswith("_")] if isinstance(node, DictConfig) else []
    hint = _closest(leaf, keys, parent + ".")
    others = _options_with(parent, leaf, config_dirs)
    where = f"; {', '.join(others)} {'has' if len(others) == 1 else 'have'} it" if others else ""
    return f"{key}: {_owner(parent, node)} has no key '{leaf}'{hint}{where} (its keys: {', '.join(keys)})"


def _owner(parent: str, node) -> str:
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return f"{parent} ({target.rpartition('.')[2]})" if target else parent


def _options_with(group: str, leaf: str, config_dirs: Sequence[Path]) -> List[str]:
    """The options of a config group whose file sets `leaf` (neuron.tau: lif, alif, stbp)."""
    found = []
    for option in _options(group, config_dirs) if _is_group(group, config_dirs) else []:
        path = next(Path(d) / group / f"{option}.yaml" for d in (*config_dirs, conf_dir())
                    if (Path(d) / group / f"{option}.yaml").is_file())
        loaded = OmegaConf.load(path)
        node = loaded.get(group, loaded) if "_target_" not in loaded else loaded  # `# @package _global_` files
        if isinstance(node, DictConfig) and leaf in node:
            found.append(f"{group}={option}")
    return found


def _check_added(key: str, cfg: DictConfig) -> None:
    """An added key (`+a.b=1`) must be one that something reads: a parameter of its node's class, a field of the
    trainer, a key listed in READ_ELSEWHERE; Hydra's own settings (hydra.*) are Hydra's."""
    parent, _, leaf = key.rpartition(".")
    if parent.split(".")[0] == "hydra":
        return
    node = OmegaConf.select(cfg, parent) if parent else cfg
    allowed = _takes(parent, node)
    if allowed is None or leaf in allowed - PASSED_BY_CODE:
        return
    where = _owner(parent, node) if parent else "the config"
    hint = _closest(leaf, allowed, f"{parent}." if parent else "")
    raise ConfigError(f"+{key}: {where} takes no key '{leaf}', so nothing would read it{hint} (its keys: "
                      f"{', '.join(sorted(allowed - PASSED_BY_CODE)) or 'none'})")


def _takes(parent: str, node) -> Optional[set]:
    """The keys `node` (at `parent`) may hold; None where any may (a class that takes **options checks them)."""
    if parent == "trainer":
        return set(TrainerConfig.__dataclass_fields__)
    if parent in READ_ELSEWHERE:
        return READ_ELSEWHERE[parent]
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return {k for k in node if not k.startswith("_")} if isinstance(node, DictConfig) else set()
    from hydra.utils import get_method

    try:
        target = get_method(node["_target_"])
    except Exception:  # a target that does not import: building the run says so
        return None
    names = _parameters(target)
    return None if names is None else names | {k for k in node if not k.startswith("_")}


def _parameters(target) -> Optional[set]:
    """The keyword arguments `target` takes; a class's **kwargs passed on to its bases (a neuron's to
    SpikingNeuron) add theirs, up to torch's Module and object, which take none. None for a function that takes any
    (a dataset loader's **options, which it checks itself)."""
    import torch

    if not inspect.isclass(target):
        parameters = inspect.signature(target).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            return None
        return {p.name for p in parameters}
    names = set()
    for cls in target.__mro__:
        if cls in (object, torch.nn.Module) or "__init__" not in vars(cls):
            continue
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # after self
        names |= {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names
