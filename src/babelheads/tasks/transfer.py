"""Attention transfer (LAHIS): "NAME works as A." in language 1, filler, "NAME works as B." in language
2, then an English completion cue. Which statement does the answer follow?"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from babelheads.data.prompts import LanguagePrompts, load_prompts
from babelheads.errors import TaskError
from babelheads.tasks.base import Sample, content_digest, safe_id

if TYPE_CHECKING:
    from babelheads.models import LoadedModel

NAMES = ("Alice", "Maria", "Lena", "Sofia", "Clara", "Nina")
ANSWERS = ("first", "second", "neither")
CUE_LANGUAGE = "en"


@dataclass(frozen=True)
class TransferSettings:
    """per_pair : prompts per ordered language pair (occupation pairs drawn without repeats)."""

    languages: tuple[str, ...] = ("en", "de", "zh", "fr", "es")
    data_dir: str | None = None
    per_pair: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.languages) < 2:
            raise TaskError("Attention transfer needs at least two languages.")


@dataclass(frozen=True)
class TransferPrompt:
    first: str
    second: str
    name: str
    first_job: str
    second_job: str

    @property
    def sample_id(self) -> str:
        return safe_id(f"{self.first}-{self.second}-{self.first_job}-{self.second_job}-{self.name}")


def followed(output: str, prompt: TransferPrompt, words: dict[str, LanguagePrompts]) -> str:
    """'first' when the output names the first statement's occupation (in English or its language),
    else 'second' for the second's, else 'neither'. Occupation words never contain one another."""
    text = output.lower()
    for side, language, job in (
        ("first", prompt.first, prompt.first_job),
        ("second", prompt.second, prompt.second_job),
    ):
        names = {words[CUE_LANGUAGE].occupations[job].lower(), words[language].occupations[job].lower()}
        if any(name in text for name in names):
            return side
    return "neither"


class TransferTask:
    name = "attn_transfer"

    def __init__(self, settings: TransferSettings):
        self.settings = settings
        root = Path(settings.data_dir) if settings.data_dir else None
        codes = sorted({*settings.languages, CUE_LANGUAGE})
        self.words = {code: load_prompts(code, root) for code in codes}
        jobs = sorted(self.words[CUE_LANGUAGE].occupations)
        rng = random.Random(settings.seed)
        self.prompts: list[TransferPrompt] = []
        for first, second in itertools.permutations(settings.languages, 2):
            for index, (a, b) in enumerate(
                rng.sample(list(itertools.permutations(jobs, 2)), settings.per_pair)
            ):
                self.prompts.append(TransferPrompt(first, second, NAMES[index % len(NAMES)], a, b))

    def sample_ids(self) -> list[str]:
        return [prompt.sample_id for prompt in self.prompts]

    def identity(self) -> dict:
        return {"transfer": content_digest([vars(words) for words in self.words.values()])}

    def text(self, prompt: TransferPrompt) -> str:
        first, second, cue = self.words[prompt.first], self.words[prompt.second], self.words[CUE_LANGUAGE]
        parts = [
            first.transfer_statement.format(name=prompt.name, occupation=first.occupations[prompt.first_job]),
            cue.transfer_filler.format(name=prompt.name),
            second.transfer_statement.format(
                name=prompt.name, occupation=second.occupations[prompt.second_job]
            ),
            cue.transfer_question.format(name=prompt.name),
        ]
        return " ".join(parts)

    def build(self, loaded: LoadedModel) -> list[Sample]:
        return [
            Sample(
                prompt.sample_id,
                f"{prompt.first}>{prompt.second}",
                tuple(loaded.tokenizer(self.text(prompt))["input_ids"]),
                prompt.first_job,
                meta={
                    "first": prompt.first,
                    "second": prompt.second,
                    "first_job": prompt.first_job,
                    "second_job": prompt.second_job,
                },
            )
            for prompt in self.prompts
        ]

    def score(self, sample: Sample, output: str) -> dict[str, object]:
        prompt = TransferPrompt(
            str(sample.meta["first"]),
            str(sample.meta["second"]),
            "",
            str(sample.meta["first_job"]),
            str(sample.meta["second_job"]),
        )
        answer = followed(output, prompt, self.words)
        return {"followed": answer, "success": answer == "first"}
