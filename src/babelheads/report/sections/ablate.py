"""The report section of an ablation run: accuracy as K heads of each set are masked."""

from __future__ import annotations

from babelheads.report import figures
from babelheads.report.base import Page, ReportSection, Run, Section, register_section
from babelheads.report.text import ablation_summary
from babelheads.runs import RunStore

COT_TITLE = "Chain-of-thought vs direct answers when retrieval heads are masked"
COT_CAPTION = (
    "Word problems asked with a reasoning prompt ('/cot') and a direct-answer prompt ('/direct'): exact "
    "numeric accuracy as K heads of each set are masked. Wu et al. (2024) report that masking retrieval "
    "heads hurts chain-of-thought far more than masking random heads. The text summary gives every "
    "change with its paired 95% interval."
)


def languages(store: RunStore, config: dict) -> list[str]:
    return list(dict.fromkeys(store.derived("ablation")["language"]))


def draw(run: Run, page: Page) -> list[Section]:
    table = run.store.derived("ablation")
    cot = "task" in table and (table["task"] == "cot").any()
    figure = (
        figures.ablation_curves(table, page.min_samples, COT_TITLE, COT_CAPTION)
        if cot
        else figures.ablation_curves(table, page.min_samples)
    )
    return [Section(f"Ablation run {run.path.name}", summary=ablation_summary(run.store), figures=[figure])]


SECTION = register_section(ReportSection("ablate", languages, draw))
