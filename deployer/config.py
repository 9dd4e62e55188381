"""The configuration file below the command line: deployer.toml or [tool.deployer] of pyproject.toml.

Precedence is flags > environment (DEPLOYER_*) > configuration file > defaults. Flags and the
environment are click's job; this module turns the configuration file into click's
``default_map`` (validated: an unknown key is an error naming the file). What CI tells us about
who deploys what is ``ci.environment``'s.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployer.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CONFIG_FILE = "deployer.toml"


def find_config_file(cwd: Path, explicit: Path | None) -> Path | None:
    """--config / DEPLOYER_CONFIG, else ./deployer.toml, else ./pyproject.toml with [tool.deployer]."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(
                f"configuration file {explicit} not found — check --config / DEPLOYER_CONFIG"
            )
        return explicit
    candidate = cwd / CONFIG_FILE
    if candidate.is_file():
        return candidate
    pyproject = cwd / "pyproject.toml"
    if (
        pyproject.is_file()
        and "tool" in (data := _read_toml(pyproject))
        and "deployer" in data["tool"]
    ):
        return pyproject
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def read_config_file(path: Path) -> dict[str, Any]:
    """The deployer settings in a file (the whole deployer.toml, or [tool.deployer] of pyproject.toml)."""
    data = _read_toml(path)
    if path.name == "pyproject.toml":
        section = data.get("tool", {}).get("deployer", {})
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: [tool.deployer] must be a table")
        data = section
    return {key.replace("-", "_"): value for key, value in data.items()}


def build_default_map(
    settings: Mapping[str, Any], commands: Mapping[str, Mapping[str, bool]], source: Path
) -> dict[str, dict[str, Any]]:
    """Give each command the file's values for its options (param -> takes a list); refuse unknown keys."""
    known = {name for params in commands.values() for name in params}
    for key, value in settings.items():
        if key not in known:
            raise ConfigError(
                f"{source}: unknown setting {key!r} — known settings are: {', '.join(sorted(known))}"
            )
        # TOML has nan and inf; NaN passes every range check and inf means no limit at all
        for item in _as_list(value):
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(
                    f"{source}: {key} = {item} is not a finite number — give a number like 300"
                )
    return {
        command: {k: _as_list(v) if params[k] else v for k, v in settings.items() if k in params}
        for command, params in commands.items()
    }


def nest_default_map(flat: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """click's nested default_map: 'serve run' -> {'serve': {'run': ...}} (a group's commands)."""
    nested: dict[str, Any] = {}
    for key, values in flat.items():
        group, _, command = key.partition(" ")
        if command:
            nested.setdefault(group, {})[command] = values
        else:
            nested[key] = values
    return nested


def _as_list(value: Any) -> list[Any]:
    """A repeatable option may be written as one value or a list in the file."""
    return list(value) if isinstance(value, (list, tuple)) else [value]
