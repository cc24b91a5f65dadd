"""A language is data: a name, how sentences end, prompt templates and how to tokenize answers."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from babelheads.data.roots import data_roots
from babelheads.errors import TaskError

ANSWER_TOKENIZERS = ("words", "chars", "jieba")


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    script: str
    answer_tokenizer: str
    sentence_end: str
    joiner: str
    plain_prompt: str
    chat_prompt: str
    answer_in: str
    magic_statement: str = ""
    """The needle of "Retrieval Heads are Dynamic" with a {code} slot: 'The magic word is {code}.'"""
    magic_question: str = ""

    def __post_init__(self) -> None:
        if self.answer_tokenizer not in ANSWER_TOKENIZERS:
            raise TaskError(
                f"Language {self.code!r}: answer_tokenizer must be one of {ANSWER_TOKENIZERS}. "
                f"Got {self.answer_tokenizer!r}."
            )
        for template in (self.plain_prompt, self.chat_prompt):
            if "{context}" not in template or "{question}" not in template:
                raise TaskError(
                    f"Language {self.code!r}: prompt templates need {{context}} and {{question}}."
                )

    def sentence_boundaries(self, text: str) -> list[int]:
        """Character offsets where a sentence ends and a needle may go: after the end mark, before any
        space, and at the start of each paragraph (not after a heading, which has no end mark).
        Always includes 0 and len(text)."""
        marks = re.escape(self.sentence_end)
        pattern = rf"[{marks}](?=\s|$)" if self.joiner else rf"[{marks}]"
        cuts = {match.end() for match in re.finditer(pattern, text)}
        cuts.update(match.end() for match in re.finditer(r"\n\s*\n", text))
        return sorted({0, len(text), *cuts})


def available_languages(extra_root: Path | None = None) -> list[str]:
    codes: set[str] = set()
    for root in data_roots(extra_root):
        codes.update(path.stem for path in (root / "languages").glob("*.json"))
    return sorted(codes)


def load_language(code: str, extra_root: Path | None = None) -> Language:
    for root in data_roots(extra_root):
        path = root / "languages" / f"{code}.json"
        if path.exists():
            try:
                return Language(**json.loads(path.read_text(encoding="utf-8")))
            except (json.JSONDecodeError, TypeError) as error:
                raise TaskError(f"Language file {path} is invalid: {error}.") from error
    known = available_languages(extra_root)
    close = difflib.get_close_matches(code, known, n=1, cutoff=0.4)
    hint = f" Did you mean: {close[0]}?" if close else ""
    raise TaskError(
        f"Unknown language {code!r}. Available: {', '.join(known)}.{hint} "
        "To add one, add languages/, corpus/ and needles/ files for it under a --data directory."
    )
