"""Dynamic RAG ("Retrieval Heads are Dynamic", Sec. 6, built on DRAGIN): two-hop questions answered
with a retrieval loop whose queries come from the attention of chosen heads, against no retrieval and
one retrieval with the question.

Heads come from another run: a dynamic run's probe predicts the ``dynamic`` heads of each step, and a
detect or dynamic run's retrieval scores give the ``static`` ones. Those runs chose their heads on
other samples (needle tests, or other two-hop questions: questions a two-hop heads run used are left
out here). Each question is one resumable part holding every selection's answer and retrieval trace.

Two policies answer at the budget of a head-guided selection on the same question (the ``dynamic``
one when the run has it, else the first of static, dragin; ``matched_to`` in the samples):
``question-matched`` makes as many retrievals with the question as the query, each taking as many
documents as that selection's retrieval of the same rank found, and answers once with them; the
negative control ``random-retriever`` draws the documents at random from the collection instead (a
generator seeded by the run's seed and the question's id, so a resumed or re-sharded run draws the
same). Both answer in one round after retrieving, like ``question``.

RIND, the trigger, is not DRAGIN's number. Its attention a_max(i) is read off the answering pass itself:
the last layer's attention, averaged over heads, of each later answer token on token i, a softmax over
the whole context (instructions, documents, question, answer), token by token. DRAGIN runs a separate
pass over the generated text alone (no prompt), sums the attention over a word's tokens and rescales
it to mean 1 within the sentence, so its scores are larger and its thresholds (0.6-1.4) do not carry
over: here the default is 0.15. Every scanned step's RIND is recorded (the ``steps`` table), and the
``rag_threshold_sweep`` table shows, from those records alone, the share of steps over a range of
thresholds and the F1 wherever the run determines the answer at that threshold.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from babelheads.analysis.claims import Context
from babelheads.analysis.head_probes import TrainedProbe
from babelheads.analysis.rag_claims import rag_claims_tables
from babelheads.analysis.rag_scores import (
    POLICIES,
    QUESTION_MATCHED,
    rag_contrasts,
    rag_scores,
    threshold_sweep,
)
from babelheads.data.languages import Language, load_language
from babelheads.data.multihop import TwoHop, load_two_hop
from babelheads.errors import BabelheadsError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.experiments.base import Experiment, ModelChoice, Prepared, run_experiment, run_identity
from babelheads.heads import flat_label
from babelheads.models import LoadedModel
from babelheads.probe import Instrument, ProbeSettings
from babelheads.rag.collection import Bm25Index, Document, build_collection, cached_index
from babelheads.rag.loop import SELECTIONS, Branch, LoopSettings, Question, RetrievalLoop, _Prompt
from babelheads.rag.selections import HEAD_GUIDED
from babelheads.rag.trigger import content_flags, load_stop_words, rind, token_importance
from babelheads.runner.decode import Decoded
from babelheads.runner.jobs import DEFAULT_BATCH_SIZE
from babelheads.runner.parts import Part, execute_parts, in_batches_of
from babelheads.runs import RunStore, RunStoreError
from babelheads.scoring import check_answer, exact_match, first_line, token_f1
from babelheads.sources import ALL, Source, load_probe, open_source
from babelheads.tasks.base import content_digest, safe_id
from babelheads.tasks.multihop import MultihopSettings, MultihopTask
from babelheads.tasks.niah import check_prompt_format

PROBES = ("all", "language")
KNOWN = tuple(dict.fromkeys((*SELECTIONS, *POLICIES)))


@dataclass(frozen=True)
class RagConfig:
    """heads : a dynamic run (its probe: the ``dynamic`` heads; its scores: the ``static`` ones) or a
    detect run (``static`` only). questions : 'builtin', a two-hop file or directory, or hf:NAME
    (HotpotQA); count : questions per language, a seeded choice (0: all). corpus : paragraphs added to
    the collection ('' for none). selections : some of the loop's selections and the policies
    question-matched and random-retriever (which need a head-guided selection whose budget they
    copy). probe : 'all' (the probe fitted on every language pooled) or 'language' (each language's
    own)."""

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
        unknown = [selection for selection in self.selections if selection not in KNOWN]
        if unknown or not self.selections:
            raise BabelheadsError(
                f"Unknown selection {', '.join(unknown) or '(none given)'}. Use some of {', '.join(KNOWN)}."
            )
        policies = [selection for selection in self.selections if selection in POLICIES]
        if policies and budget_reference(self.selections) is None:
            raise BabelheadsError(
                f"{', '.join(policies)} answer at the budget of a head-guided selection: add one of "
                f"{', '.join(HEAD_GUIDED)} to --selections."
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


def budget_reference(selections: tuple[str, ...] | list[str]) -> str | None:
    """The head-guided selection whose budget the policies copy: dynamic (the paper's) when run, else
    the first of static, dragin; None without one."""
    return next((selection for selection in HEAD_GUIDED if selection in selections), None)


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
        in_loop = [selection for selection in config.selections if selection not in POLICIES]
        policies = [selection for selection in config.selections if selection in POLICIES]
        reference = budget_reference(config.selections)
        with Instrument(loaded.model, loaded.layout, settings) as instrument:
            loop = _RecordingLoop(
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
                branches = loop.answer(chunk, in_loop)
                if policies:
                    # the policies need the reference's retrievals on the same question, so they run
                    # after it, inside the question's part: a resumed part redoes both
                    matched = [
                        _budget_branch(branch, policy, indexes[branch.question.language], config.seed)
                        for branch in branches
                        if branch.selection == reference
                        for policy in policies
                    ]
                    loop.answer_prepared(matched)
                    branches += matched
                for part, question in zip(batch, chunk, strict=True):
                    own = [branch for branch in branches if branch.question is question]
                    tables = _tables(own, loaded, self.languages[question.language], loop, reference)
                    yield part, {**tables, "steps": loop.steps(own)}
                loop.forget(branches)

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
        finalize(store, self.config, Context(self.model_name, str(store.root)))


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


STEP_COLUMNS = ["sample_id", "language", "selection", "round", "retrievals", "step", "rind"]


class _RecordingLoop(RetrievalLoop):
    """The retrieval loop that also records the RIND of every step it scans (the loop itself keeps the
    triggering step's only), for the threshold sweep, and answers branches whose documents were
    retrieved beforehand (the budget-matched policies)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._scanned: dict[int, list[dict]] = {}

    def answer_prepared(self, branches: list[Branch]) -> None:
        """Answer ``branches`` (not head-guided: one round each) with the documents they hold."""
        pending = list(branches)
        while pending:
            prompts = [self._prompt(branch) for branch in pending]
            for branch, prompt, decoded in zip(pending, prompts, self._decode(pending, prompts), strict=True):
                self._after_round(branch, prompt, decoded)
            pending = [branch for branch in pending if branch.answer is None]

    def _after_round(self, branch: Branch, prompt: _Prompt, decoded: Decoded) -> None:
        # recorded before the loop acts on the round: it moves the prefix and counts the retrievals
        if branch.selection in HEAD_GUIDED and branch.retrievals < self.settings.retrievals:
            self._scanned.setdefault(id(branch), []).append(
                {
                    "round": branch.rounds,
                    "retrievals": branch.retrievals,
                    "start": len(branch.prefix),
                    "rind": self._round_rind(branch, prompt, decoded),
                }
            )
        super()._after_round(branch, prompt, decoded)

    def _round_rind(self, branch: Branch, prompt: _Prompt, decoded: Decoded) -> np.ndarray:
        """RIND of each of the round's tokens, as the loop computes it (the same functions on the same
        records): entropy x the most attention a later token of the round pays it in the last layer
        (averaged over heads) x not a stop word."""
        tokens = decoded.tokens
        offset = (prompt.question[1] - prompt.question[0]) + len(branch.prefix)
        texts = [self.loaded.tokenizer.decode([token]) for token in tokens]
        content = content_flags(
            texts, self.stop_words[branch.question.language], [token in self.special for token in tokens]
        )
        last_layer = decoded.records.mass[:, 0, -1].mean(axis=1)
        importance = token_importance(last_layer[:, offset : offset + len(tokens)])
        return rind(decoded.entropy, importance, content)

    def steps(self, branches: list[Branch]) -> pd.DataFrame:
        """The recorded steps of ``branches``: one row per scanned step (step: its position in the
        answer; retrievals: made before its round)."""
        rows = [
            {
                "sample_id": branch.question.sample_id,
                "language": branch.question.language,
                "selection": branch.selection,
                "round": record["round"],
                "retrievals": record["retrievals"],
                "step": record["start"] + index,
                "rind": float(score),
            }
            for branch in branches
            for record in self._scanned.get(id(branch), [])
            for index, score in enumerate(record["rind"])
        ]
        return pd.DataFrame(rows, columns=STEP_COLUMNS)

    def forget(self, branches: list[Branch]) -> None:
        for branch in branches:
            self._scanned.pop(id(branch), None)


def _budget_branch(reference: Branch, policy: str, index: Bm25Index, seed: int) -> Branch:
    """A ``policy`` branch of the reference's question holding the documents it retrieves at the
    reference's budget: one retrieval per reference retrieval, each taking as many documents as that
    one found (the question as BM25 query, or a seeded random draw from the collection)."""
    question = reference.question
    branch = Branch(question, policy)
    # seeded by the run's seed and the question alone: the same draw whatever the batch or shard
    rng = np.random.default_rng([seed, zlib.crc32(question.sample_id.encode())])
    facts = {f"{question.item.id}/fact{k}" for k in range(len(question.item.facts))}
    for entry in reference.trace:
        wanted = len(entry["documents"])
        held = {document.id for document in branch.documents}
        if policy == QUESTION_MATCHED:
            query = question.item.question
            found = index.search(query, wanted, held) if wanted else []
        else:
            query = ""
            free = [document for document in index.documents if document.id not in held]
            chosen = rng.choice(len(free), size=min(wanted, len(free)), replace=False) if wanted else []
            found = [(free[position], float("nan")) for position in chosen]
        documents: list[Document] = [document for document, _ in found]
        branch.documents = branch.documents + documents
        branch.retrievals += 1
        branch.trace.append(
            {
                "step": -1,
                "trigger": policy,
                "retrieval": branch.retrievals,
                "query": query,
                "documents": [document.id for document in documents],
                "document_scores": [score for _, score in found if np.isfinite(score)],
                "gold": [document.id in facts for document in documents],
            }
        )
    return branch


def _tables(
    branches: list[Branch],
    loaded: LoadedModel,
    language: Language,
    loop: RetrievalLoop,
    reference: str | None = None,
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
                # SQuAD's normalisation for English, MLQA's for the others: the question's language decides
                "exact": exact_match(item.answer, prediction, branch.question.language),
                "f1": token_f1(item.answer, prediction, branch.question.language),
                "contains": check_answer(item.answer, prediction, language.answer_tokenizer).contains,
                "retrievals": branch.retrievals,
                "rounds": branch.rounds,
                "documents": len(branch.documents),
                "gold_found": len(facts & held) / len(facts),
                "context": " ".join(document.id for document in branch.documents),
                "matched_to": (reference or "") if branch.selection in POLICIES else "",
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


def finalize(store: RunStore, config: RagConfig, context: Context | None = None) -> None:
    """The scores, contrasts, threshold sweep and claims, from the finished parts. EM and F1 are
    scored again from each row's prediction, so a run resumed across versions is scored one way."""
    samples = rescored(store.table("samples"))
    scores = rag_scores(samples, config.replicates, config.seed)
    store.write_table("rag_scores", scores)
    contrasts = rag_contrasts(samples, config.replicates, config.seed)
    store.write_table("rag_contrasts", contrasts)
    sweep = threshold_sweep(
        samples,
        _recorded_steps(store),
        store.table("trace"),
        config.loop.threshold,
        config.loop.retrievals,
        config.replicates,
        config.seed,
    )
    store.write_table("rag_threshold_sweep", sweep)
    context = context or Context(config.model or "", str(store.root))
    tables = rag_claims_tables(samples, config.replicates, config.seed, context, protocol(config))
    for name, frame in tables.items():
        store.write_table(name, frame)


def rescored(samples: pd.DataFrame) -> pd.DataFrame:
    """``samples`` with exact and f1 from the prediction and gold answer under the question language's
    normalisation (and matched_to '' where a run's parts predate it)."""
    if samples.empty:
        return samples
    predictions = samples["prediction"].fillna("").astype(str)
    answers = samples["answer"].astype(str)
    codes = samples["language"].astype(str)
    triples = list(zip(answers, predictions, codes, strict=True))
    return samples.assign(
        exact=[exact_match(*triple) for triple in triples],
        f1=[token_f1(*triple) for triple in triples],
        matched_to=samples["matched_to"].fillna("") if "matched_to" in samples else "",
    )


def _recorded_steps(store: RunStore) -> pd.DataFrame:
    """The per-step RIND of every part; empty for a run whose parts predate the record (its sweep is
    then empty, not guessed)."""
    try:
        return store.table("steps")
    except RunStoreError:
        return pd.DataFrame(columns=STEP_COLUMNS)


def protocol(config: RagConfig) -> str:
    """The protocol the claims were measured under and how it differs from the paper's, for the claims'
    test column."""
    loop = config.loop
    corpus = f" plus the paragraphs of {config.corpus!r}" if config.corpus else ""
    reference = budget_reference(config.selections)
    matched = (
        f"; question-matched and random-retriever copy the {reference} selection's retrievals and documents "
        "per question"
        if reference and set(POLICIES) & set(config.selections)
        else ""
    )
    return (
        f"DRAGIN-style loop (up to {loop.retrievals} retrievals of {loop.documents} documents, "
        f"{loop.max_new_tokens} new tokens, greedy; queries from the top {loop.query_tokens} positions of "
        f"{loop.head_count} heads' attention, clustered and widened); RIND trigger at {loop.threshold:g} "
        "on the answering pass's full-context softmax attention of the last layer, token by token, not "
        "DRAGIN's word-level pass over the generated text alone (its thresholds 0.6-1.4 do not apply; "
        "see rag_threshold_sweep); BM25 over the facts and distractors of "
        f"{config.questions!r}{corpus} (the paper: HotpotQA with DRAGIN's BM25 over Wikipedia); "
        f"{config.count or 'all'} questions per language, languages {', '.join(config.languages)}" + matched
    )
