"""Chain-of-thought word problems: the same problems asked with a reasoning prompt and a direct one.

Wu et al. (2024) report that masking retrieval heads hurts chain-of-thought reasoning far more than
masking random heads; comparing the two prompts under the same masks shows whether that holds here.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from babelheads.data.problems import ProblemSet, load_problems
from babelheads.errors import TaskError
from babelheads.tasks.base import Sample, Skipped, Stop, content_digest, encode_prompt, safe_id

if TYPE_CHECKING:
    from babelheads.models import LoadedModel

MODES = ("cot", "direct")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class CotSettings:
    """problems : the first N problems of each language; modes : 'cot' (reason, then answer) and/or
    'direct' (answer at once); max_new_tokens : per mode."""

    languages: tuple[str, ...] = ("en", "de", "zh")
    problems: int = 30
    modes: tuple[str, ...] = MODES
    data_dir: str | None = None
    prompt: str = "auto"
    cot_tokens: int = 96
    direct_tokens: int = 12

    def __post_init__(self) -> None:
        unknown = set(self.modes) - set(MODES)
        if unknown or not self.modes:
            raise TaskError(
                f"CoT modes must be among {', '.join(MODES)}. Got {', '.join(self.modes) or 'none'}."
            )
        if self.problems < 1:
            raise TaskError(f"Use at least one problem per language. Got {self.problems}.")
        if not self.languages:
            raise TaskError("No languages given. Use e.g. --languages en,de,zh.")


def extract_number(output: str, marker: str) -> tuple[int | float | None, str]:
    """The number after the last answer marker, else the last number in the output; and which rule
    found it ('marker', 'last', 'none')."""
    text = output.replace("\u00a0", " ")
    position = text.rfind(marker)
    if position >= 0:
        match = _NUMBER.search(text, position + len(marker))
        if match:
            return _to_number(match.group()), "marker"
    numbers = _NUMBER.findall(text)
    if numbers:
        return _to_number(numbers[-1]), "last"
    return None, "none"


def _to_number(text: str) -> int | float:
    value = float(text.replace(",", ""))
    return int(value) if value.is_integer() else value


class CotTask:
    name = "cot"

    def __init__(self, settings: CotSettings):
        self.settings = settings
        root = Path(settings.data_dir) if settings.data_dir else None
        self.sets: dict[str, ProblemSet] = {code: load_problems(code, root) for code in settings.languages}
        for code, problem_set in self.sets.items():
            if len(problem_set.problems) < settings.problems:
                raise TaskError(
                    f"{code} has {len(problem_set.problems)} word problems; {settings.problems} asked for. "
                    f"Use --problems {len(problem_set.problems)} or fewer."
                )

    def _cells(self):
        for code, problem_set in self.sets.items():
            for mode in self.settings.modes:
                for problem in problem_set.problems[: self.settings.problems]:
                    yield code, mode, problem_set, problem

    @staticmethod
    def label(language: str, mode: str) -> str:
        return f"{language}/{mode}"

    def sample_ids(self) -> list[str]:
        return [safe_id(f"{code}-{mode}-{problem.id}") for code, mode, _, problem in self._cells()]

    def sample_languages(self) -> dict[str, str]:
        """Each sample id's language."""
        return {
            sample_id: code for (code, *_), sample_id in zip(self._cells(), self.sample_ids(), strict=True)
        }

    def identity(self) -> dict:
        return {f"problems:{code}": content_digest(asdict(problems)) for code, problems in self.sets.items()}

    def build(self, loaded: LoadedModel) -> list[Sample | Skipped]:
        chat = {"auto": loaded.is_chat, "chat": True, "plain": False}[self.settings.prompt]
        samples: list[Sample | Skipped] = []
        for (code, mode, problem_set, problem), sample_id in zip(
            self._cells(), self.sample_ids(), strict=True
        ):
            body = problem_set.prompt(mode).format(question=problem.question)
            ids = encode_prompt(loaded.tokenizer, body, chat)
            samples.append(
                Sample(
                    sample_id,
                    self.label(code, mode),
                    tuple(ids),
                    str(problem.answer),
                    meta={
                        "problem_id": problem.id,
                        "mode": mode,
                        "steps_needed": problem.steps,
                        "source_language": code,
                    },
                    max_new_tokens=self.settings.cot_tokens if mode == "cot" else self.settings.direct_tokens,
                    # reasoning runs over several lines: it ends at end of turn or the next question
                    stop=Stop(True, (problem_set.question_label,)) if mode == "cot" else Stop(),
                )
            )
        return samples

    def score(self, sample: Sample, output: str) -> dict[str, object]:
        problems = self.sets[str(sample.meta["source_language"])]
        # what follows the next question is the model's own next example, not its answer
        output = output.split(problems.question_label, 1)[0]
        value, rule = extract_number(output, problems.answer_marker)
        return {
            "predicted": "" if value is None else str(value),
            "extracted_by": rule,
            "success": value is not None and str(value) == sample.expected,
        }
