"""The report section of a detection run: retrieval scores per head and their distribution."""

from __future__ import annotations

from babelheads.analysis.aggregate import with_success
from babelheads.report import figures
from babelheads.report.base import Page, ReportSection, Run, Section, register_section
from babelheads.report.text import detection_summary
from babelheads.runs import RunStore
from babelheads.sources import recorded_analysis


def languages(store: RunStore, config: dict) -> list[str]:
    task = config.get("task", {})
    return [pair.replace(":", ">") for pair in task.get("pairs", [])] or list(task.get("languages", []))


def draw(run: Run, page: Page) -> list[Section]:
    scores = run.store.derived("scores")
    settings, _ = recorded_analysis(run.store)
    samples = with_success(run.store.table("samples"), settings.success_threshold)
    successes = samples.groupby("language")["success"].sum().astype(int).to_dict()
    full = full_attention_layers(run.store.manifest())
    return [
        Section(
            f"Detection run {run.path.name}",
            summary=detection_summary(run.store),
            figures=[
                figures.score_heatmap(scores, successes, page.min_samples, full),
                figures.distribution_chart(scores, successes, page.min_samples),
            ],
        )
    ]


def full_attention_layers(manifest: dict) -> list[int] | None:
    """Full-attention layers from the head layout a detection run recorded; None when every layer is
    alike (nothing worth marking) or the run predates the record."""
    windows = manifest.get("layout", {}).get("layer_windows")
    if not windows or len(set(windows)) == 1:
        return None
    return [layer for layer, window in enumerate(windows) if window is None]


SECTION = register_section(ReportSection("detect", languages, draw))
