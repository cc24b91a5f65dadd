"""Where language data lives: the built-in resources, or a user's directory of the same layout.

A data root holds ``languages/<code>.json``, ``corpus/<code>/*.txt`` and ``needles/<code>.json``.
Adding a language means adding those three things; no code changes.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

BUILTIN_ROOT = Path(str(files("babelheads").joinpath("data", "resources")))


def data_roots(extra: Path | None = None) -> list[Path]:
    """Roots searched in order: the user's first, so it can override a built-in language."""
    return [extra, BUILTIN_ROOT] if extra is not None else [BUILTIN_ROOT]


def language_file(folder: str, source: str, language: str, extra_root: Path | None) -> Path | None:
    """``<folder>/<language>.json`` of the first data root that has it when ``source`` is 'builtin',
    else ``source`` itself or its ``<language>.json`` when it is a directory; None when not found."""
    if source == "builtin":
        found = (root / folder / f"{language}.json" for root in data_roots(extra_root))
        return next((path for path in found if path.exists()), None)
    path = Path(source)
    if path.is_dir():
        path = path / f"{language}.json"
    return path if path.is_file() else None
