"""Every kind of run as the rest of the tool finds it: its command, what marks it finished, how
``--from`` turns its manifest back into flags, and whether a sweep runs it. The report's sections,
``--from``, the sweep and the source checks read this registry instead of switching on kinds.

A new kind registers itself with :func:`register` (built-in kinds are listed here, so no import order
decides what is registered).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from babelheads.errors import BabelheadsError

Replay = Callable[[dict, Path], dict[str, object]]
"""A run's manifest (and directory) -> its command's flags by name, for ``--from``."""

FINALIZED = "finalized.json"
"""What the lifecycle writes once a run's tables are all written (see experiments/base.py)."""


@dataclass(frozen=True)
class Kind:
    """name : the manifest's ``spec.kind``. command : the command that makes such runs. finished :
    the file that marked a finished run before the lifecycle wrote :data:`FINALIZED` (older runs).
    replay : its --from mapping, None when --from cannot replay it. sweepable : a sweep file may
    name its command (it decodes, so its samples are worth sharding over workers)."""

    name: str
    command: str
    replay: Replay | None = None
    finished: str | None = None
    sweepable: bool = False

    def is_finished(self, run: Path) -> bool:
        run = Path(run)
        return (run / FINALIZED).exists() or (self.finished is not None and (run / self.finished).exists())


REGISTRY: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add ``kind``; registering the same entry twice is harmless, two different ones under one name
    are refused."""
    if REGISTRY.get(kind.name, kind) != kind:
        raise ValueError(f"Kind {kind.name!r} is already registered differently.")
    REGISTRY[kind.name] = kind
    return kind


def kind(name: str) -> Kind:
    """The registered kind ``name``, or one line naming the known ones."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(str(name), list(REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise BabelheadsError(f"Unknown kind of run {name!r}.{hint} Known: {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def sweepable_commands() -> list[str]:
    return [entry.command for entry in REGISTRY.values() if entry.sweepable]


# --from mappings: a manifest's config has the run's settings by field; most fields are flags of the
# same name, some sit in nested settings or have another flag name.


def _flatten(config: dict, nested: tuple[str, ...]) -> dict:
    config = dict(config)
    flat: dict = {}
    for key in nested:
        if isinstance(config.get(key), dict):
            flat.update(config.pop(key))
    if isinstance(config.get("head_mask"), dict):
        config["head_mask"] = config["head_mask"]["file"]
    return {**flat, **config}


def _detect(manifest: dict, run: Path) -> dict:
    return {**_flatten(manifest["spec"]["config"], ("task",)), **manifest.get("analysis", {})}


def _importance(manifest: dict, run: Path) -> dict:
    values = _flatten(manifest["spec"]["config"], ("texts",))
    selection = Path(run) / "selection.json"  # how its heads were last selected
    if selection.is_file():
        try:
            recorded = json.loads(selection.read_text())
            values.update({key: recorded[key] for key in ("formula", "percentile", "min_languages", "share")})
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise BabelheadsError(
                f"--from {run}: {selection} is damaged ({error}). Run its importance command again to "
                "rewrite it."
            ) from None
    return values


def _dynamic(manifest: dict, run: Path) -> dict:
    config = manifest["spec"]["config"]
    if config.get("recording"):  # the analyses of a detect run's recording
        return {"recording": config["recording"]}
    values = _flatten(config, ("niah", "multihop"))
    if config.get("task") == "multihop":  # the two-hop settings' own names
        values["count"], values["questions"] = values.pop("questions"), values.pop("source")
        values["lengths"] = [values.pop("length")]
    return values


def _rag(manifest: dict, run: Path) -> dict:
    config = dict(manifest["spec"]["config"])
    loop = dict(config.pop("loop"))
    if "heads" in loop:  # runs before the loop's count was named head_count
        loop["head_count"] = loop.pop("heads")
    return {**loop, **config}


def _with_niah(manifest: dict, run: Path) -> dict:
    config = dict(manifest["spec"]["config"])
    values = _flatten(config, ("niah", "settings"))  # compress: the policies' settings are flags
    # --seed is the haystacks' seed (compress and dynamic-ablate alike); the config's own seed, which
    # draws random heads, has no flag, and replayed as --seed it would test on the heads run's haystacks.
    values["seed"] = config["niah"]["seed"]
    return values


def _compare(manifest: dict, run: Path) -> dict:
    return {**manifest["spec"]["config"], "runs": list(manifest["spec"]["runs"])}


def _plain(manifest: dict, run: Path) -> dict:
    return _flatten(manifest["spec"]["config"], ())


for _entry in (
    Kind("detect", "detect", _detect, finished="scores.parquet", sweepable=True),
    Kind("ablate", "ablate", _plain, finished="ablation.parquet", sweepable=True),
    Kind("compare", "compare", _compare, finished="settings.parquet"),
    Kind("importance", "importance", _importance, finished="selection.json", sweepable=True),
    Kind("language-test", "language-test", _plain, sweepable=True),
    Kind("adapt", "adapt", _plain, finished="adaptation.parquet", sweepable=True),
    Kind("dynamic", "dynamic", _dynamic, finished="dynamic_stats.parquet", sweepable=True),
    Kind("dynamic-ablate", "dynamic-ablate", _with_niah, finished="dynamic_ablation.parquet", sweepable=True),
    Kind("rag", "rag", _rag, finished="rag_scores.parquet", sweepable=True),
    Kind("compress", "compress", _with_niah, finished="compress_scores.parquet", sweepable=True),
):
    register(_entry)
