"""Word problems with numeric answers and their few-shot prompts, per language (data only)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from babelheads.data.roots import data_roots
from babelheads.errors import TaskError


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: int
    steps: int


@dataclass(frozen=True)
class ProblemSet:
    """``cot_prompt`` and ``direct_prompt`` hold one ``{question}``; worked answers end with
    ``answer_marker`` and the number."""

    language: str
    answer_marker: str
    cot_prompt: str
    direct_prompt: str
    problems: tuple[Problem, ...]

    def prompt(self, mode: str) -> str:
        return {"cot": self.cot_prompt, "direct": self.direct_prompt}[mode]

    @property
    def question_label(self) -> str:
        """What opens a question in the few-shot prompt ('Question:', 'Frage:', '问题：'): a model
        that writes it has finished its answer and begun the next example."""
        return self.cot_prompt.rsplit("{question}", 1)[0].rsplit("\n", 1)[-1].strip()


def load_problems(language: str, extra_root: Path | None = None) -> ProblemSet:
    for root in data_roots(extra_root):
        path = root / "problems" / f"{language}.json"
        if path.exists():
            return _parse(path)
    raise TaskError(
        f"No word problems for language {language!r}. Add problems/{language}.json under a --data directory "
        "(see src/babelheads/data/resources/problems/)."
    )


def _parse(path: Path) -> ProblemSet:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        problems = tuple(Problem(**item) for item in data["problems"])
        result = ProblemSet(
            data["language"], data["answer_marker"], data["cot_prompt"], data["direct_prompt"], problems
        )
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise TaskError(f"Problem file {path} is invalid: {error!r}.") from error
    for template in (result.cot_prompt, result.direct_prompt):
        if template.count("{question}") != 1:
            raise TaskError(f"Problem file {path}: each prompt needs exactly one {{question}}.")
    if not problems:
        raise TaskError(f"Problem file {path} holds no problems.")
    return result
