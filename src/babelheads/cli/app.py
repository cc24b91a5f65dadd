"""The typer application every command module registers on."""

from __future__ import annotations

import typer

HELP = """babelheads finds the attention heads a language model uses to retrieve from long contexts and to
process each language, and tests them: needle-in-a-haystack detection with a retrieval score per head,
comparison across languages, masking top heads against random ones, LAHIS language heads (importance,
five experiments, a soft head mask), dynamic retrieval heads (per decoding step, their ablation,
probes that predict them from hidden states, and retrieval-augmented answers whose queries the
predicted heads form), and an HTML report.

Start with `babelheads study --out runs/demo` (the whole study on the built-in Gemma 3 270M), or
`babelheads detect --help`. Every command writes a run directory that resumes when run again."""

app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP, pretty_exceptions_enable=False)
