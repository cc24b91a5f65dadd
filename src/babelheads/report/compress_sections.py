"""The report section of a compression run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from babelheads.report import compress_figures as figures
from babelheads.report.compress_text import compress_summary

if TYPE_CHECKING:
    from babelheads.report.html import Run, Section

COMPRESS_KINDS = ("compress",)


def compress_section(run: Run) -> Section:
    from babelheads.report.html import Section

    scores = run.store.derived("compress_scores")
    drawn = [figures.accuracy_bytes_chart(scores)]
    if scores["heads"].isin(scores["language"].unique()).any():
        drawn.append(figures.crosslingual_matrix(scores))
    return Section(
        f"KV-cache compression run {run.path.name}", summary=compress_summary(run.store), figures=drawn
    )
