"""The report's opening section: every claim the model's runs tested, from their claims tables."""

from __future__ import annotations

import pandas as pd

# the modules that register claims (their figures' titles link the rows)
import babelheads.analysis.ablation_claims
import babelheads.analysis.dynamic_ablation_claims
import babelheads.analysis.dynamic_claims
import babelheads.analysis.kv_claims
import babelheads.analysis.lahis_claims
import babelheads.analysis.multilingual_claims
import babelheads.analysis.rag_claims  # noqa: F401
from babelheads.analysis.claims import COLUMNS
from babelheads.report.base import Page, Run, Section, register_lead


def gathered(runs: list[Run]) -> pd.DataFrame:
    """The claims tables of ``runs`` (those that wrote one), in the order the runs were given."""
    frames = [run.store.derived("claims") for run in runs if (run.store.root / "claims.parquet").exists()]
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.concat(frames, ignore_index=True)


def claims(runs: list[Run], page: Page) -> list[Section]:
    table = gathered(runs)
    if table.empty:
        return []
    return [Section("Claims of the seed papers", claims=table)]


register_lead(claims)
