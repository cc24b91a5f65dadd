"""Retrieval-head detection: NIAH samples per language, copy events per head and step, scores."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from babelheads.data.corpora import load_corpus
from babelheads.data.languages import Language, load_language
from babelheads.data.needles import load_needles
from babelheads.data.niah import NiahBuilder, NiahCell, NiahSample, grid_cells
from babelheads.decoding import Decoded, greedy_decode, newline_token_ids
from babelheads.errors import TaskError
from babelheads.heads import HeadLayout
from babelheads.models import DEFAULT_MODEL, LoadedModel, load_model
from babelheads.probe import Instrument, ProbeSettings
from babelheads.runs import RunStore
from babelheads.scoring import SCORE_VARIANTS, check_answer, copy_events, retrieval_scores

PROMPT_FORMATS = ("auto", "chat", "plain")
SCORE_ON = ("success", "all")
NEEDLE_KINDS = ("all", "fact", "key")


@dataclass(frozen=True)
class DetectConfig:
    """Everything that decides a detection run's numbers (the device does not, so it is not here).

    score : the variant reported as ``score`` (both are always stored).
    score_on : average scores over successful samples only (the official code) or over all.
    """

    model: str = DEFAULT_MODEL
    languages: tuple[str, ...] = ("en", "de", "zh")
    pairs: tuple[str, ...] = ()
    corpus: str = "builtin"
    needles: str = "builtin"
    data_dir: str | None = None
    lengths: tuple[int, ...] = (1000, 2000)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    needles_per_cell: int = 1
    needle_kind: str = "all"
    max_new_tokens: int = 32
    score: str = "paper"
    score_on: str = "success"
    success_threshold: float = 0.5
    top_k: int = 4
    sink_tokens: int = 0
    prompt: str = "auto"
    dtype: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.score not in SCORE_VARIANTS:
            raise TaskError(f"Unknown score variant {self.score!r}. Use one of: {', '.join(SCORE_VARIANTS)}.")
        if self.score_on not in SCORE_ON:
            raise TaskError(f"score_on must be one of {SCORE_ON}. Got {self.score_on!r}.")
        if self.prompt not in PROMPT_FORMATS:
            raise TaskError(
                f"Unknown prompt format {self.prompt!r}. Use one of: {', '.join(PROMPT_FORMATS)}."
            )
        if self.needle_kind not in NEEDLE_KINDS:
            raise TaskError(f"needle_kind must be one of {NEEDLE_KINDS}. Got {self.needle_kind!r}.")
        if not self.languages and not self.pairs:
            raise TaskError("No languages given. Use e.g. --languages en,de,zh.")
        for pair in self.pairs:
            source, _, target = pair.partition(":")
            if not source or not target or source == target:
                raise TaskError(
                    f"A pair reads SOURCE:ANSWER with two different languages, e.g. en:zh. Got {pair!r}."
                )
        if not 0.0 <= self.success_threshold < 1.0:
            raise TaskError(f"success_threshold must lie in [0, 1). Got {self.success_threshold}.")
        if not self.lengths or not self.depths:
            raise TaskError("Give at least one length and one depth, e.g. --lengths 1000 --depths 0.5.")
        if self.top_k < 1 or self.sink_tokens < 0:
            raise TaskError(
                f"top_k must be >= 1 and sink_tokens >= 0. Got {self.top_k} and {self.sink_tokens}."
            )
        if self.max_new_tokens < 1:
            raise TaskError(f"max_new_tokens must be at least 1. Got {self.max_new_tokens}.")

    def conditions(self) -> list[tuple[str, str | None]]:
        """(haystack language, answer language or None): pairs when given, else the languages."""
        if self.pairs:
            return [tuple(pair.split(":", 1)) for pair in self.pairs]
        return [(code, None) for code in self.languages]

    def condition_labels(self) -> list[str]:
        return [source if target is None else f"{source}>{target}" for source, target in self.conditions()]


def plan(config: DetectConfig) -> list[NiahCell]:
    """The run's cells, in order; needs no model, so a finished run needs none either."""
    cells = []
    root = Path(config.data_dir) if config.data_dir else None
    for source, target in config.conditions():
        load_language(source, root)
        needles = _needles_of_kind(config, source, root)
        grid = grid_cells(
            source, list(config.lengths), list(config.depths), needles, config.needles_per_cell, config.seed
        )
        if target is None:
            cells += grid
            continue
        answer_language = load_language(target, root)
        translated = {needle.id: needle for needle in load_needles(config.needles, target, root)}
        for cell in grid:
            if cell.needle.id not in translated:
                raise TaskError(
                    f"Needle {cell.needle.id!r} has no {target!r} version, so {source}>{target} cannot check "
                    f"the answer. Add it to the {target} needles."
                )
            expected = translated[cell.needle.id].answer
            cells.append(
                replace(
                    cell, answer_language=target, expected=expected, instruction=answer_language.answer_in
                )
            )
    return cells


