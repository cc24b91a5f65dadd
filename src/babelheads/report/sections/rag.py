"""The report section of a dynamic-RAG run."""

from __future__ import annotations

from babelheads.report import rag_figures as figures
from babelheads.report.base import Page, ReportSection, Run, Section, register_section
from babelheads.report.rag_text import rag_summary, traced_question
from babelheads.runs import RunStore


def languages(store: RunStore, config: dict) -> list[str]:
    return list(config.get("languages", []))


def draw(run: Run, page: Page) -> list[Section]:
    store = run.store
    drawn = [figures.scores_chart(store.derived("rag_scores"))]
    if (store.root / "rag_threshold_sweep.parquet").exists():
        sweep = store.derived("rag_threshold_sweep")
        if not sweep.empty:
            drawn.append(figures.threshold_sweep_chart(sweep))
    sample_id = traced_question(store)
    if sample_id is not None:
        drawn.append(figures.trace_chart(store.table("samples"), store.table("trace"), sample_id))
    return [Section(f"Dynamic RAG run {run.path.name}", summary=rag_summary(store), figures=drawn)]


SECTION = register_section(ReportSection("rag", languages, draw))
