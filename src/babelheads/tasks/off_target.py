"""Off-target output: a paragraph in language X and a request to summarise it in X; the output's
language is identified with py3langid (its model ships in the package: no download)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from babelheads.data.corpora import load_documents
from babelheads.data.prompts import LanguagePrompts, load_prompts
from babelheads.errors import TaskError
from babelheads.tasks.base import Sample, content_digest, encode_prompt, safe_id
from babelheads.tasks.lm_texts import split_documents

if TYPE_CHECKING:
    from babelheads.models import LoadedModel

MIN_PARAGRAPH_CHARS = 120


@dataclass(frozen=True)
class OffTargetSettings:
    """Paragraphs come from the corpus's evaluation half (never the texts that chose the heads)."""

    languages: tuple[str, ...] = ("de", "zh", "fr", "es")
    corpus: str = "builtin"
    data_dir: str | None = None
    prompts: int = 12
    prompt: str = "auto"
    seed: int = 0


def identify(text: str) -> str:
    """The ISO 639-1 code py3langid gives ``text``; 'none' for an output with no letters."""
    import py3langid

    if not any(character.isalpha() for character in text):
        return "none"
    return str(py3langid.classify(text)[0])


class OffTargetTask:
    name = "off_target"

    def __init__(self, settings: OffTargetSettings):
        self.settings = settings
        root = Path(settings.data_dir) if settings.data_dir else None
        self.templates: dict[str, LanguagePrompts] = {
            code: load_prompts(code, root) for code in settings.languages
        }
        self.paragraphs = {code: self._paragraphs(code, root) for code in settings.languages}

    def _paragraphs(self, code: str, root: Path | None) -> list[tuple[str, str]]:
        documents = load_documents(self.settings.corpus, code, root)
        held_out = set(split_documents([name for name, _ in documents], self.settings.seed)["evaluation"])
        found = [
            (f"{name}-{index}", paragraph.strip())
            for name, text in documents
            if name in held_out or len(documents) == 1
            for index, paragraph in enumerate(text.split("\n\n"))
            if len(paragraph.strip()) >= MIN_PARAGRAPH_CHARS
        ]
        if len(found) < self.settings.prompts:
            raise TaskError(
                f"The {code!r} corpus's evaluation half has {len(found)} paragraphs; {self.settings.prompts} "
                f"asked for. Use --prompts {len(found)} or fewer."
            )
        random.Random(f"{self.settings.seed}-{code}").shuffle(found)
        return sorted(found[: self.settings.prompts])

    def sample_ids(self) -> list[str]:
        return [safe_id(f"{code}-{name}") for code, found in self.paragraphs.items() for name, _ in found]

    def identity(self) -> dict:
        return {
            f"off_target:{code}": content_digest([self.paragraphs[code], vars(self.templates[code])])
            for code in self.settings.languages
        }

    def build(self, loaded: LoadedModel) -> list[Sample]:
        chat = {"auto": loaded.is_chat, "chat": True, "plain": False}[self.settings.prompt]
        samples = []
        for code, found in self.paragraphs.items():
            for name, paragraph in found:
                text = self.templates[code].summary_prompt.format(text=paragraph)
                ids = encode_prompt(loaded.tokenizer, text, chat)
                samples.append(
                    Sample(safe_id(f"{code}-{name}"), code, tuple(ids), code, meta={"paragraph": name})
                )
        return samples

    def score(self, sample: Sample, output: str) -> dict[str, object]:
        found = identify(output)
        return {"identified": found, "success": found == sample.expected}