def _needles_of_kind(config: DetectConfig, code: str, root: Path | None) -> list:
    needles = load_needles(config.needles, code, root)
    if config.needle_kind == "all":
        return needles
    chosen = [needle for needle in needles if needle.kind == config.needle_kind]
    if not chosen:
        raise TaskError(f"No needles of kind {config.needle_kind!r} for {code!r}. Use --needle-kind all.")
    return chosen


def build_samples(config: DetectConfig, loaded: LoadedModel, cells: list[NiahCell]) -> list[NiahSample]:
    root = Path(config.data_dir) if config.data_dir else None
    chat = {"auto": loaded.is_chat, "chat": True, "plain": False}[config.prompt]
    builders: dict[str, NiahBuilder] = {}
    samples = []
    for cell in cells:
        if cell.language not in builders:
            language = load_language(cell.language, root)
            haystack = load_corpus(config.corpus, cell.language, config.seed, root)
            builders[cell.language] = NiahBuilder(
                language, haystack, loaded.tokenizer, chat, loaded.layout.max_positions
            )
        samples.append(builders[cell.language].build(cell))
    return samples


def run_spec(config: DetectConfig, identity: dict) -> dict:
    return {"kind": "detect", "config": asdict(config), "model": identity}


def detect(config: DetectConfig, out: Path, device: str = "auto", progress: bool = True) -> RunStore:
    """Run (or resume) detection into ``out``; returns the store with its derived tables written."""
    store = RunStore(out)
    cells = plan(config)
    if store.exists():
        # Compare what can be compared before loading the model; the model identity is checked after.
        store.check_compatible({**store.manifest()["spec"], "kind": "detect", "config": asdict(config)})
        store.validate()
        if {cell.sample_id for cell in cells} <= store.finished():
            finalize(store, config)
            return store
    else:
        store.check_compatible({})
    loaded = load_model(
        config.model,
        device=device,
        dtype=config.dtype,
        chat={"auto": None, "chat": True, "plain": False}[config.prompt],
    )
    spec = run_spec(config, loaded.identity)
    store.check_compatible(spec)
    samples = build_samples(config, loaded, cells)
    store.create(spec, config.seed, {"layout": asdict(loaded.layout)})
    root = Path(config.data_dir) if config.data_dir else None
    languages = {code: load_language(code, root) for pair in config.conditions() for code in pair if code}
    instrument = Instrument(loaded.model, loaded.layout, ProbeSettings(config.top_k, config.sink_tokens))
    stops = [token for token in [loaded.tokenizer.eos_token_id] if token is not None]
    newlines = newline_token_ids(loaded.tokenizer)
    done = store.finished()
    todo = [sample for sample in samples if sample.sample_id not in done]
    bar = tqdm(todo, desc="detect", unit="sample", disable=not progress, dynamic_ncols=True)
    try:
        for sample in bar:
            bar.set_postfix_str(sample.sample_id)
            ids = torch.tensor([sample.input_ids], device=loaded.device)
            decoded = greedy_decode(instrument, ids, config.max_new_tokens, stops, newlines)
            answer_language = languages[sample.cell.answer_language or sample.cell.language]
            tables = sample_tables(sample, decoded, loaded, answer_language, config)
            store.append(sample.sample_id, tables)
    finally:
        instrument.detach()
    finalize(store, config)
    return store


def sample_tables(
    sample: NiahSample, decoded: Decoded, loaded: LoadedModel, language: Language, config: DetectConfig
) -> dict[str, pd.DataFrame]:
    layout = loaded.layout
    text = loaded.tokenizer.decode(decoded.tokens, skip_special_tokens=True).strip()
    check = check_answer(
        sample.cell.expected_answer, text, language.answer_tokenizer, config.success_threshold
    )
    events = copy_events(
        decoded.records, decoded.tokens, sample.input_ids, sample.needle_span, sample.answer_span
    )
    scores = retrieval_scores(events, sample.answer_span)
    base = {"sample_id": sample.sample_id, "language": sample.cell.condition}
    samples = pd.DataFrame(
        [
            {
                **base,
                "length": sample.cell.length,
                "tokens": len(sample.input_ids),
                "depth": sample.cell.depth,
                "depth_actual": sample.depth_actual,
                "needle_id": sample.cell.needle.id,
                "needle_kind": sample.cell.needle.kind,
                "source_language": sample.cell.language,
                "answer_language": sample.cell.answer_language or sample.cell.language,
                "answer": sample.cell.expected_answer,
                "output": text,
                "rouge1_recall": check.rouge1_recall,
                "contains": check.contains,
                "success": check.success,
                "steps": len(decoded.tokens),
                "needle_start": sample.needle_span[0],
                "needle_end": sample.needle_span[1],
                "answer_start": sample.answer_span[0],
                "answer_end": sample.answer_span[1],
            }
        ]
    )
    return {
        "events": _events_frame(base, decoded, events, layout),
        "head_scores": _head_frame(
            base, {**scores, "needle_attention": events.in_needle.mean(axis=0)}, layout
        ),
        "samples": samples,
    }


