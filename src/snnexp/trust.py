"""What comes from disk is data: the checks that keep a checkpoint or a run folder made elsewhere from running code.

snnexp builds its parts with Hydra's `instantiate`, which imports and calls whatever a config's `_target_` names,
with whatever arguments sit beside it. So where a config comes from decides whether it may be built:

- Trusted: the config folders on this machine that this command line searches (snnexp's own conf/, and a folder
  added with `--config-dir DIR` or `hydra.searchpath=[file://DIR]`) and the overrides typed on the command line.
  They are yours, and may name any target.
- Checked, never trusted: the config stored in a checkpoint (`snnexp eval` and `snnexp export` rebuild the network
  from it), and a run folder's `.hydra/overrides.yaml` (`snnexp train resume=PATH` replays it). Either may come
  from someone else's machine.

`check_stored_config` lets a stored config name only targets that a YAML file of the trusted folders names, at any
depth (a dict nested in an argument is built too), and no interpolation (`${oc.create:...}` would build a
config node, and with it a target, only when read). `check_replayed` lets a replayed override only choose an
option of a trusted config group or set a key of the composed config: never Hydra's own settings (`hydra.*`,
`hydra/...`: Hydra builds its callbacks and launchers before snnexp sees the config), never a key the config does
not have (`+a.b=...`, `++a.b=...`), never a target the trusted folders do not name, never an interpolation.
Everything refused is named in one line with the key and the target; a run folder's own settings that a user does
want replayed can be typed on the command line, where they are trusted.

Torch-free, like errors.py: the CLI runs these checks before Hydra starts.
"""

import functools
from pathlib import Path
from typing import Any, Iterator, List, Sequence, Set, Tuple

import yaml

from snnexp.errors import CheckpointError

TARGET = "_target_"


def known_targets(config_dirs: Sequence[Path]) -> Set[str]:
    """Every `_target_` that a YAML file under `config_dirs` names, at any depth."""
    return set().union(*(_targets_in(Path(d).resolve()) for d in config_dirs))


@functools.lru_cache(maxsize=None)
def _targets_in(config_dir: Path) -> frozenset:
    found = set()
    for path in sorted(config_dir.rglob("*.yaml")):
        try:
            node = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):  # Hydra reports a broken file of its own when used
            continue
        found.update(target for _, target in _targets(node, ""))
    return frozenset(found)


def _targets(node: Any, where: str) -> Iterator[Tuple[str, Any]]:
    """(key, target) of every dict in `node` that has a `_target_`, depth first; key is the dotted path."""
    if isinstance(node, dict):
        if TARGET in node:
            yield f"{where}.{TARGET}" if where else TARGET, node[TARGET]
        for key, value in node.items():
            yield from _targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def _interpolations(node: Any, where: str) -> Iterator[Tuple[str, str]]:
    """(key, value) of every string in `node` that OmegaConf would read as an interpolation."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _interpolations(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _interpolations(value, f"{where}[{i}]")
    elif isinstance(node, str) and "${" in node:
        yield where, node


def check_stored_config(config: Any, source: str, config_dirs: Sequence[Path]) -> None:
    """Refuse the config stored in a checkpoint (`source` names the file) unless every target in it is one the
    trusted `config_dirs` name and it holds no interpolation (snnexp saves it resolved). Raises CheckpointError."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: its stored config is a {type(config).__name__}, not a mapping: not a "
                              "checkpoint snnexp wrote")
    allowed = known_targets(config_dirs)
    for key, target in _targets(config, ""):
        if not _allowed(target, allowed):
            raise CheckpointError(f"{source}: its stored config names {key}={target!r}, which no config of snnexp's "
                                  f"(or of your --config-dir) names: refusing to build it, since a checkpoint is "
                                  f"data, never code. {_HINT}")
    for key, value in _interpolations(config, ""):
        raise CheckpointError(f"{source}: its stored config has an interpolation at {key} ({value!r}); snnexp "
                              f"stores configs resolved, so this file was not written by snnexp train. {_HINT}")


_HINT = ("If the file is from a source you trust and uses your own classes, put a config naming them in a folder "
         "and add it with --config-dir DIR")


def check_replayed(overrides: List[str], source: Path, config_dirs: Sequence[Path]) -> None:
    """Refuse a run folder's stored overrides (`source`: its overrides.yaml) unless each one only chooses an option
    of a trusted config group or sets a key of snnexp's config (module docstring). Raises CheckpointError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    groups = {p.relative_to(d).as_posix() for d in map(Path, config_dirs) if d.is_dir()
              for p in d.rglob("*") if p.is_dir()}
    allowed = known_targets(config_dirs)
    for line in overrides:
        try:
            override = parser.parse_override(line)
        except HydraException as e:
            why = f"is not an override Hydra can read ({str(e).splitlines()[0]})"
        else:
            why = _replay_problem(override, groups, allowed)
        if why:
            raise CheckpointError(f"resume: {source} holds the override {line!r}, which {why}: a run folder is data, "
                                  "and snnexp replays only choices of its own config groups and settings of their "
                                  "keys. If that override is yours, give it on the command line instead")


def _replay_problem(override, groups: Set[str], allowed: Set[str]) -> str:
    """Why a parsed override may not be replayed, or ''."""
    from hydra.core.override_parser.types import OverrideType

    key, package = override.key_or_group, override.package or ""
    if _is_hydra(key) or _is_hydra(package.removeprefix("_global_").lstrip(".")):
        return "sets Hydra's own config (Hydra builds its callbacks and launchers before snnexp sees the config)"
    if override.is_sweep_override():
        return "is a sweep (a run's own overrides hold one value each)"
    if override.type in (OverrideType.ADD, OverrideType.FORCE_ADD) and key not in groups:
        return f"adds the key {key}, which snnexp's config does not have"
    if override.type == OverrideType.DEL:
        return ""
    value = override.value()
    named = [(key, value)] if key.split(".")[-1] == TARGET else []
    for where, target in [*named, *_targets(value, key)]:
        if not _allowed(target, allowed):
            return f"names the target {where}={target!r}, which no config of snnexp's (or of your --config-dir) names"
    for where, text in _interpolations(value, key):
        return f"holds an interpolation ({text!r} at {where}), which could build a config node when read"
    return ""


def _allowed(target: Any, allowed: Set[str]) -> bool:
    return isinstance(target, str) and target in allowed  # a list or dict as target: unhashable, and never ours


def _is_hydra(key: str) -> bool:
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))
