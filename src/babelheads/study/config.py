"""What a study is: one model, several languages, a profile of sizes, a seed."""

from __future__ import annotations

from dataclasses import dataclass

from babelheads.errors import BabelheadsError
from babelheads.models import DEFAULT_MODEL


@dataclass(frozen=True)
class StudyConfig:
    """languages : the retrieval, dynamic and RAG languages; lahis_languages : LAHIS's (empty: the
    profile's; its general heads are those of 80 % of them). translate_from : the source language of the
    retrieval + translation pairs. control : also run the negative controls and fill the claims'
    control column."""

    model: str = DEFAULT_MODEL
    languages: tuple[str, ...] = ("en", "de", "zh")
    lahis_languages: tuple[str, ...] = ()
    translate_from: str = "en"
    seed: int = 0
    dtype: str = "auto"
    profile: str = "default"
    control: bool = False

    def __post_init__(self) -> None:
        if not self.languages:
            raise BabelheadsError("Give at least one language, e.g. --languages en,de,zh.")
        if self.translate_from not in self.languages:
            raise BabelheadsError(
                f"--translate-from {self.translate_from} is not one of --languages "
                f"{','.join(self.languages)}. Add it, or translate from one of them."
            )
