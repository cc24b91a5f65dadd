"""The report section of a compression run."""

from __future__ import annotations

from babelheads.report import compress_figures as figures
from babelheads.report.base import Page, ReportSection, Run, Section, register_section
from babelheads.report.compress_text import compress_summary
from babelheads.runs import RunStore


def languages(store: RunStore, config: dict) -> list[str]:
    return list(config["niah"]["languages"])


def draw(run: Run, page: Page) -> list[Section]:
    scores = run.store.derived("compress_scores")
    drawn = [figures.accuracy_bytes_chart(scores)]
    if scores["heads"].isin(scores["language"].unique()).any():
        drawn.append(figures.crosslingual_matrix(scores))
    return [
        Section(
            f"KV-cache compression run {run.path.name}", summary=compress_summary(run.store), figures=drawn
        )
    ]


SECTION = register_section(ReportSection("compress", languages, draw))
