"""Negative controls made of data: one language under other codes.

A copy uses the source language's corpus, needles and templates under a new code, so a study over the
source and its copies asks "different languages" that use the same heads by construction: no claim
that languages differ may hold on it (shared/reference/claims.md, the same-language copy).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from babelheads.data.roots import data_roots, language_file
from babelheads.errors import BabelheadsError

FOLDERS = ("languages", "needles")


def write_copies(source: str, codes: list[str], root: Path, data: Path | None = None) -> Path:
    """Write ``source``'s language file, corpus and needles under each code of ``codes`` into the data
    directory ``root`` (created; an existing copy is replaced) and return it. ``data`` : where the
    source is read from besides the built-in data."""
    if source in codes:
        raise BabelheadsError(f"A copy of {source} needs another code than {source}.")
    root.mkdir(parents=True, exist_ok=True)
    for folder in FOLDERS:
        found = language_file(folder, "builtin", source, data)
        if found is None:
            raise BabelheadsError(f"No {folder}/{source}.json to copy. Use a language with built-in data.")
        original = json.loads(found.read_text(encoding="utf-8"))
        for code in codes:
            content = original
            if folder == "languages":
                name = f"{original.get('name', source)} (copy as {code})"
                content = {**original, "code": code, "name": name}
            (root / folder).mkdir(exist_ok=True)
            (root / folder / f"{code}.json").write_text(json.dumps(content, ensure_ascii=False, indent=1))
    corpus = _corpus(source, data)
    for code in codes:
        target = root / "corpus" / code
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(corpus, target)
    return root


def _corpus(source: str, data: Path | None) -> Path:
    for candidate in data_roots(data):
        if (candidate / "corpus" / source).is_dir():
            return candidate / "corpus" / source
    raise BabelheadsError(f"No corpus/{source}/ to copy. Use a language with built-in data.")
