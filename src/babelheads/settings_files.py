"""Command settings from elsewhere than flags: a TOML or YAML file, or an existing run's manifest.

Both give values for a command's flags, by the flags' own names (``needles-per-cell`` or
``needles_per_cell``); flags given on the command line win over both, and a file wins over a replayed run.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from babelheads.errors import BabelheadsError
from babelheads.kinds import REGISTRY

LIST_FIELDS = ("runs",)
"""Flags that take several values as a list (an argument given many times), not comma-separated text."""


def read_settings_file(path: Path, command: str, fields: set[str]) -> dict[str, object]:
    """The file's values for ``command``: top-level keys, or a table named after the command."""
    data = read_table_file(path, "Config file")
    if isinstance(data.get(command), dict):
        data = {**{k: v for k, v in data.items() if not isinstance(v, dict)}, **data[command]}
    return _as_flags(data, fields, f"config file {path}")


def read_table_file(path: Path, what: str) -> dict:
    """A TOML or YAML file holding a table, or one clear error naming ``what`` and the fix."""
    if not path.is_file():
        raise BabelheadsError(f"{what} {path} not found. Check the path.")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise BabelheadsError(f"{what} {path} must end in .toml, .yaml or .yml.")
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as error:  # tomllib.TOMLDecodeError, yaml.YAMLError
        raise BabelheadsError(f"{what} {path} does not parse: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BabelheadsError(f"{what} {path} must hold a table of settings, not {type(data).__name__}.")
    return data


def replay_run(run: Path, command: str, fields: set[str]) -> dict[str, object]:
    """The flags that made ``run`` (from its manifest), for re-running it or a variant of it."""
    manifest_path = Path(run) / "manifest.json"
    if not manifest_path.is_file():
        raise BabelheadsError(f"--from {run}: not a babelheads run (no manifest.json). Check the path.")
    from babelheads.runs import RunStore

    # The store's reader refuses a truncated manifest or one without a spec, in one line.
    manifest = RunStore(Path(run)).manifest()
    kind = manifest["spec"]["kind"]
    entry = REGISTRY.get(kind)
    if entry is None or entry.replay is None or entry.command != command:
        raise BabelheadsError(
            f"--from {run}: that is a {kind} run; `babelheads {command}` replays {command} runs."
        )
    if not isinstance(manifest["spec"].get("config"), dict):
        raise BabelheadsError(
            f"--from {run}: its manifest.json records no config to replay. Give the flags instead."
        )
    values = entry.replay(manifest, Path(run))
    values.pop("needle_ids", None)
    if "data_dir" in values:
        values["data"] = values.pop("data_dir")
    return _as_flags({k: v for k, v in values.items() if k in fields and v is not None}, fields, f"run {run}")


def _as_flags(data: dict, fields: set[str], origin: str) -> dict[str, object]:
    flags: dict[str, object] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise BabelheadsError(
                f"{origin}: unknown setting {key!r}. Known settings: {', '.join(sorted(fields))}."
            )
        flags[name] = list(value) if name in LIST_FIELDS and isinstance(value, list) else _flag_text(value)
    return flags


def _flag_text(value: object) -> object:
    """Lists become the comma-separated text the flags take; scalars stay as they are."""
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return value
