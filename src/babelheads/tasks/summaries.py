"""The paper's summary protocol for LAHIS's general and off-target experiments: XL-Sum articles with a
request to summarise them in their language, scored by BERTScore F1 against the reference summary
(general) or by the output's language (off-target: fastText's lid.176 when given, else py3langid).
bert-score and fasttext are optional: each is refused in one line, naming the install, when missing.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from babelheads.data.corpora import HF_PREFIX, hf_dataset
from babelheads.data.prompts import LanguagePrompts, load_prompts
from babelheads.errors import BabelheadsError, TaskError
from babelheads.models import LoadedModel
from babelheads.tasks.base import Sample, content_digest, encode_prompt, safe_id
from babelheads.tasks.off_target import identify

XLSUM = "hf:csebuetnlp/xlsum:{xlsum}:train"
"""XL-Sum, as the released code samples it (its train split); {xlsum} becomes XL-Sum's language name."""
XLSUM_NAMES = {
    "ar": "arabic",
    "bn": "bengali",
    "en": "english",
    "es": "spanish",
    "fa": "persian",
    "fr": "french",
    "hi": "hindi",
    "id": "indonesian",
    "ja": "japanese",
    "ko": "korean",
    "pt": "portuguese",
    "ru": "russian",
    "sw": "swahili",
    "th": "thai",
    "tr": "turkish",
    "uk": "ukrainian",
    "ur": "urdu",
    "vi": "vietnamese",
    "zh": "chinese_simplified",
}
"""ISO 639-1 code -> XL-Sum configuration (XL-Sum has no German)."""
XLSUM_POOL = 1000
"""Articles read (streamed) per language, from which the prompts are drawn with the run's seed."""
BERTSCORE_MODEL = "bert-base-multilingual-cased"
"""A multilingual BERTScore model (the released code: bert-base-uncased, English-only, for every
language)."""


def require_bert_score() -> None:
    """bert-score is optional (only the paper's general protocol needs it): refuse in one line."""
    try:
        import bert_score  # noqa: F401
    except ImportError as error:
        raise BabelheadsError(
            "--protocol paper scores summaries with BERTScore, which needs the bert-score package: "
            "pip install bert-score"
        ) from error


def require_fasttext(path: str) -> None:
    try:
        import fasttext  # noqa: F401
    except ImportError as error:
        raise BabelheadsError(
            "--lid-model identifies languages with fastText, which needs the fasttext package: "
            "pip install fasttext"
        ) from error
    if not Path(path).is_file():
        raise BabelheadsError(f"--lid-model {path} is not a file (fastText's lid.176.bin).")


@dataclass(frozen=True)
class SummarySettings:
    """The paper's XL-Sum protocol. source : 'hf:NAME[:CONFIG[:SPLIT]]' ('{xlsum}' becomes XL-Sum's
    name of the language, '{lang}' its code), a JSON file ({code: [...]}) or a directory of
    <code>.json, each a list of {id, text, summary}. articles : per language, drawn with the seed from
    the first XLSUM_POOL. article_tokens : an article is cut to this many tokens, so the request and
    the summary marker after it are never cut off (the released code cuts the whole prompt at 2048
    and drops the examples that lose their marker). measure : 'bertscore' (general) or 'language'
    (off-target)."""

    languages: tuple[str, ...]
    source: str = XLSUM
    data_dir: str | None = None
    articles: int = 8
    article_tokens: int = 1024
    measure: str = "bertscore"
    bertscore_model: str = BERTSCORE_MODEL
    lid_model: str | None = None
    prompt: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class Article:
    id: str
    text: str
    summary: str


def load_articles(source: str, code: str, pool: int = XLSUM_POOL) -> list[Article]:
    """The first ``pool`` articles with a reference summary of ``code`` in ``source`` (see
    :class:`SummarySettings`)."""
    if source.startswith(HF_PREFIX):
        spec = source[len(HF_PREFIX) :]
        if "{xlsum}" in spec:
            if code not in XLSUM_NAMES:
                raise TaskError(
                    f"XL-Sum has no language {code!r} here (it has {', '.join(sorted(XLSUM_NAMES))}). "
                    "Leave it out of --languages."
                )
            spec = spec.replace("{xlsum}", XLSUM_NAMES[code])
        # streamed: XL-Sum's train splits are large, and only the first articles are read
        dataset, (name, *_) = hf_dataset(spec, code, [None, "train"], "Summaries", streaming=True)
        rows = []
        for row in dataset:
            rows.append(row)
            if len(rows) >= pool:
                break
    else:
        rows = _local_articles(Path(source), code)
        name = source
    articles = []
    for index, row in enumerate(rows):
        if not {"text", "summary"} <= set(row):
            raise TaskError(f"{name} lacks XL-Sum's columns text and summary; it has {', '.join(row)}.")
        if str(row["text"]).strip() and str(row["summary"]).strip():
            articles.append(Article(str(row.get("id", index)), str(row["text"]), str(row["summary"])))
    return articles[:pool]


