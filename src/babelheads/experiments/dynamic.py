"""Dynamic retrieval heads: a recorded run (NIAH or two-hop questions) with each step's final hidden
state, then the statistics, CCA, probe and regressor of "Retrieval Heads are Dynamic".

The statistics work on any run with events (``dynamic_statistics``: a detection run too). Static top-K
heads are chosen on one half of each language's samples and the statistics computed on the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from babelheads.analysis.aggregate import completed
from babelheads.analysis.claims import Context, claims_tables
from babelheads.analysis.dynamic_claims import probe_claims, statistic_claims
from babelheads.analysis.dynamic_heads import (
    StepHeads,
    check_static_k,
    dynamism,
    retrieval_rankings,
    step_heads,
)
from babelheads.analysis.head_probes import (
    ProbeGain,
    ProbeSettings,
    StepData,
    cca_gain,
    cca_sweep,
    hidden_states,
    probe_heads,
    regress_heads,
    split_samples,
)
from babelheads.errors import BabelheadsError, TaskError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.experiments.base import Experiment, ModelChoice, Prepared, run_experiment, run_identity
from babelheads.heads import flat_label
from babelheads.models import DEFAULT_MODEL, LoadedModel, config_layout
from babelheads.probe import ProbeSettings as RecordSettings
from babelheads.runner import Job, run_jobs
from babelheads.runs import RunStore
from babelheads.sources import ALL, Source, open_source, probe_path
from babelheads.tasks.multihop import MultihopSettings, MultihopTask
from babelheads.tasks.niah import NiahSettings, NiahTask

TASKS = ("niah", "multihop")
SPANS = {"needle": "needle_copy", "answer": "copy"}
REGIONS = ("context", "support")


@dataclass(frozen=True)
class DynamicAnalysis:
    """Settings of the analyses, not of the run: changing them re-analyses without decoding.

    static_k : the static top-K (0: ``static_share`` of all heads, at least 1). span : 'needle' (the
    paper's S) or 'answer' (Wu et al.'s copy rule). replicates : bootstrap draws."""

    static_k: int = 0
    static_share: float = 0.05
    span: str = "needle"
    replicates: int = 1000
    probes: bool = True
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.span not in SPANS:
            raise TaskError(f"span must be one of {', '.join(SPANS)}. Got {self.span!r}.")
        if self.static_k < 0 or not 0 < self.static_share <= 1:
            raise TaskError(
                f"static_k must be >= 0 and static_share in (0, 1]. Got {self.static_k}, {self.static_share}."
            )
        if self.replicates < 1:
            raise TaskError(f"--replicates must be at least 1 (bootstrap draws). Got {self.replicates}.")

    def k_of(self, total_heads: int) -> int:
        return self.static_k or max(1, round(self.static_share * total_heads))

    def check_heads(self, layout: dict, run: Path | str) -> None:
        check_static_k(self.static_k, layout, run)


@dataclass(frozen=True)
class DynamicConfig:
    model: str = DEFAULT_MODEL
    task: str = "niah"
    niah: NiahSettings = field(
        default_factory=lambda: NiahSettings(needles="magic", lengths=(1000,), needles_per_cell=4)
    )
    multihop: MultihopSettings = field(default_factory=MultihopSettings)
    max_new_tokens: int = 40
    top_k: int = 4
    dtype: str = "auto"
    analysis: DynamicAnalysis = field(default_factory=DynamicAnalysis)
    recording: str | None = None
    """A detect run recorded with hidden states: its samples are analysed instead of decoding new ones
    (the settings above, but the analysis, then do not apply)."""

    def __post_init__(self) -> None:
        if self.recording is not None:
            return
        if self.task not in TASKS:
            raise TaskError(f"Unknown task {self.task!r}. Use one of: {', '.join(TASKS)}.")
        if self.max_new_tokens < 1 or self.top_k < 1:
            raise TaskError("max_new_tokens and top_k must be at least 1.")
        if self.analysis.static_k:
            # The statistics run only after every sample is decoded; the model's config tells now.
            layout = config_layout(self.model)
            if layout is not None:
                self.analysis.check_heads(asdict(layout), self.model)

    @property
    def seed(self) -> int:
        return self.niah.seed if self.task == "niah" else self.multihop.seed

    def identity(self) -> dict:
        config = asdict(self)
        config.pop("analysis")
        config.pop("recording")  # a replay has its own identity (DynamicReplay); recordings keep theirs
        config.pop("multihop" if self.task == "niah" else "niah")
        return config

    def build_task(self) -> NiahTask | MultihopTask:
        return NiahTask(self.niah) if self.task == "niah" else MultihopTask(self.multihop)


class DynamicRecording(Experiment):
    """NIAH or two-hop samples decoded with each step's attention peaks (and, for two-hop, masses on
    the context and the supporting facts) and final hidden state recorded; analysed once finished."""

    kind = "dynamic"

    def __init__(self, config: DynamicConfig, progress: bool = True):
        self.config = config
        self.task = config.build_task()
        self.progress = progress

    @property
    def seed(self) -> int:
        return self.config.seed

    def identity(self, execution: Execution) -> dict:
        return run_identity(self.config.identity(), self.task.identity(), self.config.dtype, execution)

    def model(self) -> ModelChoice:
        return ModelChoice(self.config.model, self.config.dtype)

    def part_ids(self) -> list[str]:
        return self.task.sample_ids()

    def prepare(self, loaded: LoadedModel) -> Prepared:
        # Checked on construction where the model's config was readable without loading it; here for
        # the rest, before anything is written (the analysis runs only after every sample).
        self.config.analysis.check_heads(asdict(loaded.layout), self.config.model)
        return Prepared(self.task.sample_ids(), {"layout": asdict(loaded.layout)}, self.task.build(loaded))

    def execute(self, store: RunStore, loaded: LoadedModel, prepared: Prepared, execution: Execution) -> None:
        config = self.config
        settings = execution.run_settings(config.max_new_tokens, RecordSettings(config.top_k))
        settings = replace(settings, regions=REGIONS if config.task == "multihop" else (), hidden_states=True)
        jobs = [Job(sample.sample_id, sample) for sample in prepared.state]
        run_jobs(store, loaded, jobs, self.task.score, settings, execution.progress, "dynamic")

    def finalize(self, store: RunStore) -> None:
        analyse(store, self.config.analysis, progress=self.progress)


class DynamicReplay(Experiment):
    """The analyses of a detect run recorded with hidden states: its samples' tables are copied (every
    command reading a dynamic run finds them where it looks) and analysed; nothing is decoded."""

    kind = "dynamic"

    def __init__(self, config: DynamicConfig, progress: bool = True):
        self.config = config
        self.progress = progress
        self.source = open_source(str(config.recording), ("detect",), "--recording")
        recorded = self.source.manifest["spec"]["config"]
        if not recorded.get("hidden_states"):
            raise BabelheadsError(
                f"--recording {self.source.path} was recorded without hidden states. Run detect with "
                "--hidden-states into a new --out, or run dynamic without --recording."
            )
        self.languages = list(recorded["task"]["languages"])

    @property
    def seed(self) -> int:
        return int(self.source.seed or 0)

    def identity(self, execution: Execution) -> dict:
        spec = self.source.manifest["spec"]
        return {
            "config": {"recording": str(self.source.path.resolve()), "languages": self.languages},
            "recording": self.source.digest,
            "precision": spec.get("precision"),
            "model": self.source.model,
        }

    def model(self) -> None:
        return None

    def sources(self) -> list[Source]:
        return [self.source]

    def part_ids(self) -> list[str]:
        return sorted(self.source.store.finished())

    def prepare(self, loaded: None) -> Prepared:
        self.config.analysis.check_heads(self.source.manifest["layout"], self.source.path)
        return Prepared(self.part_ids(), {"layout": self.source.manifest["layout"]})

    def execute(self, store: RunStore, loaded: None, prepared: Prepared, execution: Execution) -> None:
        done = store.finished()
        for sample_id in prepared.parts:
            if sample_id not in done:
                store.copy_part(self.source.store, sample_id)

    def finalize(self, store: RunStore) -> None:
        analyse(store, self.config.analysis, progress=self.progress)


def dynamic(config: DynamicConfig, out: Path, execution: Execution = DEFAULT_EXECUTION) -> RunStore:
    """Record (or resume) the run into ``out`` (or copy the recording of ``config.recording``), then
    write its analyses once every sample is done."""
    if config.recording is not None:
        return run_experiment(DynamicReplay(config, execution.progress), out, execution)
    return run_experiment(DynamicRecording(config, execution.progress), out, execution)


def split_halves(samples: pd.DataFrame, seed: int) -> dict[str, str]:
    """Per language, a seeded half of the samples chooses the static heads ('select'), the other
    half is tested ('test')."""
    halves = {}
    rng = np.random.default_rng(seed)
    for _, group in samples.sort_values("sample_id").groupby("language", sort=True):
        ids = group["sample_id"].tolist()
        order = rng.permutation(len(ids))
        for rank, position in enumerate(order):
            halves[ids[position]] = "select" if rank < len(ids) // 2 else "test"
    return halves


def _rankings(store: RunStore, select: set[str]) -> dict[str, pd.Series]:
    samples, head_scores = store.table("samples"), store.table("head_scores")
    return retrieval_rankings(
        samples[samples["sample_id"].isin(select)],
        head_scores[head_scores["sample_id"].isin(select)],
        store.manifest()["layout"]["num_heads"],
    )


def static_heads(store: RunStore, analysis: DynamicAnalysis, select: set[str], layout: dict) -> pd.DataFrame:
    """Per language: the static top-K by the paper's retrieval score on the ``select`` samples."""
    k = analysis.k_of(layout["num_layers"] * layout["num_heads"])
    rows = [
        {
            "language": language,
            "rank": rank,
            "head": flat_label(head, layout["num_heads"]),
            "flat": int(head),
            "score": float(score),
        }
        for language, ranked in _rankings(store, select).items()
        for rank, (head, score) in enumerate(ranked.iloc[:k].items())
    ]
    return pd.DataFrame(rows, columns=["language", "rank", "head", "flat", "score"])


