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
