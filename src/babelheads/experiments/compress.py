"""Head-guided KV-cache compression on the multilingual NIAH grid: keep the whole context for the
heads of a head set, sink + window (or a budget) for the rest, and measure bytes against accuracy.

Head sets come from another run's scores: a detect or dynamic run (retrieval scores per language), an
importance run (LAHIS importance per language), or a score file ({"L-H": score}). Per language, and
their union (max over languages) and intersection (min). The needles here use another seed than the
heads run, so heads are never tested on the haystacks that chose them. Every policy of a sample reuses
one prefill of its context; the question is prefilled after compression and never evicted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from babelheads.analysis.aggregate import completed
from babelheads.analysis.claims import Context, claims_tables
from babelheads.analysis.compression import compress_contrasts, compress_scores
from babelheads.analysis.kv_claims import kv_claims
from babelheads.errors import BabelheadsError
from babelheads.execution import DEFAULT_EXECUTION, Execution
from babelheads.experiments.base import Experiment, ModelChoice, Prepared, run_experiment, run_identity
from babelheads.heads import HeadLayout, head_label
from babelheads.kvcache import policies
from babelheads.kvcache.cache import compressed_layers, fork
from babelheads.kvcache.decode import CompressedDecode, compressed_decode_from, prefill_context
from babelheads.kvcache.policies import POLICIES, PolicySettings
from babelheads.models import LoadedModel, config_layout
from babelheads.probe import Instrument
from babelheads.runner.parts import Part, execute_samples
from babelheads.runner.stops import StopRule
from babelheads.runs import RunStore
from babelheads.sources import Source, open_source
from babelheads.tasks.base import Sample, content_digest
from babelheads.tasks.niah import NiahSettings, NiahTask

COMBINED = ("union", "intersection")
HEAD_KINDS = ("detect", "dynamic", "importance")
"""The runs whose scores choose heads to keep whole."""


@dataclass(frozen=True)
class CompressConfig:
    """heads : a detect, dynamic or importance run, or a score file (.json). head_sets : whose heads
    every sample is compressed with (languages of the heads run, 'union', 'intersection': the
    cross-lingual matrix); empty: each sample's own language's heads. shares : the shares of
    KV heads kept whole (each one byte budget). control : the claims' negative control: every head
    set's scores replaced by random ones (seeded per set), so 'head-split' keeps random heads whole."""

    heads: str
    model: str | None = None
    niah: NiahSettings = field(
        default_factory=lambda: NiahSettings(
            lengths=(2000,), depths=(0.25, 0.5, 0.75), needles_per_cell=2, seed=1
        )
    )
    policies: tuple[str, ...] = POLICIES
    head_sets: tuple[str, ...] = ()
    shares: tuple[float, ...] = (0.25, 0.5)
    settings: PolicySettings = field(default_factory=PolicySettings)
    random_seeds: int = 4
    max_new_tokens: int = 24
    dtype: str = "auto"
    replicates: int = 1000
    seed: int = 0
    control: bool = False

    def __post_init__(self) -> None:
        unknown = [policy for policy in self.policies if policy not in POLICIES]
        if unknown or "full" not in self.policies:
            raise BabelheadsError(
                f"Policies must include full (the reference) and come from {', '.join(POLICIES)}. "
                f"Got {', '.join(self.policies)}."
            )
        if not self.shares or any(not 0 <= share <= 1 for share in self.shares) or self.random_seeds < 1:
            raise BabelheadsError("shares must lie in [0, 1] and random_seeds be >= 1.")
        if self.replicates < 1 or self.max_new_tokens < 1:
            raise BabelheadsError(
                f"--replicates and --max-new-tokens must be at least 1. Got {self.replicates}, "
                f"{self.max_new_tokens}."
            )
        path = Path(self.heads)
        if path.suffix == ".json" and path.is_file():
            # A score file is read only after the model loads; check it (and its heads against the
            # model's config, where that is readable without the weights) before.
            frame = score_file(path)
            layout = config_layout(self.model) if self.model else None
            if layout is not None:
                check_heads_fit(frame, layout, path)

    def identity(self, model: str) -> dict:
        config = asdict(self)
        config.pop("replicates")
        if not self.control:
            config.pop("control")  # runs from before the control keep their identity
        return {**config, "model": model}


