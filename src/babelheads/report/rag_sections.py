"""The report section of a dynamic-RAG run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from babelheads.report import rag_figures as figures
from babelheads.report.rag_text import rag_summary, traced_question

if TYPE_CHECKING:
    from babelheads.report.html import Run, Section

RAG_KINDS = ("rag",)


def rag_section(run: Run) -> Section:
    from babelheads.report.html import Section

    store = run.store
    drawn = [figures.scores_chart(store.derived("rag_scores"))]
    sample_id = traced_question(store)
    if sample_id is not None:
        drawn.append(figures.trace_chart(store.table("samples"), store.table("trace"), sample_id))
    return Section(f"Dynamic RAG run {run.path.name}", summary=rag_summary(store), figures=drawn)
