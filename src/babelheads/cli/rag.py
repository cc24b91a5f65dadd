"""Dynamic RAG: two-hop questions answered with retrieval whose queries the chosen heads' attention
forms, beside no retrieval and a question-only query."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from babelheads.cli.app import app
from babelheads.cli.options import (
    BatchSize,
    ConfigFile,
    Device,
    Dtype,
    FromRun,
    HeadsModel,
    Languages,
    Out,
    Quiet,
    Replicates,
    Seed,
    Shard,
    _codes,
    _execution,
    report_run,
)
from babelheads.rag.selections import POLICIES, SELECTIONS


@app.command("rag")
def rag_command(
    heads: Annotated[
        Path | None,
        typer.Option(help="A dynamic run: its probe predicts the dynamic heads, its scores rank the static."),
    ] = None,
    model: HeadsModel = None,
    languages: Languages = "en,de,zh",
    questions: Annotated[
        str,
        typer.Option(help="'builtin' (en, de, zh), a two-hop JSON file or directory, or hf:NAME (HotpotQA)."),
    ] = "builtin",
    count: Annotated[int, typer.Option(help="Questions per language, a seeded choice (0: all).")] = 16,
    corpus: Annotated[
        str,
        typer.Option(help="Paragraphs added to the collection: 'builtin', a file, a directory, hf:NAME, ''."),
    ] = "builtin",
    data: Annotated[Path | None, typer.Option(help="Extra data root.")] = None,
    selections: Annotated[
        str,
        typer.Option(
            help=f"Some of {','.join((*SELECTIONS, *POLICIES))} ({' and '.join(POLICIES)} answer at the "
            "budget of a head-guided selection: the budget-matched question baseline and the control)."
        ),
    ] = ",".join((*SELECTIONS, *POLICIES)),
    threshold: Annotated[float, typer.Option(help="RIND above which a token triggers retrieval.")] = 0.15,
    retrievals: Annotated[
        int, typer.Option(help="Retrievals per answer at most (the same for every selection).")
    ] = 3,
    documents: Annotated[int, typer.Option(help="Documents each retrieval adds.")] = 3,
    head_count: Annotated[
        int, typer.Option("--head-count", help="Heads whose attention forms the query.")
    ] = 5,
    query_tokens: Annotated[int, typer.Option(help="Top attended positions taken into the query.")] = 6,
    gap: Annotated[int, typer.Option(help="Positions at most this far apart form one window.")] = 1,
    widen: Annotated[int, typer.Option(help="Positions added on both sides of a window.")] = 1,
    max_new_tokens: Annotated[int, typer.Option()] = 24,
    probe: Annotated[
        str, typer.Option(help="all (the pooled probe) or language (each language's own).")
    ] = "all",
    prompt: Annotated[str, typer.Option(help="auto, chat or plain.")] = "auto",
    replicates: Replicates = 1000,
    out: Out = Path("runs/rag"),
    seed: Seed = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    batch_size: BatchSize = None,
    shard: Shard = "0/1",
    quiet: Quiet = False,
    config_file: ConfigFile = None,
    from_run: FromRun = None,
) -> None:
    """Answer two-hop questions with a DRAGIN-style retrieval loop whose queries come from the probe's
    predicted heads (dynamic), the static retrieval heads, or DRAGIN's last layer; beside no retrieval
    and one question-only retrieval. EM and token F1 with intervals, and each retrieval's trace."""
    from babelheads.experiments.rag import RagConfig, rag
    from babelheads.rag.loop import LoopSettings
    from babelheads.report.rag_text import rag_summary

    config = RagConfig(
        heads=str(heads) if heads else None,
        model=model,
        languages=_codes(languages),
        questions=questions,
        count=count,
        corpus=corpus,
        data_dir=str(data) if data else None,
        selections=_codes(selections),
        loop=LoopSettings(
            threshold, max_new_tokens, retrievals, documents, head_count, query_tokens, gap, widen
        ),
        probe=probe,
        prompt=prompt,
        dtype=dtype,
        replicates=replicates,
        seed=seed,
    )
    execution = _execution(device, quiet, batch_size=batch_size, shard=shard)
    store = rag(config, out, execution)
    report_run(store, execution, rag_summary)
