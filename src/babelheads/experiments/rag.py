"""Dynamic RAG ("Retrieval Heads are Dynamic", Sec. 6, built on DRAGIN): two-hop questions answered
with a retrieval loop whose queries come from the attention of chosen heads, against no retrieval and
one retrieval with the question.

Heads come from another run: a dynamic run's probe predicts the ``dynamic`` heads of each step, and a
detect or dynamic run's retrieval scores give the ``static`` ones. Those runs chose their heads on
other samples (needle tests, or other two-hop questions: questions a two-hop heads run used are left
out here). Each question is one resumable part holding every selection's answer and retrieval trace.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from babelheads.analysis.head_probes import TrainedProbe
from babelheads.analysis.rag_scores import rag_contrasts, rag_scores
from babelheads.data.languages import Language, load_language
from babelheads.data.multihop import TwoHop, load_two_hop
from babelheads.errors import BabelheadsError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.experiments.base import Experiment, ModelChoice, Prepared, run_experiment, run_identity
from babelheads.heads import flat_label
from babelheads.models import LoadedModel
from babelheads.probe import Instrument, ProbeSettings
from babelheads.rag.collection import build_collection, cached_index
from babelheads.rag.loop import SELECTIONS, Branch, LoopSettings, Question, RetrievalLoop
from babelheads.rag.trigger import load_stop_words
from babelheads.runner.jobs import DEFAULT_BATCH_SIZE
from babelheads.runner.parts import Part, execute_parts, in_batches_of
from babelheads.runs import RunStore
from babelheads.scoring import check_answer, exact_match, first_line, token_f1
from babelheads.sources import ALL, Source, load_probe, open_source
from babelheads.tasks.base import content_digest, safe_id
from babelheads.tasks.multihop import MultihopSettings, MultihopTask
from babelheads.tasks.niah import check_prompt_format

PROBES = ("all", "language")


@dataclass(frozen=True)
class RagConfig:
    """heads : a dynamic run (its probe: the ``dynamic`` heads; its scores: the ``static`` ones) or a
    detect run (``static`` only). questions : 'builtin', a two-hop file or directory, or hf:NAME
    (HotpotQA); count : questions per language, a seeded choice (0: all). corpus : paragraphs added to
    the collection ('' for none). probe : 'all' (the probe fitted on every language pooled) or
    'language' (each language's own)."""

    heads: str | None = None
    model: str | None = None
    languages: tuple[str, ...] = ("en", "de", "zh")
    questions: str = "builtin"
    count: int = 16
    corpus: str = "builtin"
    data_dir: str | None = None
    selections: tuple[str, ...] = SELECTIONS
    loop: LoopSettings = field(default_factory=LoopSettings)
    probe: str = ALL
    prompt: str = "auto"
    dtype: str = "auto"
    replicates: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [selection for selection in self.selections if selection not in SELECTIONS]
        if unknown or not self.selections:
            raise BabelheadsError(
                f"Unknown selection {', '.join(unknown) or '(none given)'}. "
                f"Use some of {', '.join(SELECTIONS)}."
            )
        if self.probe not in PROBES:
            raise BabelheadsError(f"probe must be one of {', '.join(PROBES)}. Got {self.probe!r}.")
        if self.count < 0 or not self.languages:
            raise BabelheadsError("count must be >= 0 and at least one language given.")
        if self.replicates < 1:
            raise BabelheadsError(f"--replicates must be at least 1 (bootstrap). Got {self.replicates}.")
        if self.heads is None and {"dynamic", "static"} & set(self.selections):
            raise BabelheadsError(
                "The dynamic and static selections need --heads RUN (a dynamic run; a detect run for static)."
            )
        check_prompt_format(self.prompt)

    @property
    def root(self) -> Path | None:
        return Path(self.data_dir) if self.data_dir else None

    def identity(self, model: str) -> dict:
        config = asdict(self)
        config.pop("replicates")
        return {**config, "model": model}


@dataclass
class _Heads:
    """The heads run's probes and static rankings, per language."""

    probes: dict[str, TrainedProbe]
    static: dict[str, np.ndarray]
    count: int

    def choose(self, selection: str, language: str, state: np.ndarray) -> tuple[list[int], list[float]]:
        if selection == "static":
            heads = self.static[language][: self.count].tolist()
            return heads, [1.0] * len(heads)
        probabilities = self.probes[language].probabilities(state[None])[0]
        top = np.lexsort((np.arange(len(probabilities)), -probabilities))[: self.count]
        return top.tolist(), [round(float(probabilities[head]), 4) for head in top]


class RetrievalAugmented(Experiment):
    """Two-hop questions answered by the retrieval loop under every selection; one part per question."""

    kind = "rag"

    def __init__(self, config: RagConfig):
        self.config = config
        self.heads = _heads_run(config)
        heads_manifest = self.heads.manifest if self.heads else None
        self.model_name = config.model or (self.heads.model_name if self.heads else None)
        if self.model_name is None:
            raise BabelheadsError("Give --model (or --heads RUN, whose model is then used).")
        self.items = {code: _questions(config, code, heads_manifest) for code in config.languages}
        self.languages = {code: load_language(code, config.root) for code in config.languages}
        self.collections = {
            code: build_collection(
                load_two_hop(config.questions, code, config.root), config.corpus, code, config.root
            )
            for code in config.languages
        }
        self.stop_words = {code: load_stop_words(code, config.root) for code in config.languages}
        self.questions = [
            Question(safe_id(f"{code}-{item.id}"), code, item)
            for code in config.languages
            for item in self.items[code]
        ]

    @property
    def seed(self) -> int:
        return self.config.seed

    def identity(self, execution: Execution) -> dict:
        items, collections = self.items, self.collections
        data = {
            **{f"questions:{code}": content_digest([asdict(item) for item in items[code]]) for code in items},
            **{
                f"collection:{code}": content_digest([asdict(d) for d in docs])
                for code, docs in collections.items()
            },
            **{f"language:{code}": content_digest(asdict(lang)) for code, lang in self.languages.items()},
            **{
                f"stop_words:{code}": content_digest(sorted(words)) for code, words in self.stop_words.items()
            },
        }
        heads = self.heads.digest if self.heads else None
        return run_identity(
            self.config.identity(self.model_name), data, self.config.dtype, execution, heads=heads
        )

    def model(self) -> ModelChoice:
        return ModelChoice(self.model_name, self.config.dtype)

    def sources(self) -> list[Source]:
        return [self.heads] if self.heads else []

    def part_ids(self) -> list[str]:
        return [question.sample_id for question in self.questions]

    def prepare(self, loaded: LoadedModel) -> Prepared:
        heads = _load_heads(self.heads, self.config)
        indexes = {
            code: cached_index(self.collections[code], self.languages[code].answer_tokenizer)
            for code in self.config.languages
        }
        facts = {
            "layout": asdict(loaded.layout),
            "collection_size": {code: len(docs) for code, docs in self.collections.items()},
        }
        return Prepared(self.part_ids(), facts, (heads, indexes))

    def execute(self, store: RunStore, loaded: LoadedModel, prepared: Prepared, execution: Execution) -> None:
        config = self.config
        heads, indexes = prepared.state
        chat = {"auto": loaded.is_chat, "chat": True, "plain": False}[config.prompt]
        size = execution.batch_size or DEFAULT_BATCH_SIZE.get(loaded.device.type, 8)
        settings = ProbeSettings(top_k=1, mass_sink=0, mass_window=0)
        with Instrument(loaded.model, loaded.layout, settings) as instrument:
            loop = RetrievalLoop(
                loaded,
                instrument,
                self.languages,
                indexes,
                self.stop_words,
                heads.choose,
                config.loop,
                chat,
                size,
            )

            def compute(batch: list[Part]):
                # every selection of ``size`` questions decodes together: the first round fills a batch
                chunk = [part.work for part in batch]
                branches = loop.answer(chunk, config.selections)
                for part, question in zip(batch, chunk, strict=True):
                    own = [branch for branch in branches if branch.question is question]
                    yield part, _tables(own, loaded, self.languages[question.language], loop)

            execute_parts(
                store,
                [Part(question.sample_id, question) for question in self.questions],
                compute,
                shard=execution.shard,
                batches=in_batches_of(size),
                progress=execution.progress,
                description="rag",
                unit="question",
            )

    def finalize(self, store: RunStore) -> None:
        finalize(store, self.config)


def rag(config: RagConfig, out: Path, execution: Execution = DEFAULT_EXECUTION) -> RunStore:
    """Answer (or resume answering) every question under every selection into ``out``; write the
    scores and contrasts once every question is done."""
    return run_experiment(RetrievalAugmented(config), out, execution)


def _heads_run(config: RagConfig) -> Source | None:
    if config.heads is None:
        return None
    source = open_source(config.heads, ("dynamic", "detect"), "--heads")
    if "dynamic" in config.selections and source.kind != "dynamic":
        raise BabelheadsError(
            f"{config.heads} is a {source.kind} run, which has no probe; the dynamic selection needs a "
            "dynamic run (babelheads dynamic), or leave dynamic out of --selections."
        )
    _check_head_count(config, source.manifest)
    return source


def _check_head_count(config: RagConfig, manifest: dict) -> None:
    """The heads run's manifest records its model's heads: a count above them would be cut to all
    heads without a word (the query then averages every head), so refuse it before anything loads."""
    layout = manifest.get("layout")
    if not isinstance(layout, dict) or not {"dynamic", "static"} & set(config.selections):
        return
    total = int(layout["num_layers"]) * int(layout["num_heads"])
    if config.loop.head_count > total:
        raise BabelheadsError(
            f"--head-count must be between 1 and the model's {total} heads ({layout['num_layers']} layers "
            f"x {layout['num_heads']} heads, from {config.heads}). Got {config.loop.head_count}."
        )


def _questions(config: RagConfig, code: str, heads_manifest: dict | None) -> list[TwoHop]:
    """A seeded choice of ``count`` questions, leaving out those a two-hop heads run was fitted on."""
    items = load_two_hop(config.questions, code, config.root)
    used: set[str] = set()
    spec = heads_manifest["spec"]["config"] if heads_manifest else {}
    if spec.get("task") == "multihop" and spec["multihop"]["source"] == config.questions:
        settings = MultihopSettings(**{**spec["multihop"], "languages": (code,)})
        if code in spec["multihop"]["languages"]:
            used = {item.id for item in MultihopTask(settings).items[code]}
    free = [item for item in items if item.id not in used]
    count = config.count or len(free)
    if count > len(free):
        raise BabelheadsError(
            f"{count} questions asked in {code}; {len(free)} are left"
            + (f" once the {len(used)} the heads run was fitted on are set aside" if used else "")
            + f". Use --count {len(free)} or fewer."
        )
    chosen = sorted(random.Random(config.seed).sample(range(len(free)), count))
    return [free[index] for index in chosen]


def _load_heads(heads_run: Source | None, config: RagConfig) -> _Heads:
    probes: dict[str, TrainedProbe] = {}
    static: dict[str, np.ndarray] = {}
    if heads_run is None:
        return _Heads(probes, static, config.loop.head_count)
    if "static" in config.selections:
        ranking = heads_run.rankings()
        missing = [code for code in config.languages if code not in ranking]
        if missing:
            raise BabelheadsError(
                f"{config.heads} has no head ranking for {', '.join(missing)} (not run there, or no sample "
                "answered right). Use a heads run that covers those languages."
            )
        static = {code: ranking[code] for code in config.languages}
    if "dynamic" in config.selections:
        for code in config.languages:
            probes[code] = load_probe(Path(config.heads), ALL if config.probe == ALL else code)
    return _Heads(probes, static, config.loop.head_count)


TRACE_COLUMNS = [
    "sample_id",
    "language",
    "selection",
    "retrieval",
    "step",
    "trigger",
    "rind",
    "entropy",
    "importance",
    "heads",
    "head_scores",
    "position_tokens",
    "windows",
    "query",
    "documents",
    "document_scores",
    "gold",
]


def _tables(
    branches: list[Branch], loaded: LoadedModel, language: Language, loop: RetrievalLoop
) -> dict[str, pd.DataFrame]:
    rows, trace = [], []
    for branch in branches:
        item = branch.question.item
        text = loaded.tokenizer.decode(branch.answer, skip_special_tokens=True)
        prediction = first_line(text)
        facts = {f"{item.id}/fact{k}" for k in range(len(item.facts))}
        held = {document.id for document in branch.documents}
        rows.append(
            {
                "sample_id": branch.question.sample_id,
                "language": branch.question.language,
                "question_id": item.id,
                "selection": branch.selection,
                "status": "ok",
                "output": text,
                "prediction": prediction,
                "answer": item.answer,
                "exact": exact_match(item.answer, prediction, language.answer_tokenizer),
                "f1": token_f1(item.answer, prediction, language.answer_tokenizer),
                "contains": check_answer(item.answer, prediction, language.answer_tokenizer).contains,
                "retrievals": branch.retrievals,
                "rounds": branch.rounds,
                "documents": len(branch.documents),
                "gold_found": len(facts & held) / len(facts),
                "context": " ".join(document.id for document in branch.documents),
            }
        )
        for entry in branch.trace:
            trace.append(
                {
                    "sample_id": branch.question.sample_id,
                    "language": branch.question.language,
                    "selection": branch.selection,
                    **_flat(entry, loop, loaded),
                }
            )
    return {"trace": pd.DataFrame(trace, columns=TRACE_COLUMNS), "samples": pd.DataFrame(rows)}


def _flat(entry: dict, loop: RetrievalLoop, loaded: LoadedModel) -> dict:
    """A trace entry with its lists as text (one parquet type per column whatever the part)."""
    num_heads = loaded.layout.num_heads
    windows = [loaded.tokenizer.decode(window).strip() for window in entry.get("windows", [])]
    return {
        "retrieval": entry["retrieval"],
        "step": entry["step"],
        "trigger": entry["trigger"],
        "rind": entry.get("rind", np.nan),
        "entropy": entry.get("entropy", np.nan),
        "importance": entry.get("importance", np.nan),
        "heads": " ".join(flat_label(head, num_heads) for head in entry.get("heads", [])),
        "head_scores": " ".join(f"{score:g}" for score in entry.get("head_scores", [])),
        "position_tokens": " | ".join(token.strip() for token in entry.get("position_tokens", [])),
        "windows": " | ".join(windows),
        "query": entry["query"],
        "documents": " ".join(entry["documents"]),
        "document_scores": " ".join(f"{score:.3f}" for score in entry["document_scores"]),
        "gold": " ".join(str(int(flag)) for flag in entry["gold"]),
    }


def finalize(store: RunStore, config: RagConfig) -> None:
    samples = store.table("samples")
    scores = rag_scores(samples, config.replicates, config.seed)
    store.write_table("rag_scores", scores)
    contrasts = rag_contrasts(samples, config.replicates, config.seed)
    store.write_table("rag_contrasts", contrasts)
