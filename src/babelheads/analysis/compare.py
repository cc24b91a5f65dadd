"""Cross-language (and cross-model) comparison of detection runs' per-sample head scores: Findings 1-4
as tables, every figure with a bootstrap interval (columns lo, hi): overlap and rank statistics draw
the parallel grid's cells jointly for every language; a head's score and the translation table draw
each condition's samples (descriptive: the claims table holds the verdicts, on paired cells, with
heads chosen on other cells than the ones that measure them).

Pure functions from a run's tables (:class:`DetectionTables`) to tables; experiments/compare.py reads
the runs and writes what these return.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from babelheads.analysis import crosslingual
from babelheads.analysis.aggregate import AggregateSettings, with_success
from babelheads.analysis.cell_grid import CellGrid, cell_grid
from babelheads.analysis.claims import Context, claims_tables
from babelheads.analysis.distribution import distribution
from babelheads.analysis.multilingual_claims import multilingual_claims
from babelheads.analysis.scores import ScoreMatrix, bootstrap, score_matrix
from babelheads.analysis.stats import (
    COLUMNS,
    LEVEL,
    bootstrap_mean,
    bootstrap_statistics,
    difference_of_means,
    percentiles,
    row,
)
from babelheads.errors import BabelheadsError, ThinDataWarning
from babelheads.heads import HeadAddress

TRANSLATION_TOP_HEADS = 10


@dataclass(frozen=True)
class CompareConfig:
    """threshold : retrieval-head threshold; strong : strong-head threshold; replicates : bootstrap draws."""

    threshold: float = crosslingual.RETRIEVAL_THRESHOLD
    strong: float = crosslingual.STRONG_THRESHOLD
    replicates: int = 200
    seed: int = 0
    models: bool = False
    min_samples: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= self.strong:
            raise BabelheadsError(
                f"Need 0 < threshold <= strong. Got threshold {self.threshold}, strong {self.strong}."
            )
        if self.replicates < 10:
            raise BabelheadsError(f"Use at least 10 bootstrap replicates. Got {self.replicates}.")


@dataclass
class DetectionTables:
    """What compare reads from one detection run."""

    samples: pd.DataFrame
    head_scores: pd.DataFrame
    settings: AggregateSettings


def merged_matrix(
    runs: list[DetectionTables], variant: str | None = None, score_on: str | None = None
) -> ScoreMatrix:
    """One matrix over the runs' conditions; a condition in several runs pools their samples."""
    matrices = []
    for run in runs:
        settings = run.settings if score_on is None else replace(run.settings, score_on=score_on)
        matrices.append(score_matrix(run.samples, run.head_scores, settings, variant))
    first = matrices[0]
    pooled: dict[str, list[np.ndarray]] = {}
    for matrix in matrices:
        if not (np.array_equal(matrix.layers, first.layers) and np.array_equal(matrix.heads, first.heads)):
            raise BabelheadsError("The runs have different head layouts; they cannot come from one model.")
        for condition, values in matrix.per_sample.items():
            pooled.setdefault(condition, []).append(values)
    return ScoreMatrix(
        first.layers, first.heads, {key: np.concatenate(parts) for key, parts in pooled.items()}
    )


def monolingual(matrix: ScoreMatrix) -> ScoreMatrix:
    kept = {key: values for key, values in matrix.per_sample.items() if ">" not in key}
    return ScoreMatrix(matrix.layers, matrix.heads, kept)


def thin_conditions(matrix: ScoreMatrix, min_samples: int) -> tuple[list[str], list[str]]:
    """(conditions with at least ``min_samples`` samples, notes for the others)."""
    kept, notes = [], []
    for condition, count in matrix.counts().items():
        if count >= min_samples:
            kept.append(condition)
        else:
            notes.append(
                f"{condition}: {count} successful samples (at least {min_samples} needed): left out of the "
                "cross-language statistics, which would otherwise read it as a language without "
                "retrieval heads"
            )
    for note in notes:
        warnings.warn(note, ThinDataWarning, stacklevel=2)
    return kept, notes


