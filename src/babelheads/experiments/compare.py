"""Cross-language (and cross-model) comparison of detection runs: reads the runs, writes the tables of
analysis/compare.py in a store and as CSV."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from babelheads.analysis.claims import Context
from babelheads.analysis.compare import CompareConfig, DetectionTables, crosslingual_tables, model_tables
from babelheads.errors import BabelheadsError
from babelheads.runs import RunStore
from babelheads.sources import recorded_analysis


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


def read_detection(store: RunStore) -> DetectionTables:
    """A run's raw tables and the analysis settings it was aggregated with."""
    return DetectionTables(store.table("samples"), store.table("head_scores"), recorded_analysis(store)[0])


def compare_models(
    stores: list[RunStore], config: CompareConfig
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Two models' runs (or a base and its variant) read and matched by head address (model_tables)."""
    if len(stores) != 2:
        raise BabelheadsError(f"A model comparison takes exactly two runs, one per model. Got {len(stores)}.")
    runs = [read_detection(store) for store in stores]
    names = [model_name(store) for store in stores]
    return model_tables(runs, names, [store.derived("scores") for store in stores], config)


def run_compare(
    paths: list[Path], out: Path, config: CompareConfig
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Compare runs and write every table as Parquet and CSV under ``out`` with a manifest."""
    stores = detection_runs(paths)
    notes: list[str] = []
    if config.models:
        tables, notes = compare_models(stores, config)
        tables["notes"] = pd.DataFrame({"note": notes}, dtype=object)
    else:
        check_same_model(stores)
        context = Context(model_name(stores[0]), str(Path(out)))
        tables = crosslingual_tables([read_detection(store) for store in stores], config, context)
        notes = list(tables["notes"]["note"])
    store = RunStore(out)
    spec = {
        "kind": "compare",
        "config": asdict(config),
        "runs": [str(Path(p).resolve()) for p in paths],
        "run_digests": [store_.manifest()["spec_digest"] for store_ in stores],
    }
    store.check_compatible(spec, ignore=("run_digests",))
    store.create(spec, config.seed)
    for name, table in tables.items():
        store.write_table(name, table)
    return tables, notes