def dynamic_statistics(
    store: RunStore, analysis: DynamicAnalysis, events: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, StepHeads]:
    """The Table 1 statistics per language of any run with events (detect or dynamic); ``events`` :
    the run's events table when the caller has read it already."""
    manifest = store.manifest()
    analysis.check_heads(manifest["layout"], store.root)
    samples = completed(store.table("samples"))
    if samples.empty:
        raise BabelheadsError(f"{store.root} has no completed sample to analyse.")
    events = store.table("events") if events is None else events
    steps = step_heads(events, samples, SPANS[analysis.span])
    halves = split_halves(samples, analysis.seed)
    static = static_heads(
        store, analysis, {key for key, half in halves.items() if half == "select"}, manifest["layout"]
    )
    tested = steps.rows_of({key for key, half in halves.items() if half == "test"})
    rows = []
    for language in sorted(tested.index["language"].unique()):
        heads = static.loc[static["language"] == language, "flat"].to_numpy()
        if len(heads) == 0:
            continue
        table = dynamism(
            tested.rows_of(set(tested.index.loc[tested.index["language"] == language, "sample_id"])),
            heads,
            analysis.replicates,
            analysis.seed,
        )
        rows.append(table.assign(language=language, k=len(heads), span=analysis.span))
    stats = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return stats, static, steps