def crosslingual_tables(
    runs: list[DetectionTables], config: CompareConfig, context: Context | None = None
) -> dict[str, pd.DataFrame]:
    """Findings 1-4 as tables, every figure with a bootstrap interval over samples, and (with a
    ``context``) the claims they test. Languages with too few successful samples are left out of the
    statistics and named in the 'notes' table."""
    matrix = merged_matrix(runs)
    mono = monolingual(matrix)
    kept, notes = thin_conditions(mono, config.min_samples)
    mono = mono.subset(kept)
    means = mono.mean()
    tables: dict[str, pd.DataFrame] = {
        "heads": _heads_table(mono, config),
        "accuracy": accuracy_table(runs),
        "settings": pd.DataFrame([{**asdict(config), "languages": " ".join(kept)}]),
    }
    if kept:
        tables["overlap"] = crosslingual.overlap_table(means, mono.layers, mono.labels(), config.threshold)
        tables["overlap"]["heads"] = tables["overlap"]["heads"].map(" ".join)
        tables["generality"] = crosslingual.generality_table(means, mono.layers, mono.heads, config.threshold)
    if len(kept) >= 2:
        grid = _grid(runs)

        def on_cells(rows: np.ndarray) -> dict[str, float]:
            scores = grid.mean_scores(rows, kept)
            if any(np.isnan(values).any() for values in scores.values()):
                return {}  # a language without a success in this draw: the draw does not count
            return {
                **crosslingual.overlap_statistics(scores, grid.layers, config.threshold, config.strong),
                **crosslingual.rank_agreement(scores, config.threshold, config.strong),
            }

        # the grid is parallel: cells are drawn once for every language (the design's unit)
        statistics = bootstrap_statistics(
            np.arange(len(grid.cells)),
            on_cells,
            lambda rows, rng: rows[rng.integers(0, len(rows), len(rows))],
            config.replicates,
            config.seed,
            percentiles(LEVEL),
        )
        statistics.insert(4, "n", len(grid.cells))
        ranks = statistics["statistic"].str.contains("|", regex=False)
        tables["overlap_statistics"] = statistics[~ranks].reset_index(drop=True)
        split = crosslingual.split_keys(statistics[ranks])
        contrast = split["measure"].str.endswith("_gap")
        tables["rank_agreement"] = _rank_table(split[~contrast])
        chosen = split.loc[contrast, ["measure", "pair", "subset", *COLUMNS]]
        tables["rank_contrasts"] = chosen.reset_index(drop=True)
    translation = translation_table(runs, config)
    if not translation.empty:
        tables["translation"] = translation
    tables["notes"] = pd.DataFrame({"note": notes}, dtype=object)
    if context is not None:
        tables |= detection_claims(runs, config, kept, context)
    return tables


def detection_claims(
    runs: list[DetectionTables], config: CompareConfig, languages: list[str], context: Context
) -> dict[str, pd.DataFrame]:
    """The claims and claim_parts tables of Wu et al.'s sparsity and Findings 1-4, on the runs' cells."""
    rows = multilingual_claims(
        _grid(runs), languages, config.threshold, config.strong, config.replicates, config.seed, context
    )
    return claims_tables(rows)


def _grid(runs: list[DetectionTables]) -> CellGrid:
    settings = runs[0].settings
    return cell_grid(
        pd.concat([run.samples for run in runs], ignore_index=True),
        pd.concat([run.head_scores for run in runs], ignore_index=True),
        settings.score,
        settings.success_threshold,
    )


