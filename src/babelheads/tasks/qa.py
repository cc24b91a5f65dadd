"""Extractive QA prompts: greedy answers scored as LAHIS scores XQuAD (the lower-cased answer is a
substring of the output), and teacher-forced answers for soft-mask training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from babelheads.data.languages import Language, load_language
from babelheads.data.qa import Question, load_questions
from babelheads.errors import TaskError
from babelheads.tasks.base import Sample, Scored, content_digest, encode_prompt, safe_id
from babelheads.tasks.lm_texts import HALVES, split_documents

QA_TOKENS = 10
"""Tokens a QA answer may take: the answers are short spans."""

if TYPE_CHECKING:
    from babelheads.models import LoadedModel


@dataclass(frozen=True)
class QaSettings:
    """half : 'scoring' (training questions) or 'evaluation' (held out); questions : at most this many
    per language from that half (0: all)."""

    languages: tuple[str, ...] = ("en", "de", "zh")
    source: str = "builtin"
    data_dir: str | None = None
    half: str = "evaluation"
    questions: int = 0
    prompt: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.half not in HALVES:
            raise TaskError(f"half must be one of {HALVES}. Got {self.half!r}.")


def hit(answer: str, output: str) -> bool:
    """LAHIS's XQuAD rule, on the generated tokens only (never the prompt, which holds the answer)."""
    return answer.strip(".").lower().strip() in output.lower()


class QaTask:
    name = "qa"

    def __init__(self, settings: QaSettings):
        self.settings = settings
        root = Path(settings.data_dir) if settings.data_dir else None
        self.languages: dict[str, Language] = {code: load_language(code, root) for code in settings.languages}
        self.questions = {
            code: self._half(load_questions(settings.source, code, root)) for code in settings.languages
        }
        for code, questions in self.questions.items():
            if len(questions) < 2:
                raise TaskError(
                    f"The {settings.half} half of the {code!r} QA set has {len(questions)} questions; "
                    "use a larger set."
                )

    def _half(self, questions: list[Question]) -> list[Question]:
        names = sorted({question.document for question in questions})
        chosen = (
            set(split_documents(names, self.settings.seed)[self.settings.half])
            if len(names) > 1
            else set(names)
        )
        kept = [question for question in questions if question.document in chosen]
        return kept[: self.settings.questions] if self.settings.questions else kept

    def sample_ids(self) -> list[str]:
        return [safe_id(f"{code}-{q.id}") for code, questions in self.questions.items() for q in questions]

    def identity(self) -> dict:
        return {
            f"qa:{code}": content_digest([vars(q) for q in questions])
            for code, questions in self.questions.items()
        }

    def prompt_ids(self, loaded: LoadedModel, code: str, question: Question) -> list[int]:
        chat = {"auto": loaded.is_chat, "chat": True, "plain": False}[self.settings.prompt]
        language = self.languages[code]
        template = language.chat_prompt if chat else language.plain_prompt
        text = template.format(context=question.context, question=question.question)
        return encode_prompt(loaded.tokenizer, text, chat)

    def build(self, loaded: LoadedModel) -> list[Sample]:
        return [
            Sample(
                safe_id(f"{code}-{question.id}"),
                code,
                tuple(self.prompt_ids(loaded, code, question)),
                question.answer,
                meta={"question_id": question.id, "document": question.document},
            )
            for code, questions in self.questions.items()
            for question in questions
        ]

    def training_rows(self, loaded: LoadedModel, code: str) -> list[Scored]:
        """Prompt + answer, scored on the answer tokens only (LAHIS: no EOS after the answer)."""
        rows = []
        joiner = self.languages[code].joiner
        for question in self.questions[code]:
            prompt = self.prompt_ids(loaded, code, question)
            answer = loaded.tokenizer(joiner + question.answer, add_special_tokens=False)["input_ids"]
            rows.append(Scored(tuple(prompt + answer), len(prompt)))
        return rows

    def score(self, sample: Sample, output: str) -> dict[str, object]:
        return {"success": hit(sample.expected, output)}
