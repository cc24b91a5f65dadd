"""Report sections of language-head runs: importance, the experiments and the adaptation."""

from __future__ import annotations

from babelheads.report import language_figures as figures
from babelheads.report.base import Page, ReportSection, Run, Section, register_section
from babelheads.report.language_text import adaptation_summary, importance_summary, language_test_summary
from babelheads.runs import RunStore

EFFECTS = {
    "ppl": (
        "ppl",
        "Perplexity when a language's own specific heads are masked",
        "Per language: the rise of mean log-perplexity on held-out texts when its n specific heads are "
        "zeroed (red) and when n random heads are (grey, averaged over seeds), paired per text with 95% "
        "intervals. LAHIS expects the red bars far longer.",
        "nats per token",
    ),
    "general": (
        "general",
        "Masking the language-general heads",
        "Per language: the change of log-perplexity (log_ppl) and of held-out QA accuracy (correct) when "
        "every general head is zeroed, against as many random heads, paired with 95% intervals.",
        "nats per token, or accuracy",
    ),
    "off-target": (
        "off_target",
        "Off-target output when English-specific heads are masked",
        "Per asked language: the change of the share of summaries written in that language (py3langid) "
        "when English-specific heads are zeroed, against random heads. LAHIS reports a rise.",
        "share on target",
    ),
    "attn-transfer": (
        "attn_transfer",
        "Attention transfer between two conflicting statements",
        "Share of answers that follow the language-1 statement (follows_first) or the language-2 one "
        "(follows_second) when language-1 heads are amplified or language-2 heads zeroed, against random "
        "heads treated alike; 'all' pools every language pair, the other rows group by language 1.",
        "share of answers",
    ),
}


def languages(store: RunStore, config: dict) -> list[str]:
    texts = config.get("texts")
    return texts["languages"] if isinstance(texts, dict) else list(config.get("languages", []))


def draw(run: Run, page: Page) -> list[Section]:
    return [_section(run)]


def _section(run: Run) -> Section:
    store = run.store
    spec = store.manifest()["spec"]
    name = run.path.name
    if run.kind == "importance":
        heads = store.derived("language_heads")
        formula = store.read_json("selection.json")["formula"]
        layers = store.manifest()["layout"]["num_layers"]
        return Section(
            f"Language heads (LAHIS) run {name}",
            summary=importance_summary(store),
            figures=[
                figures.importance_maps(store.derived("importance"), heads, formula),
                figures.head_placement(heads, layers),
            ],
        )
    if run.kind == "adapt":
        table = store.derived("adaptation")
        figure = figures.masking_effects(
            table,
            "Soft head-mask adaptation on held-out QA",
            "Held-out QA accuracy change after training gates on the language's heads (red) and on "
            "random heads of the same count (grey), against the original model, paired per question.",
            "accuracy",
        )
        return Section(f"Adaptation run {name}", summary=adaptation_summary(store), figures=[figure])
    experiment = spec["config"]["experiment"]
    if experiment == "ppl-cross":
        drawn = [figures.cross_matrix(store.derived("ppl_cross"), store.derived("diagonality"))]
    elif experiment == "retrieval":
        drawn = [figures.retrieval_overlap_chart(store.derived("retrieval_overlap"))]
    else:
        table, title, caption, unit = EFFECTS[experiment]
        drawn = [figures.masking_effects(store.derived(table), title, caption, unit)]
    return Section(
        f"Language test {experiment}: run {name}", summary=language_test_summary(store), figures=drawn
    )


for _kind in ("importance", "language-test", "adapt"):
    register_section(ReportSection(_kind, languages, draw))