def _heads_table(matrix: ScoreMatrix, config: CompareConfig) -> pd.DataFrame:
    """Every head's mean score per condition, with a bootstrap interval."""
    labels = matrix.labels()
    frames = []
    for condition in matrix.conditions:
        frame = bootstrap(
            matrix.subset([condition]),
            lambda scores, c=condition: dict(zip(labels, scores[c].tolist(), strict=True)),
            config.replicates,
            config.seed,
        )
        frame = frame.rename(columns={"statistic": "head_address", "value": "score"})
        frame.insert(0, "language", condition)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["language", "head_address", "score", "lo", "hi", "layer", "head"])
    table = pd.concat(frames, ignore_index=True)
    addresses = table["head_address"].map(HeadAddress.parse)
    table["layer"] = addresses.map(lambda address: address.layer)
    table["head"] = addresses.map(lambda address: address.head)
    table["is_retrieval"] = table["score"] >= config.threshold
    return table


def _rank_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per language pair and head subset, every measure with its interval."""
    rows = []
    for (pair, subset), group in frame.groupby(["pair", "subset"], sort=False):
        row = {"pair": pair, "subset": subset, "n": int(group["n"].iloc[0])}
        for record in group.itertuples():
            row[record.measure] = record.value
            if record.measure in ("spearman", "kendall", "rank_diff"):
                row[f"{record.measure}_lo"], row[f"{record.measure}_hi"] = record.lo, record.hi
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_table(runs: list[DetectionTables]) -> pd.DataFrame:
    """Retrieval accuracy by condition, length and depth, with the prompts' actual token lengths."""
    frames = [with_success(run.samples, run.settings.success_threshold) for run in runs]
    samples = pd.concat(frames, ignore_index=True)
    grouped = samples.groupby(["language", "length", "depth"])
    return grouped.agg(
        accuracy=("success", "mean"),
        rouge1_recall=("rouge1_recall", "mean"),
        samples=("success", "size"),
        tokens=("tokens", "mean"),
        depth_actual=("depth_actual", "mean"),
    ).reset_index()


def translation_table(runs: list[DetectionTables], config: CompareConfig) -> pd.DataFrame:
    """Finding 4: for each 'A>B' condition and needle kind, the top retrieval heads of A, monolingual vs
    translated: copy score and needle-attention score (over all samples, right or wrong), and accuracy.

    A copy needs the emitted token inside the source answer span; a translated fact answer has other
    tokens, so its copy score is 0 by construction and needle attention is the measure that can tell.
    Keys (codes, numbers) are copied verbatim in every language, so both measures apply to them.
    """
    retrieval = merged_matrix(runs)
    means = retrieval.mean()
    samples = pd.concat(
        [with_success(run.samples, run.settings.success_threshold) for run in runs], ignore_index=True
    )
    rows = []
    for condition in retrieval.conditions:
        source, _, target = condition.partition(">")
        if not target or source not in retrieval.per_sample:
            continue
        if retrieval.counts()[source] < config.min_samples:
            continue  # its top heads would be picked from noise; the notes name the thin language
        ranking = [
            index
            for index in np.argsort(-np.nan_to_num(means[source], nan=-1.0), kind="stable")[
                :TRANSLATION_TOP_HEADS
            ]
            if means[source][index] > 0
        ]
        for kind in sorted(set(samples.loc[samples["language"] == condition, "needle_kind"])):
            rows += _translation_rows(runs, condition, source, kind, ranking, samples, config)
    return pd.DataFrame(rows)


