"""Text summaries of dynamic-RAG runs: scores per selection with intervals, the paired contrasts, and
the retrieval trace of one question."""

from __future__ import annotations

from babelheads.report.dynamic_text import _number, verdict
from babelheads.runs import RunStore


def rag_summary(store: RunStore) -> str:
    if not store.has_derived("rag_scores"):
        return "The run is not finished: run the same command again to finish it."
    scores, contrasts = store.derived("rag_scores"), store.derived("rag_contrasts")
    lines = []
    for language, group in scores.groupby("language", sort=False):
        lines.append(f"[{language}] {int(group['n'].iloc[0])} questions")
        for _, row in group.iterrows():
            lines.append(
                f"  {row['selection']:<9} EM {_number(row['exact'])} [{_number(row['exact_lo'])}, "
                f"{_number(row['exact_hi'])}]  F1 {_number(row['f1'])} [{_number(row['f1_lo'])}, "
                f"{_number(row['f1_hi'])}]  retrieved {_number(row['retrieved'])}  "
                f"retrievals {_number(row['retrievals'], 1)}  "
                f"documents {_number(row['documents'], 1)}  "
                f"supporting facts found {_number(row['gold_found'])}"
            )
        mine = contrasts[(contrasts["language"] == language) & (contrasts["metric"] == "f1")]
        for _, row in mine.iterrows():
            lines.append(
                f"  F1 {row['contrast']:<18} {_number(row['value'], 3)} "
                f"[{_number(row['lo'], 3)}, {_number(row['hi'], 3)}]"
                + verdict(row["lo"], row["hi"], "questions")
            )
    lines.append("")
    lines.append(trace_text(store))
    return "\n".join(lines)


def traced_question(store: RunStore) -> str | None:
    """The question whose head-guided answers retrieved most often (ties: the first id): the trace
    that shows most."""
    trace = store.table("trace")
    guided = trace[trace["step"] >= 0]
    if guided.empty:
        return None
    counts = guided.groupby("sample_id").size()
    return str(counts[counts == counts.max()].index.sort_values()[0])


def trace_text(store: RunStore, sample_id: str | None = None) -> str:
    sample_id = sample_id or traced_question(store)
    if sample_id is None:
        return "No head-guided retrieval was triggered (see --threshold)."
    samples = store.table("samples")
    trace = store.table("trace")
    mine = samples[samples["sample_id"] == sample_id]
    first = mine.iloc[0]
    lines = [f"Retrieval trace of {sample_id} (answer: {first['answer']!r})"]
    for _, answer in mine.iterrows():
        lines.append(f"  {answer['selection']}: {answer['prediction']!r} (F1 {_number(answer['f1'])})")
        for _, row in trace[
            (trace["sample_id"] == sample_id) & (trace["selection"] == answer["selection"])
        ].iterrows():
            when = (
                "before answering"
                if row["step"] < 0
                else f"at answer token {int(row['step'])} {row['trigger'].strip()!r} "
                f"(RIND {_number(row['rind'])})"
            )
            heads = f" heads {row['heads']};" if row["heads"] else ""
            lines.append(f"    retrieval {int(row['retrieval'])} {when};{heads} query {row['query']!r}")
            marks = [
                f"{document}{' (supporting)' if flag == '1' else ''}"
                for document, flag in zip(row["documents"].split(), row["gold"].split(), strict=True)
            ]
            lines.append(f"      -> {', '.join(marks) or '(no document matched)'}")
    return "\n".join(lines)