def _local_articles(path: Path, code: str) -> list[dict]:
    file = path / f"{code}.json" if path.is_dir() else path
    if not file.is_file():
        raise TaskError(
            f"Summaries not found: {file}. Give hf:NAME, a JSON file or a directory of <code>.json."
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TaskError(f"{file} is not JSON: {error}.") from error
    rows = data.get(code, []) if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise TaskError(f"{file} must hold a list of {{id, text, summary}} (per language code in a file).")
    return rows


_BERTSCORERS: dict[tuple[str, str], object] = {}
_LID_MODELS: dict[str, object] = {}


def bertscore_f1(candidate: str, reference: str, language: str, model: str) -> float:
    """BERTScore F1 x 100 of ``candidate`` against ``reference``, rescaled with the package's baseline
    for the language and model (as the released code rescales its own)."""
    key = (model, language)
    try:
        if key not in _BERTSCORERS:
            require_bert_score()
            from bert_score import BERTScorer

            _BERTSCORERS[key] = BERTScorer(model_type=model, lang=language, rescale_with_baseline=True)
        _, _, f1 = _BERTSCORERS[key].score([candidate], [reference])
    except (OSError, ValueError, KeyError) as error:  # no such model, or no baseline for the language
        raise BabelheadsError(
            f"BERTScore cannot score {language!r} with {model!r}: {str(error).splitlines()[0]} "
            "Give another --bertscore-model."
        ) from error
    return 100.0 * float(f1[0])


def fasttext_language(text: str, model_path: str) -> str:
    """The ISO 639-1 code fastText's language-ID model gives ``text``; 'none' without letters."""
    if not any(character.isalpha() for character in text):
        return "none"
    if model_path not in _LID_MODELS:
        require_fasttext(model_path)
        import fasttext

        _LID_MODELS[model_path] = fasttext.load_model(model_path)
    labels, _ = _LID_MODELS[model_path].predict(" ".join(text.split()))  # one line: fastText's rule
    return str(labels[0]).removeprefix("__label__")


class SummaryTask:
    """XL-Sum articles with a request to summarise them in their language; scored by BERTScore F1
    against the reference summary (general) or by the output's language (off-target)."""

    name = "summaries"

    def __init__(self, settings: SummarySettings):
        self.settings = settings
        root = Path(settings.data_dir) if settings.data_dir else None
        self.templates: dict[str, LanguagePrompts] = {
            code: load_prompts(code, root) for code in settings.languages
        }
        self.articles = {code: self._chosen(code) for code in settings.languages}

    def _chosen(self, code: str) -> list[Article]:
        found = load_articles(self.settings.source, code)
        if len(found) < self.settings.articles:
            raise TaskError(
                f"{self.settings.source} has {len(found)} articles with summaries in {code!r}; "
                f"{self.settings.articles} asked for. Use --prompts {len(found)} or fewer."
            )
        random.Random(f"{self.settings.seed}-{code}").shuffle(found)
        return sorted(found[: self.settings.articles], key=lambda article: article.id)

    def sample_ids(self) -> list[str]:
        return [safe_id(f"{code}-{a.id}") for code, articles in self.articles.items() for a in articles]

    def identity(self) -> dict:
        settings = self.settings
        scorer = (
            settings.bertscore_model if settings.measure == "bertscore" else settings.lid_model or "py3langid"
        )
        return {
            f"summaries:{code}": content_digest(
                [
                    [vars(article) for article in articles],
                    vars(self.templates[code]),
                    settings.measure,
                    scorer,
                    settings.article_tokens,
                ]
            )
            for code, articles in self.articles.items()
        }

    def build(self, loaded: LoadedModel) -> list[Sample]:
        chat = {"auto": loaded.is_chat, "chat": True, "plain": False}[self.settings.prompt]
        samples = []
        for code, articles in self.articles.items():
            for article in articles:
                ids = loaded.tokenizer(article.text, add_special_tokens=False)["input_ids"]
                text = article.text
                if len(ids) > self.settings.article_tokens:
                    text = loaded.tokenizer.decode(ids[: self.settings.article_tokens])
                prompt = self.templates[code].summary_prompt.format(text=text)
                ids = encode_prompt(loaded.tokenizer, prompt, chat)
                samples.append(
                    Sample(
                        safe_id(f"{code}-{article.id}"),
                        code,
                        tuple(ids),
                        article.summary,
                        meta={"article": article.id},
                    )
                )
        return samples

    def identify(self, output: str) -> str:
        model = self.settings.lid_model
        return fasttext_language(output, model) if model else identify(output)

    def score(self, sample: Sample, output: str) -> dict[str, object]:
        found = self.identify(output)
        row: dict[str, object] = {"identified": found, "success": found == sample.language}
        if self.settings.measure == "bertscore":
            model = self.settings.bertscore_model
            row["bertscore_f1"] = bertscore_f1(output, sample.expected, sample.language, model)
        return row
