"""Language-modelling texts: a corpus cut into token windows, per language, for importance and perplexity.

Documents are split into two halves by a seeded draw over their names: heads are scored on one half
and tested on the other, so no test text ever chose the heads. A parallel corpus has the same names in
every language, so the halves cover the same topics everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from babelheads.data.corpora import load_documents
from babelheads.data.languages import load_language
from babelheads.errors import TaskError
from babelheads.tasks.base import content_digest, safe_id

if TYPE_CHECKING:
    from babelheads.models import LoadedModel

HALVES = ("scoring", "evaluation")


@dataclass(frozen=True)
class TextSettings:
    """texts : windows per language; window : tokens per window (a BOS token included); half :
    'scoring' (where heads are chosen) or 'evaluation' (where they are tested)."""

    languages: tuple[str, ...] = ("en", "de", "zh", "fr", "es")
    corpus: str = "builtin"
    data_dir: str | None = None
    texts: int = 16
    window: int = 192
    half: str = "scoring"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.languages:
            raise TaskError("No languages given. Use e.g. --languages en,de,zh.")
        if self.texts < 2:
            raise TaskError(f"Use at least 2 texts per language (--texts). Got {self.texts}.")
        if self.window < 16:
            raise TaskError(f"A window needs at least 16 tokens (--window). Got {self.window}.")
        if self.half not in HALVES:
            raise TaskError(f"half must be one of {HALVES}. Got {self.half!r}.")


@dataclass(frozen=True)
class TextWindow:
    window_id: str
    language: str
    document: str
    input_ids: tuple[int, ...]


def split_documents(names: list[str], seed: int) -> dict[str, list[str]]:
    """The two halves of a corpus's document names (the scoring half gets the extra one of an odd count).
    One document is split by itself: its windows alternate between the halves (see :func:`windows`)."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    cut = (len(order) + 1) // 2
    return {"scoring": sorted(order[:cut]), "evaluation": sorted(order[cut:])}


class TextWindows:
    """The windows of each language's half of the corpus, ``texts`` of them in a seeded order."""

    name = "lm_texts"

    def __init__(self, settings: TextSettings):
        self.settings = settings
        root = Path(settings.data_dir) if settings.data_dir else None
        for code in settings.languages:
            load_language(code, root)  # an unknown code fails here, with the known ones and a hint
        self.documents = {code: load_documents(settings.corpus, code, root) for code in settings.languages}

    def identity(self) -> dict:
        return {f"corpus:{code}": content_digest(docs) for code, docs in self.documents.items()}

    def build(self, loaded: LoadedModel) -> list[TextWindow]:
        out = []
        for code in self.settings.languages:
            out.extend(self.language_windows(code, loaded.tokenizer))
        return out

    def language_windows(self, code: str, tokenizer) -> list[TextWindow]:
        settings = self.settings
        documents = self.documents[code]
        single = len(documents) == 1
        chosen = set(split_documents([name for name, _ in documents], settings.seed)[settings.half])
        bos = getattr(tokenizer, "bos_token_id", None)
        body = settings.window - (bos is not None)
        found = []
        for name, text in documents:
            if not single and name not in chosen:
                continue
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            for index in range(len(ids) // body):
                if single and index % 2 != HALVES.index(settings.half):
                    continue
                chunk = ids[index * body : (index + 1) * body]
                found.append(
                    TextWindow(
                        safe_id(f"{code}-{name}-{index}"),
                        code,
                        name,
                        tuple(([bos] if bos is not None else []) + chunk),
                    )
                )
        if len(found) < settings.texts:
            raise TaskError(
                f"The {settings.half} half of the {code!r} corpus gives {len(found)} windows of "
                f"{settings.window} tokens; {settings.texts} asked for. Use --texts {len(found)} or fewer, "
                "a shorter --window, or a larger --corpus."
            )
        random.Random(f"{settings.seed}-{code}").shuffle(found)
        return sorted(found[: settings.texts], key=lambda window: window.window_id)
