"""Report sections of dynamic-heads runs: the recorded run (raster, statistics, CCA, probes) and the
dynamic ablation."""

from __future__ import annotations

from babelheads.report import dynamic_figures as figures
from babelheads.report.base import Page, ReportSection, Run, Section, register_section
from babelheads.report.dynamic_text import dynamic_ablation_summary, dynamic_summary
from babelheads.runs import RunStore


def languages(store: RunStore, config: dict) -> list[str]:
    task = config.get("niah") or config.get("multihop") or {}
    return list(task.get("languages") or config.get("languages", []))


def draw(run: Run, page: Page) -> list[Section]:
    return [_section(run)]


def _section(run: Run) -> Section:
    store = run.store
    name = run.path.name
    if run.kind == "dynamic-ablate":
        return Section(
            f"Dynamic ablation run {name}",
            summary=dynamic_ablation_summary(store),
            figures=[figures.ablation_chart(store.derived("dynamic_ablation"))],
        )
    stats, static = store.derived("dynamic_stats"), store.derived("static_heads")
    drawn = []
    events = store.table("events")
    retrieving = events[events["needle_copy"].fillna(False).astype(bool)]
    if not retrieving.empty:
        # The sample with the most retrieval steps shows the most.
        sample_id = retrieving.groupby("sample_id")["step"].nunique().sort_values(kind="stable").index[-1]
        language = store.table("samples").set_index("sample_id").loc[sample_id, "language"]
        drawn.append(
            figures.raster(events, set(static.loc[static["language"] == language, "head"]), sample_id)
        )
    if not stats.empty:
        drawn.append(figures.statistics_chart(stats))
    if store.has_derived("cca"):
        drawn.append(figures.cca_chart(store.derived("cca")))
        probe = store.derived("probe")
        if not probe.empty:
            drawn.append(figures.probe_curves(store.derived("probe_curves"), probe))
    return Section(f"Dynamic retrieval heads run {name}", summary=dynamic_summary(store), figures=drawn)


for _kind in ("dynamic", "dynamic-ablate"):
    register_section(ReportSection(_kind, languages, draw))
