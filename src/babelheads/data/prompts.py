"""Per-language prompts for the language-head experiments: a summary request (off-target output) and
statements about a person's occupation (attention transfer). Data only: resources/language_heads/."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from babelheads.data.roots import data_roots
from babelheads.errors import TaskError


@dataclass(frozen=True)
class LanguagePrompts:
    code: str
    summary_prompt: str
    transfer_statement: str
    transfer_filler: str
    transfer_question: str
    occupations: dict[str, str]


def load_prompts(code: str, extra_root: Path | None = None) -> LanguagePrompts:
    for root in data_roots(extra_root):
        path = root / "language_heads" / f"{code}.json"
        if path.exists():
            try:
                return LanguagePrompts(code, **json.loads(path.read_text(encoding="utf-8")))
            except (json.JSONDecodeError, TypeError) as error:
                raise TaskError(f"{path} is not a language-heads prompt file: {error}.") from error
    raise TaskError(
        f"No language-head prompts for {code!r}. Add language_heads/{code}.json under a --data directory."
    )
