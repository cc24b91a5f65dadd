"""Cross-language (and cross-model) comparison of detection runs: tables in a store, CSV, a summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from babelheads.analysis import crosslingual
from babelheads.analysis.scores import ScoreMatrix, bootstrap, score_matrix
from babelheads.errors import BabelheadsError
from babelheads.runs import RunStore

TRANSLATION_TOP_HEADS = 10


@dataclass(frozen=True)
class CompareConfig:
    """threshold : retrieval-head threshold; strong : strong-head threshold; replicates : bootstrap draws."""

    threshold: float = crosslingual.RETRIEVAL_THRESHOLD
    strong: float = crosslingual.STRONG_THRESHOLD
    replicates: int = 200
    seed: int = 0
    models: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= self.strong:
            raise BabelheadsError(
                f"Need 0 < threshold <= strong. Got threshold {self.threshold}, strong {self.strong}."
            )
        if self.replicates < 10:
            raise BabelheadsError(f"Use at least 10 bootstrap replicates. Got {self.replicates}.")


def detection_runs(paths: list[Path]) -> list[RunStore]:
    stores = []
    for path in paths:
        store = RunStore(path)
        kind = store.manifest()["spec"].get("kind")
        if kind != "detect":
            raise BabelheadsError(
                f"{path} is a {kind!r} run; compare reads detection runs (babelheads detect)."
            )
        store.validate()
        stores.append(store)
    if not stores:
        raise BabelheadsError("Give at least one detection run to compare.")
    return stores


def model_name(store: RunStore) -> str:
    return str(store.manifest()["spec"]["model"].get("model"))


def check_same_model(stores: list[RunStore]) -> None:
    identities = {json_key(store.manifest()["spec"]["model"]): store for store in stores}
    if len(identities) > 1:
        names = ", ".join(sorted({model_name(store) for store in stores}))
        raise BabelheadsError(
            f"These runs are of different models ({names}). To compare models, pass --models "
            "(one run per model)."
        )


def json_key(data: dict) -> str:
    return repr(sorted(data.items()))


def merged_matrix(
    stores: list[RunStore], variant: str | None = None, score_on: str | None = None
) -> ScoreMatrix:
    """One matrix over the runs' conditions; a condition in several runs pools their samples."""
    matrices = [score_matrix(store, variant, score_on) for store in stores]
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


def crosslingual_tables(stores: list[RunStore], config: CompareConfig) -> dict[str, pd.DataFrame]:
    """Findings 1-4 as tables, every figure with a bootstrap interval over samples."""
    matrix = merged_matrix(stores)
    mono = monolingual(matrix)
    means = mono.mean()
    tables: dict[str, pd.DataFrame] = {
        "heads": _heads_table(mono, config),
        "overlap": crosslingual.overlap_table(means, mono.layers, mono.labels(), config.threshold),
        "generality": crosslingual.generality_table(means, mono.layers, mono.heads, config.threshold),
        "accuracy": accuracy_table(stores),
    }
    tables["overlap"]["heads"] = tables["overlap"]["heads"].map(" ".join)
    if len(mono.conditions) >= 2:
        statistics = bootstrap(
            mono,
            lambda scores: {
                **crosslingual.overlap_statistics(scores, mono.layers, config.threshold, config.strong),
                **crosslingual.rank_agreement(scores, config.threshold, config.strong),
            },
            config.replicates,
            config.seed,
        )
        ranks = statistics["statistic"].str.contains("|", regex=False)
        tables["overlap_statistics"] = statistics[~ranks].reset_index(drop=True)
        tables["rank_agreement"] = _rank_table(crosslingual.split_keys(statistics[ranks]))
    translation = translation_table(stores, config)
    if not translation.empty:
        tables["translation"] = translation
    return tables


def _heads_table(matrix: ScoreMatrix, config: CompareConfig) -> pd.DataFrame:
    """Every head's mean score per condition, with a bootstrap interval."""
    labels = matrix.labels()
    frames = []
    for condition in matrix.conditions:
        single = ScoreMatrix(matrix.layers, matrix.heads, {condition: matrix.per_sample[condition]})
        frame = bootstrap(
            single,
            lambda scores, c=condition: dict(zip(labels, scores[c].tolist(), strict=True)),
            config.replicates,
            config.seed,
        )
        frame = frame.rename(columns={"statistic": "head_address", "value": "score"})
        frame.insert(0, "language", condition)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table["layer"] = table["head_address"].str.split("-").str[0].astype(int)
    table["head"] = table["head_address"].str.split("-").str[1].astype(int)
    table["is_retrieval"] = table["score"] >= config.threshold
    return table