def _translation_rows(
    runs: list[DetectionTables],
    condition: str,
    source: str,
    kind: str,
    ranking: list[int],
    samples: pd.DataFrame,
    config: CompareConfig,
) -> list[dict]:
    subset = [_of_needle_kind(run, kind) for run in runs]
    subset = [run for run in subset if not run.samples.empty]
    copies = merged_matrix(subset, score_on="all")
    attention = merged_matrix(subset, variant="needle_attention", score_on="all")
    if source not in copies.per_sample or condition not in copies.per_sample:
        return []
    joined = ScoreMatrix(
        copies.layers,
        copies.heads,
        {
            "copy_mono": copies.per_sample[source],
            "copy_translation": copies.per_sample[condition],
            "attention_mono": attention.per_sample[source],
            "attention_translation": attention.per_sample[condition],
        },
    )
    statistics = bootstrap(
        joined,
        lambda scores, picked=ranking: _translation_statistics(scores, picked),
        config.replicates,
        config.seed,
    )
    base = {"condition": condition, "monolingual": source, "needle_kind": kind, "top_heads": len(ranking)}
    rows = [
        {**base, "measure": measured.statistic, **{name: getattr(measured, name) for name in COLUMNS}}
        for measured in statistics.itertuples()
    ]
    chosen = samples[samples["needle_kind"] == kind]
    outcomes = {
        label: chosen.loc[chosen["language"] == label, "success"].to_numpy(dtype=float)
        for label in (source, condition)
    }
    for measure, label in (("accuracy_mono", source), ("accuracy_translation", condition)):
        accuracy = bootstrap_mean(outcomes[label], config.replicates, config.seed)
        rows.append({**base, "measure": measure, **row(accuracy)})
    drop = difference_of_means(outcomes[source], outcomes[condition], config.replicates, config.seed)
    rows.append({**base, "measure": "accuracy_drop", **row(drop)})
    return rows


def _translation_statistics(scores: dict[str, np.ndarray], picked: list[int]) -> dict[str, float]:
    """The top heads' mean copy and needle-attention scores, monolingual and translated, and the drops
    (monolingual minus translated) that Finding 4 is about."""
    means = {name: float(values[picked].mean()) if picked else np.nan for name, values in scores.items()}
    means["copy_drop"] = means["copy_mono"] - means["copy_translation"]
    means["attention_drop"] = means["attention_mono"] - means["attention_translation"]
    return means


def _of_needle_kind(run: DetectionTables, kind: str) -> DetectionTables:
    chosen = set(run.samples.loc[run.samples["needle_kind"] == kind, "sample_id"])
    return DetectionTables(
        run.samples[run.samples["sample_id"].isin(chosen)],
        run.head_scores[run.head_scores["sample_id"].isin(chosen)],
        run.settings,
    )


def model_tables(
    runs: list[DetectionTables], names: list[str], scores: list[pd.DataFrame], config: CompareConfig
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Two models (or a base and its variant): overlap and rank agreement per language, by head address.
    Where head shapes differ, heads cannot be matched: only the score distributions are compared.

    runs, names, scores : per model, its run's tables, its name and its per-language scores table.
    """
    first, second = (monolingual(merged_matrix([run])) for run in runs)
    notes = []
    frames = []
    for name, table in zip(names, scores, strict=True):
        frames.append(distribution(table).reset_index().assign(model=name))
    tables = {"model_distribution": pd.concat(frames, ignore_index=True)}
    shape = [(int(m.layers.max()) + 1, int(m.heads.max()) + 1) for m in (first, second)]
    if shape[0] != shape[1]:
        notes.append(
            f"Head shapes differ ({names[0]}: {shape[0][0]} layers x {shape[0][1]} heads, {names[1]}: "
            f"{shape[1][0]} x {shape[1][1]}): heads cannot be matched by address, so only the score "
            "distributions are compared."
        )
        return tables, notes
    rows = []
    for language in sorted(set(first.conditions) & set(second.conditions)):
        pair = ScoreMatrix(
            first.layers,
            first.heads,
            {names[0]: first.per_sample[language], names[1]: second.per_sample[language]},
        )
        if min(pair.counts().values()) < config.min_samples:
            notes.append(f"{language}: too few successful samples in one of the models to compare them.")
            continue
        statistics = bootstrap(
            pair,
            lambda scores, layers=pair.layers: {
                **crosslingual.overlap_statistics(scores, layers, config.threshold, config.strong),
                **crosslingual.rank_agreement(scores, config.threshold, config.strong),
            },
            config.replicates,
            config.seed,
        )
        rows.append(statistics.assign(language=language))
    if not rows:
        notes.append("The two runs share no language with enough samples; nothing to match.")
        return tables, notes
    tables["model_agreement"] = pd.concat(rows, ignore_index=True)
    return tables, notes