def head_scores(heads: str | Source, layout: HeadLayout) -> dict[str, np.ndarray]:
    """Per language, a (layers, query heads) score array from a run or a score file."""
    if isinstance(heads, Source):
        return heads.score_arrays()
    path = Path(heads)
    if path.suffix == ".json":
        return {"file": _array(score_file(path), layout, path)}
    return open_source(path, HEAD_KINDS, "--heads").score_arrays()


def score_file(path: Path) -> pd.DataFrame:
    """A score file {"L-H": score or [scores]} as layer, head, score; refused, naming the file and the
    head, when it holds no head or a score that is not a finite number (NaN would rank nowhere)."""
    from babelheads.official import read_official

    frame = read_official(path)
    if frame.empty:
        raise BabelheadsError(
            f'{path} holds no head scores. Give {{"L-H": score, ...}} with at least one head, e.g. '
            '{"11-2": 0.9}.'
        )
    bad = frame[~np.isfinite(frame["score"].to_numpy(float))]
    if len(bad):
        row = bad.iloc[0]
        raise BabelheadsError(
            f"{path}: head '{head_label(row['layer'], row['head'])}' has no finite score (got "
            f"{row['score']}; an empty list or NaN). Every score must be a finite number."
        )
    return frame


def check_heads_fit(frame: pd.DataFrame, layout: HeadLayout, path: Path | str) -> None:
    """A head outside the model would be dropped without a word; refuse it, naming the model's shape."""
    outside = frame[(frame["layer"] >= layout.num_layers) | (frame["head"] >= layout.num_heads)]
    if len(outside):
        heads = ", ".join(head_label(r.layer, r.head) for r in outside.head(3).itertuples())
        raise BabelheadsError(
            f"{path} scores head {heads}, outside this model ({layout.num_layers} layers x "
            f"{layout.num_heads} heads: layers 0-{layout.num_layers - 1}, heads 0-{layout.num_heads - 1}). "
            "Use a score file made for this model."
        )


def _array(frame: pd.DataFrame, layout: HeadLayout, source: Path | str) -> np.ndarray:
    check_heads_fit(frame, layout, source)
    array = np.zeros((layout.num_layers, layout.num_heads))
    for _, row in frame.iterrows():
        array[int(row["layer"]), int(row["head"])] = float(row["score"])
    return array