def _step_data(
    steps: StepHeads, hidden: pd.DataFrame, targets: np.ndarray, parts: dict[str, str]
) -> StepData:
    index, states = hidden_states(hidden)
    keys = pd.MultiIndex.from_frame(steps.index[["sample_id", "step"]])
    rows = keys.get_indexer(pd.MultiIndex.from_frame(index))
    if (rows < 0).any():
        raise BabelheadsError("Hidden states and events disagree on the steps; the run is damaged.")
    return StepData(index, states, targets[rows], parts)


def eq2_scores(events: pd.DataFrame, steps: StepHeads) -> np.ndarray:
    """Eq. 2 per (step, head): attention on the supporting facts over attention on the context, sink
    and local window left out; NaN where the head sees no context (e.g. a sliding window)."""
    ordered = events.sort_values(["sample_id", "step", "layer", "head"])
    support = ordered["mass_support"].to_numpy().reshape(steps.matrix.shape)
    context = ordered["mass_context"].to_numpy().reshape(steps.matrix.shape) + support
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(context > 1e-6, support / np.where(context > 1e-6, context, 1.0), np.nan)


def analyse(store: RunStore, analysis: DynamicAnalysis, progress: bool = True) -> list[str]:
    """Write the dynamic-heads tables of a finished run, and the claims it tests; returns the analyses
    written."""
    events = store.table("events")
    stats, static, steps = dynamic_statistics(store, analysis, events)
    store.write_derived("dynamic_stats", stats)
    store.write_derived("static_heads", static)
    written = ["dynamic_stats", "static_heads"]
    manifest = store.manifest()
    context = Context(manifest["spec"]["model"]["model"], str(store.root))
    halves = split_halves(completed(store.table("samples")), analysis.seed)
    tested = steps.rows_of({key for key, half in halves.items() if half == "test"})
    by_language = {
        language: tested.rows_of(set(tested.index.loc[tested.index["language"] == language, "sample_id"]))
        for language in sorted(tested.index["language"].unique())
    }
    static_flat = {
        language: group["flat"].to_numpy() for language, group in static.groupby("language", sort=True)
    }
    claims = statistic_claims(by_language, static_flat, analysis.replicates, analysis.seed, context)
    if not analysis.probes:
        _write_claims(store, claims)
        return [*written, "claims"]
    hidden = store.table("hidden")
    graded = (
        events.sort_values(["sample_id", "step", "layer", "head"])["needle_match_weight"]
        .to_numpy()
        .reshape(steps.matrix.shape)
    )
    with_regions = "mass_support" in events.columns and events["mass_support"].notna().all()
    eq2 = eq2_scores(events, steps) if with_regions else None
    results: dict[str, list[pd.DataFrame]] = {"cca": [], "probe": [], "probe_curves": [], "regression": []}
    languages = [*sorted(steps.index["language"].unique()), ALL]
    cca_gains: dict[str, ProbeGain | None] = {}
    probe_gains: dict[str, dict[str, ProbeGain]] = {}
    for language in tqdm(languages, desc="probes", disable=not progress):
        chosen = steps.index["language"].eq(language) if language != ALL else steps.index["language"].notna()
        ids = set(steps.index.loc[chosen, "sample_id"])
        parts = split_samples(sorted(ids), analysis.probe.split, analysis.seed)
        part_steps = steps.rows_of(ids)
        mine = hidden[hidden["sample_id"].isin(ids)]
        rows = steps.index["sample_id"].isin(ids).to_numpy()
        binary = _step_data(part_steps, mine, steps.matrix[rows].astype(np.float32), parts)
        scores = _step_data(part_steps, mine, graded[rows], parts)
        results["cca"].append(cca_sweep(scores, analysis.probe).assign(language=language))
        probe, curves, trained, gains = probe_heads(binary, analysis.probe)
        if language == ALL:  # one probe per model, as the paper fits it (a language alone tests ~2 samples)
            cca_gains[language] = cca_gain(scores, analysis.probe)
            probe_gains[language] = gains
        if trained is not None:
            trained.save(probe_path(store.root, language))
        results["probe"].append(probe.assign(language=language, samples=len(ids)))
        results["probe_curves"].append(curves.assign(language=language))
        if eq2 is not None:
            regression = regress_heads(_step_data(part_steps, mine, eq2[rows], parts), analysis.probe)
            results["regression"].append(regression.assign(language=language))
    for name, frames in results.items():
        if frames:
            store.write_derived(name, pd.concat(frames, ignore_index=True))
            written.append(name)
    _write_claims(store, [*claims, *probe_claims(cca_gains, probe_gains, context)])
    return [*written, "claims"]


def _write_claims(store: RunStore, rows: list[tuple[dict, list[dict]]]) -> None:
    for name, frame in claims_tables(rows).items():
        store.write_derived(name, frame)
