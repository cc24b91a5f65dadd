"""Text summary of a compression run: accuracy and bytes per policy, and the equal-bytes contrasts."""

from __future__ import annotations

from babelheads.report.dynamic_text import _number, verdict
from babelheads.runs import RunStore


def compress_summary(store: RunStore) -> str:
    if not store.has_derived("compress_scores"):
        return "The run is not finished: run the same command again to finish it."
    scores, contrasts = store.derived("compress_scores"), store.derived("compress_contrasts")
    lines = []
    for language, group in scores.groupby("language", sort=True):
        lines.append(f"[{language}] {int(group['n'].max())} samples")
        for _, row in group.sort_values(
            ["share", "policy", "heads"], ascending=[False, True, True]
        ).iterrows():
            name = row["policy"] + (f" ({row['heads']})" if row["heads"] else "")
            lines.append(
                f"  {name:<28} share {row['share']:.2f}  accuracy {_number(row['accuracy'])} "
                f"[{_number(row['accuracy_lo'])}, {_number(row['accuracy_hi'])}]  "
                f"bytes {_number(row['bytes_ratio'])} of full "
                f"(full-attention layers {_number(row['full_layers_ratio'])}), KV heads whole "
                f"{_number(row['kv_heads_full'], 1)} of {int(row['kv_heads'])}"
            )
        mine = contrasts[contrasts["language"] == language]
        for _, row in mine.iterrows():
            lines.append(
                f"  {row['contrast']} ({row['heads']}, share {row['share']:.2f}): "
                f"{_number(row['value'])} [{_number(row['lo'])}, {_number(row['hi'])}]"
                + verdict(row["lo"], row["hi"])
            )
    return "\n".join(lines)