def chosen_sets(config: CompressConfig, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    languages = [code for code in scores if code not in COMBINED]
    combined = {}
    if len(languages) > 1:
        stacked = np.stack([scores[code] for code in languages])
        combined = {"union": stacked.max(axis=0), "intersection": stacked.min(axis=0)}
    available = {**scores, **combined}
    if config.head_sets:
        wanted = list(config.head_sets)
    elif list(scores) == ["file"]:
        wanted = ["file"]  # a score file: its one set for every language
    else:
        wanted = list(config.niah.languages)  # each sample's own language's heads
    missing = [name for name in wanted if name not in available]
    if missing:
        raise BabelheadsError(
            f"{config.heads} has no head scores for {', '.join(missing)} (not run there, or no sample "
            f"answered right). It has: {', '.join(available)}. Name the heads to use with --head-sets."
        )
    return {name: available[name] for name in wanted}


def control_sets(sets: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Every head set's scores replaced by uniform random ones, one seeded draw per set name: heads kept
    whole by them are random heads, so no claim about retrieval heads may hold."""
    return {
        name: np.random.default_rng([seed, *name.encode()]).random(scores.shape)
        for name, scores in sets.items()
    }


class Compression(Experiment):
    """Every NIAH sample's context prefilled once, then compressed and answered under every policy and
    head set; one part per sample."""

    kind = "compress"

    def __init__(self, config: CompressConfig):
        self.config = config
        path = Path(config.heads)
        if not path.exists():
            raise BabelheadsError(
                f"--heads {config.heads} does not exist. Give a detect run or a score file."
            )
        self.heads = (
            open_source(path, HEAD_KINDS, "--heads", other_seed=config.niah.seed) if path.is_dir() else None
        )
        self.heads_identity = (
            self.heads.digest if self.heads else content_digest(path.read_text(encoding="utf-8"))
        )
        self.model_name = config.model or (self.heads.model_name if self.heads else None)
        if self.model_name is None:
            raise BabelheadsError("Give --model: a score file does not name its model.")
        self.task = NiahTask(config.niah)

    def check_execution(self, execution: Execution) -> None:
        if execution.batch_size not in (None, 1):
            raise BabelheadsError(
                f"compress decodes one sample at a time (a compressed cache holds one sequence), so "
                f"--batch-size {execution.batch_size} would be ignored. Leave it out."
            )

    @property
    def seed(self) -> int:
        return self.config.seed

    def identity(self, execution: Execution) -> dict:
        return run_identity(
            self.config.identity(self.model_name),
            self.task.identity(),
            self.config.dtype,
            execution,
            heads=self.heads_identity,
        )

    def model(self) -> ModelChoice:
        return ModelChoice(self.model_name, self.config.dtype)

    def sources(self) -> list[Source]:
        return [self.heads] if self.heads else []

    def part_ids(self) -> list[str]:
        return self.task.sample_ids()

    def prepare(self, loaded: LoadedModel) -> Prepared:
        sets = chosen_sets(self.config, head_scores(self.heads or self.config.heads, loaded.layout))
        if self.config.control:
            sets = control_sets(sets, self.config.seed)
        facts = {"layout": asdict(loaded.layout), "head_sets": list(sets)}
        return Prepared(self.part_ids(), facts, sets)

    def execute(self, store: RunStore, loaded: LoadedModel, prepared: Prepared, execution: Execution) -> None:
        stops = StopRule.for_model(loaded)
        with Instrument(loaded.model, loaded.layout) as instrument:

            def compute(batch: list[Part]):
                for part in batch:
                    rows = _sample_rows(
                        instrument, loaded, part.work, self.task, prepared.state, self.config, stops
                    )
                    yield part, {"samples": pd.DataFrame(rows)}

            execute_samples(
                store,
                prepared.parts,
                lambda: self.task.build(loaded),
                compute,
                shard=execution.shard,
                progress=execution.progress,
                description="compress",
            )

    def finalize(self, store: RunStore) -> None:
        finalize(store, self.config, self.model_name)


def compress(config: CompressConfig, out: Path, execution: Execution = DEFAULT_EXECUTION) -> RunStore:
    """Run (or resume) the compression into ``out``; its scores and contrasts once every sample is done."""
    return run_experiment(Compression(config), out, execution)


def _sets_for(config: CompressConfig, sets: dict[str, np.ndarray], language: str) -> dict[str, np.ndarray]:
    """The head sets a sample is compressed with: every one named by --head-sets (the cross-lingual
    matrix), or by default its own language's (a score file's one set for every language)."""
    if config.head_sets or list(sets) == ["file"]:
        return sets
    return {language: sets[language]}


def _conditions(
    config: CompressConfig,
    sets: dict[str, np.ndarray],
    language: str,
    layout: HeadLayout,
    layers: dict[int, int],
    context: int,
    cache,
) -> list[tuple[dict, dict[int, list[torch.Tensor]]]]:
    """Every (policy, head set, share, seed) of one sample with the positions each KV head keeps."""
    settings = config.settings
    plans: list[tuple[dict, dict[int, list[torch.Tensor]]]] = [
        ({"policy": "full", "heads": "", "share": 1.0, "seed": -1}, {})
    ]
    full_layers = sorted(layers)
    keys = None
    if settings.token_rule == "key-norm" and "head-budget" in config.policies:
        keys = {index: layer.keys[0] for index, layer in compressed_layers(cache).items()}
    for share in config.shares:
        uniform_total = None
        for name, query_scores in _sets_for(config, sets, language).items():
            scores = policies.kv_scores(query_scores, layout.num_kv_heads, settings.kv_mapping)
            full = policies.full_heads(scores, full_layers, share)
            split = policies.head_split(layers, context, full, settings)
            total = policies.kept_total(split)
            uniform_total = total if uniform_total is None else uniform_total
            base = {"heads": name, "share": share}
            if "head-split" in config.policies:
                plans.append(({**base, "policy": "head-split", "seed": -1}, split))
            if "random-heads" in config.policies:
                scope = policies.random_scope(layers)
                for seed in range(config.random_seeds):
                    heads = policies.random_full(layers, full, seed)
                    drawn = policies.head_split(layers, context, heads, settings)
                    # a draw that is the head set itself (one in three on a model with three full
                    # KV heads) is no random baseline: marked, and left out of the contrasts
                    condition = {
                        **base,
                        "policy": "random-heads",
                        "seed": seed,
                        "random_scope": scope,
                        "equals_split": heads == full,
                    }
                    plans.append((condition, drawn))
            if "head-budget" in config.policies:
                budget = policies.head_budget(layers, context, scores, total, settings, keys)
                plans.append(({**base, "policy": "head-budget", "seed": -1}, budget))
        if "window" in config.policies and uniform_total is not None:
            window = policies.equal_window(layers, context, uniform_total, settings)
            plans.append(({"policy": "window", "heads": "", "share": share, "seed": -1}, window))
    return plans


def _sample_rows(
    instrument: Instrument,
    loaded: LoadedModel,
    sample: Sample,
    task: NiahTask,
    sets: dict[str, np.ndarray],
    config: CompressConfig,
    stops: StopRule,
) -> list[dict]:
    context_end = sample.spans["context"][1]
    prefilled = prefill_context(instrument, sample.input_ids, context_end)
    layers = {index: layer.keys.shape[1] for index, layer in compressed_layers(prefilled).items()}
    rows = []
    reference = None
    for condition, keep in _conditions(
        config, sets, sample.language, loaded.layout, layers, context_end, prefilled
    ):
        result: CompressedDecode = compressed_decode_from(
            instrument, fork(prefilled), sample.input_ids, context_end, keep, config.max_new_tokens, stops
        )
        text = loaded.tokenizer.decode(result.decoded.tokens, skip_special_tokens=True).strip()
        check = task.score(sample, text)
        kept_full = (
            sum(1 for heads in keep.values() for positions in heads if len(positions) == context_end)
            if keep
            else sum(layers.values())
        )
        row = {
            "sample_id": sample.sample_id,
            "language": sample.language,
            "status": "ok",
            **condition,
            "output": text,
            "success": bool(check["success"]),
            "rouge1_recall": float(check["rouge1_recall"]),
            "bytes": result.bytes_analytic,
            "bytes_storage": result.bytes_storage,
            "bytes_full_layers": result.bytes_full_layers,
            "peak_prefill": result.peak_prefill,
            "peak_decode": result.peak_decode,
            "kv_heads_full": kept_full,
            "kv_heads": sum(layers.values()),
            "context_tokens": context_end,
            **{key: value for key, value in sample.meta.items() if key in ("length", "depth", "needle_id")},
        }
        if condition["policy"] == "full":
            reference = row
        row["bytes_ratio"] = row["bytes"] / reference["bytes"]
        row["full_layers_ratio"] = (
            row["bytes_full_layers"] / reference["bytes_full_layers"]
            if reference["bytes_full_layers"]
            else np.nan
        )
        rows.append(row)
    return rows


def finalize(store: RunStore, config: CompressConfig, model: str) -> None:
    samples = completed(store.table("samples"))
    scores = compress_scores(samples, config.replicates, config.seed)
    store.write_table("compress_scores", scores)
    contrasts = compress_contrasts(samples, config.replicates, config.seed)
    store.write_table("compress_contrasts", contrasts)
    claims = claims_tables(
        kv_claims(samples, config.replicates, config.seed, Context(model, str(store.root)))
    )
    for name, frame in claims.items():
        store.write_table(name, frame)