def _rank_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per language pair and head subset, every measure with its interval."""
    rows = []
    for (pair, subset), group in frame.groupby(["pair", "subset"], sort=False):
        row = {"pair": pair, "subset": subset}
        for record in group.itertuples():
            row[record.measure] = record.value
            if record.measure in ("spearman", "kendall", "rank_diff"):
                row[f"{record.measure}_lo"], row[f"{record.measure}_hi"] = record.lo, record.hi
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_table(stores: list[RunStore]) -> pd.DataFrame:
    """Retrieval accuracy by condition, length and depth: the familiar haystack chart's numbers."""
    samples = pd.concat([store.table("samples") for store in stores], ignore_index=True)
    grouped = samples.groupby(["language", "length", "depth"])
    return grouped.agg(
        accuracy=("success", "mean"), rouge1_recall=("rouge1_recall", "mean"), samples=("success", "size")
    ).reset_index()


def translation_table(stores: list[RunStore], config: CompareConfig) -> pd.DataFrame:
    """Finding 4: for each 'A>B' condition, the top retrieval heads of A, monolingual vs translated:
    copy score and needle-attention score (both over all samples, right or wrong), and accuracy."""
    copies = merged_matrix(stores, score_on="all")
    attention = merged_matrix(stores, variant="needle_attention", score_on="all")
    retrieval = merged_matrix(stores)
    accuracy = pd.concat([store.table("samples") for store in stores]).groupby("language")["success"].mean()
    rows = []
    for condition in copies.conditions:
        source, _, target = condition.partition(">")
        if not target or source not in copies.per_sample:
            continue
        ranking = np.argsort(-retrieval.mean()[source], kind="stable")[:TRANSLATION_TOP_HEADS]
        ranking = [index for index in ranking if retrieval.mean()[source][index] > 0]
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
            lambda scores, picked=ranking: {
                name: float(values[picked].mean()) if picked else np.nan for name, values in scores.items()
            },
            config.replicates,
            config.seed,
        )
        for row in statistics.itertuples():
            rows.append(
                {
                    "condition": condition,
                    "monolingual": source,
                    "measure": row.statistic,
                    "value": row.value,
                    "lo": row.lo,
                    "hi": row.hi,
                    "top_heads": len(ranking),
                }
            )
        rows.append(
            {
                "condition": condition,
                "monolingual": source,
                "measure": "accuracy_mono",
                "value": accuracy.get(source, np.nan),
                "lo": np.nan,
                "hi": np.nan,
                "top_heads": len(ranking),
            }
        )
        rows.append(
            {
                "condition": condition,
                "monolingual": source,
                "measure": "accuracy_translation",
                "value": accuracy.get(condition, np.nan),
                "lo": np.nan,
                "hi": np.nan,
                "top_heads": len(ranking),
            }
        )
    return pd.DataFrame(rows)


def model_tables(stores: list[RunStore], config: CompareConfig) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Two models (or a base and its variant): overlap and rank agreement per language, by head address.
    Where head shapes differ, heads cannot be matched: only the score distributions are compared."""
    if len(stores) != 2:
        raise BabelheadsError(f"A model comparison takes exactly two runs, one per model. Got {len(stores)}.")
    first, second = (monolingual(score_matrix(store)) for store in stores)
    names = [model_name(store) for store in stores]
    notes = []
    from babelheads.analysis.distribution import distribution

    frames = []
    for name, store in zip(names, stores, strict=True):
        frames.append(distribution(store.derived("scores")).reset_index().assign(model=name))
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
            {
                f"{names[0]}": first.per_sample[language],
                f"{names[1]}": second.per_sample[language],
            },
        )
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
        notes.append("The two runs share no language; nothing to match.")
        return tables, notes
    tables["model_agreement"] = pd.concat(rows, ignore_index=True)
    return tables, notes


def run_compare(
    paths: list[Path], out: Path, config: CompareConfig
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Compare runs and write every table as Parquet and CSV under ``out`` with a manifest."""
    stores = detection_runs(paths)
    notes: list[str] = []
    if config.models:
        tables, notes = model_tables(stores, config)
    else:
        check_same_model(stores)
        tables = crosslingual_tables(stores, config)
    store = RunStore(out)
    spec = {"kind": "compare", "config": asdict(config), "runs": [str(Path(p).resolve()) for p in paths]}
    if store.exists():
        store.check_compatible(spec)
    else:
        store.check_compatible({})
        store.create(spec, config.seed)
    for name, table in tables.items():
        store.write_derived(name, table)
        store.write_csv(name, table)
    return tables, notes
