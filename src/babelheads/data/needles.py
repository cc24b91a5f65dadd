"""Needles: a statement to hide, a question about it, and the answer span inside the statement."""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

from babelheads.data.languages import load_language
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


MAGIC_NEEDLES = 8


def magic_code(index: int) -> str:
    """The code of magic needle ``index``: a UUID-shaped string, the same in every language and run."""
    return str(uuid.UUID(int=random.Random(f"babelheads-magic-{index}").getrandbits(128), version=4))


def magic_needles(language: str, extra_root: Path | None = None) -> list[Needle]:
    """'The magic word is <code>.' / 'What is the magic word?' in ``language`` (the NIAH variant of
    "Retrieval Heads are Dynamic"), with the language file's templates."""
    spoken = load_language(language, extra_root)
    if not spoken.magic_statement or "{code}" not in spoken.magic_statement or not spoken.magic_question:
        raise TaskError(
            f"Language {language!r} has no magic-word needle. Add magic_statement (with {{code}}) and "
            "magic_question to its language file, or use --needles builtin."
        )
    return [
        Needle(
            f"magic-{index}",
            spoken.magic_statement.format(code=magic_code(index)),
            spoken.magic_question,
            magic_code(index),
            "magic",
        )
        for index in range(MAGIC_NEEDLES)
    ]


def load_needles(source: str, language: str, extra_root: Path | None = None) -> list[Needle]:
    """``source`` is 'builtin' (the data roots), 'magic' (generated magic-word needles), a JSON file, or
    a directory holding ``<language>.json``."""
    if source == "magic":
        return magic_needles(language, extra_root)
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