def _events_frame(base: dict, decoded: Decoded, events, layout: HeadLayout) -> pd.DataFrame:
    steps = len(decoded.tokens)
    step, layer, head = np.meshgrid(
        np.arange(steps), np.arange(layout.num_layers), np.arange(layout.num_heads), indexing="ij"
    )
    positions = decoded.records.positions[:, 0]
    weights = decoded.records.weights[:, 0]
    count = steps * layout.total_heads
    return pd.DataFrame(
        {
            "sample_id": base["sample_id"],
            "step": step.ravel().astype(np.int32),
            "token": np.repeat(np.asarray(decoded.tokens, dtype=np.int64), layout.total_heads),
            "layer": layer.ravel().astype(np.int16),
            "head": head.ravel().astype(np.int16),
            "kv_head": (head.ravel() // layout.group_size).astype(np.int16),
            "peak": events.peak.ravel(),
            "weight": weights[..., 0].ravel(),
            "positions": list(positions.reshape(count, -1)),
            "weights": list(weights.reshape(count, -1)),
            "in_needle": events.in_needle.ravel(),
            "in_answer": events.in_answer.ravel(),
            "copy": events.copy.ravel(),
        }
    )


def _head_frame(base: dict, scores: dict[str, np.ndarray], layout: HeadLayout) -> pd.DataFrame:
    layer, head = np.meshgrid(np.arange(layout.num_layers), np.arange(layout.num_heads), indexing="ij")
    return pd.DataFrame(
        {
            **base,
            "layer": layer.ravel().astype(np.int16),
            "head": head.ravel().astype(np.int16),
            "kv_head": (head.ravel() // layout.group_size).astype(np.int16),
            **{variant: values.ravel() for variant, values in scores.items()},
        }
    )


def finalize(store: RunStore, config: DetectConfig) -> None:
    """Aggregate per-sample head scores into per-language scores, KV-head scores and official JSON."""
    samples = store.table("samples")
    heads = store.table("head_scores")
    included = samples.loc[samples["success"] | (config.score_on == "all"), "sample_id"]
    used = heads[heads["sample_id"].isin(set(included))]
    keys = ["language", "layer", "head", "kv_head"]
    grid = heads[keys].drop_duplicates()
    scores = grid.merge(used.groupby(keys)[list(SCORE_VARIANTS)].mean().reset_index(), on=keys, how="left")
    scores[list(SCORE_VARIANTS)] = scores[list(SCORE_VARIANTS)].fillna(0.0)
    # Where a head looks does not depend on the answer being right: averaged over every sample.
    attention = heads.groupby(keys)["needle_attention"].mean().reset_index()
    scores = scores.merge(attention, on=keys, how="left")
    counts = used.groupby("language")["sample_id"].nunique()
    scores["samples_used"] = scores["language"].map(counts).fillna(0).astype(int)
    scores["score"] = scores[config.score]
    scores["variant"] = config.score
    scores = scores.sort_values(keys).reset_index(drop=True)
    store.write_derived("scores", scores)
    # A KV head's score is the maximum over the query heads that read it (RazorAttention's GQA rule).
    group = scores.groupby(["language", "layer", "kv_head"])[list(SCORE_VARIANTS)].max().reset_index()
    group["score"] = group[config.score]
    store.write_derived("kv_scores", group)
    for language in config.condition_labels():
        frame = used[used["language"] == language].sort_values("sample_id")
        per_head = frame.groupby(["layer", "head"])[config.score].apply(list)
        official = {
            f"{layer}-{head}": per_head.get((layer, head), [])
            for layer, head in grid.loc[grid["language"] == language, ["layer", "head"]].itertuples(
                index=False
            )
        }
        store.write_json(f"retrieval_scores.{language}.json", official)
