"""Config files and overrides: TrainConfig <-> plain dicts <-> TOML / YAML / JSON files.

Precedence (lowest to highest): the dataclass defaults, the ``--config`` file,
the command-line flags. A partial file is fine: missing settings keep their
defaults. Unknown names are errors that list the allowed ones. Solver settings
in the flat format of configs written before the per-solver sections
(``solver.eps``, ``solver.anderson_m``) are migrated on the way in
(:func:`~eqprop.solvers.registry.migrate_flat`), so old runs keep loading.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, TypeVar

import yaml

from ..errors import ConfigError
from ..solvers.registry import SolverConfig, migrate_flat
from .config import TrainConfig

__all__ = ["CONFIG_SUFFIXES", "apply_overrides", "config_from_dict", "config_to_dict",
           "flatten", "load_config_file", "resolve_config", "save_config", "unflatten"]

C = TypeVar("C")

#: settings that configs of earlier versions may hold and that are gone: ignored on load
REMOVED = ("run.track_every",)  # it paced Python trackers only; each now decides itself

CONFIG_SUFFIXES = (".toml", ".yaml", ".yml", ".json")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A (nested) config dataclass as a nested dict of plain values."""
    return dataclasses.asdict(cfg)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the field type ``tp`` (int, float, bool, str, X | None)."""
    if isinstance(tp, UnionType) or typing.get_origin(tp) is typing.Union:
        args = typing.get_args(tp)
        if value is None and NoneType in args:
            return None
        (inner,) = [a for a in args if a is not NoneType]
        return _coerce(inner, value, where)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, bool, str) and type(value) is tp:
        return value
    raise ConfigError(f"{where}={value!r}: expected {getattr(tp, '__name__', tp)}")


def apply_overrides(base: C, values: dict[str, Any], where: str = "") -> C:
    """A copy of the dataclass ``base`` with the (nested) ``values`` replaced.

    Raises:
        ConfigError: an unknown setting name, a value of the wrong type, or a value
            that the section's validation rejects.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'}: expected a table of settings, "
                          f"got {type(values).__name__}")
    if isinstance(base, SolverConfig):
        values = migrate_flat(values)  # a config of the flat format (before issue 17)
    if isinstance(base, TrainConfig):
        values = _without_removed(values)
    hints = typing.get_type_hints(type(base))
    names = [f.name for f in dataclasses.fields(base)]
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown setting {where}{key!r}: allowed are {', '.join(names)}")
    changes = {}
    for key, value in values.items():
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            changes[key] = apply_overrides(current, value, f"{where}{key}.")
        else:
            changes[key] = _coerce(hints[key], value, f"{where}{key}")
    return dataclasses.replace(base, **changes)


def _without_removed(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for path in REMOVED:
        section, name = path.split(".")
        if isinstance(out.get(section), dict) and name in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != name}
    return out


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a (partial) nested dict; missing settings keep defaults."""
    return apply_overrides(TrainConfig(), d)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML, YAML or JSON config file into a nested dict.

    Raises:
        ConfigError: missing file, unknown suffix, or a syntax error.
    """
    p = Path(path)
    if p.suffix.lower() not in CONFIG_SUFFIXES:
        raise ConfigError(f"config file {str(p)!r}: unknown format; use one of "
                          f"{', '.join(CONFIG_SUFFIXES)}")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"config file {str(p)!r} cannot be parsed: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r}: expected a table of sections "
                          f"(model, solver, ...), got {type(data).__name__}")
    return data


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config (YAML, or JSON for a ``.json`` path); loadable with
    ``--config``."""
    p = Path(path)
    d = config_to_dict(cfg)
    text = (json.dumps(d, indent=2) + "\n" if p.suffix == ".json"
            else yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)


def resolve_config(cli: TrainConfig, base: dict[str, Any] | None,
                   defaults: TrainConfig | None = None) -> TrainConfig:
    """Merge the defaults, a file's (or saved run's) settings and command-line flags.

    Here a flag counts as given when its value differs from the default, so a value
    typed equal to the default does not override the file. ``eqprop train`` does not
    merge this way: it parses the flags onto the file's (or the resumed run's) values
    (:func:`eqprop.cli.train.base_args`), so every flag on its command line wins.

    Args:
        cli: the config parsed from the command line (defaults where no flag was given).
        base: nested settings from a config file or a saved run; None for none.
        defaults: the defaults the command line started from.

    Returns:
        The merged, validated :class:`TrainConfig`.
    """
    defaults = TrainConfig() if defaults is None else defaults
    if base is None:
        return cli
    flat_default, flat_cli = flatten(config_to_dict(defaults)), flatten(config_to_dict(cli))
    given = {k: v for k, v in flat_cli.items() if flat_default.get(k) != v}
    merged = apply_overrides(defaults, base)
    return apply_overrides(merged, unflatten(given))
