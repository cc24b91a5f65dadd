"""Needles: a statement to hide, a question about it, and the answer span inside the statement."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from babelheads.data.roots import data_roots
from babelheads.errors import TaskError

REQUIRED = ("id", "statement", "question", "answer")


@dataclass(frozen=True)
class Needle:
    id: str
    statement: str
    question: str
    answer: str
    kind: str = "fact"
    answer_start: int | None = None

    @property
    def answer_offset(self) -> int:
        """Character offset of the answer inside the statement: ``answer_start`` when given, else its only
        occurrence (a needle whose answer occurs twice without ``answer_start`` is refused on loading)."""
        return self.statement.index(self.answer) if self.answer_start is None else self.answer_start


def load_needles(source: str, language: str, extra_root: Path | None = None) -> list[Needle]:
    """``source`` is 'builtin' (the data roots), a JSON file, or a directory holding ``<language>.json``."""
    if source == "builtin":
        candidates = [root / "needles" / f"{language}.json" for root in data_roots(extra_root)]
        path = next((candidate for candidate in candidates if candidate.exists()), None)
        if path is None:
            raise TaskError(f"No built-in needles for language {language!r}. Pass --needles FILE_OR_DIR.")
    else:
        path = Path(source)
        if path.is_dir():
            path = path / f"{language}.json"
        if not path.exists():
            raise TaskError(f"Needle file not found: {path}. Pass a JSON file or a directory of <lang>.json.")
    return parse_needles(path)


def parse_needles(path: Path) -> list[Needle]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TaskError(f"Needle file {path} is not valid JSON: {error}.") from error
    if not isinstance(items, list) or not items:
        raise TaskError(f"Needle file {path} must hold a non-empty JSON list of needles.")
    needles = []
    for index, item in enumerate(items):
        missing = [key for key in REQUIRED if not isinstance(item, dict) or not item.get(key)]
        if missing:
            raise TaskError(f"Needle {index} in {path} lacks {', '.join(missing)}.")
        if item["answer"] not in item["statement"]:
            raise TaskError(
                f"Needle {item['id']!r} in {path}: its answer {item['answer']!r} does not occur in its "
                "statement. The answer must be a verbatim span of the statement."
            )
        start = item.get("answer_start")
        if start is not None:
            if (
                not isinstance(start, int)
                or item["statement"][start : start + len(item["answer"])] != item["answer"]
            ):
                raise TaskError(
                    f"Needle {item['id']!r} in {path}: answer_start {start!r} does not point at its answer "
                    f"{item['answer']!r} in the statement. Give the character offset where the answer begins."
                )
        elif item["statement"].count(item["answer"]) > 1:
            raise TaskError(
                f"Needle {item['id']!r} in {path}: its answer {item['answer']!r} occurs more than once "
                'in its statement, so the span to score is ambiguous. Add "answer_start" (the character '
                "offset of the intended occurrence) or rephrase the statement."
            )
        needles.append(
            Needle(
                item["id"],
                item["statement"],
                item["question"],
                item["answer"],
                item.get("kind", "fact"),
                start,
            )
        )
    return needles
