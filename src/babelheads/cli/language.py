"""Language heads (LAHIS): importance, the five experiments, and the soft head-mask adaptation."""

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
    HeadMask,
    Languages,
    Model,
    Out,
    Quiet,
    Replicates,
    Seed,
    Shard,
    TestedLanguages,
    _codes,
    _execution,
    report_run,
)


@app.command()
def importance(
    model: Model = "gemma-3-270m",
    languages: Languages = "en,de,zh,fr,es",
    corpus: Annotated[
        str, typer.Option(help="'builtin', a text file, a directory, or hf:NAME[:CONFIG[:SPLIT[:COLUMN]]].")
    ] = "builtin",
    data: Annotated[Path | None, typer.Option(help="Extra data root with languages/, corpus/.")] = None,
    texts: Annotated[int, typer.Option(help="Texts (token windows) per language.")] = 16,
    window: Annotated[int, typer.Option(help="Tokens per text.")] = 192,
    formula: Annotated[
        str, typer.Option(help="Score that picks the heads: paper or code (both are written).")
    ] = "paper",
    drift: Annotated[
        bool, typer.Option(help="Reproduce the released code's AdamW drift of the gates (a bug).")
    ] = False,
    percentile: Annotated[float, typer.Option(help="Candidates lie above this percentile.")] = 96.0,
    min_languages: Annotated[
        int | None, typer.Option(help="Candidate in this many languages = general (default: >= 80% of them).")
    ] = None,
    share: Annotated[float, typer.Option(help="n = int(layers x heads x share) specific heads.")] = 0.02,
    out: Out = Path("runs/importance"),
    seed: Seed = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    batch_size: BatchSize = None,
    shard: Shard = "0/1",
    quiet: Quiet = False,
    config_file: ConfigFile = None,
    from_run: FromRun = None,
) -> None:
    """Score every head's importance per language (LAHIS) and select language-specific and general heads."""
    from babelheads.experiments.importance import ImportanceConfig, Selection
    from babelheads.experiments.importance import importance as run_importance
    from babelheads.report.language_text import importance_summary
    from babelheads.tasks.lm_texts import TextSettings

    config = ImportanceConfig(
        model=model,
        texts=TextSettings(_codes(languages), corpus, str(data) if data else None, texts, window, seed=seed),
        dtype=dtype,
        drift=drift,
        selection=Selection(formula, percentile, min_languages, share),
    )
    execution = _execution(device, quiet, batch_size=batch_size, shard=shard)
    store = run_importance(config, out, execution)
    report_run(store, execution, importance_summary)


@app.command("language-test")
def language_test(
    heads: Annotated[Path, typer.Argument(help="An importance run (babelheads importance).")],
    experiment: Annotated[
        str, typer.Option("--exp", help="ppl, ppl-cross, general, off-target, attn-transfer or retrieval.")
    ] = "ppl",
    languages: TestedLanguages = "",
    texts: Annotated[int, typer.Option(help="Held-out texts per language (perplexity).")] = 12,
    window: Annotated[int, typer.Option(help="Tokens per held-out text.")] = 128,
    random_seeds: Annotated[int, typer.Option(help="Random head sets of the same count.")] = 3,
    questions: Annotated[int, typer.Option(help="general: held-out QA per language (0: all).")] = 8,
    prompts: Annotated[int, typer.Option(help="off-target: summary prompts per language.")] = 8,
    summary_tokens: Annotated[int, typer.Option(help="off-target: new tokens per summary.")] = 32,
    per_pair: Annotated[int, typer.Option(help="attn-transfer: prompts per language pair.")] = 4,
    amplify: Annotated[float, typer.Option(help="attn-transfer: factor on language-1 heads.")] = 3.0,
    head_mask: HeadMask = None,
    detect: Annotated[Path | None, typer.Option(help="retrieval: a detection run of the same model.")] = None,
    threshold: Annotated[float, typer.Option(help="retrieval: retrieval-head score threshold.")] = 0.1,
    control: Annotated[
        bool,
        typer.Option(
            help="Negative control: the language heads replaced by random heads (no claim may hold)."
        ),
    ] = False,
    protocol: Annotated[
        str,
        typer.Option(
            help="general, off-target: 'offline' (perplexity, built-in QA, corpus paragraphs, py3langid) "
            "or 'paper' (XL-Sum summaries scored with BERTScore; fastText with --lid-model)."
        ),
    ] = "offline",
    summaries: Annotated[
        str | None, typer.Option(help="--protocol paper: the XL-Sum source (hf:NAME:{xlsum}:SPLIT or JSON).")
    ] = None,
    article_tokens: Annotated[int, typer.Option(help="--protocol paper: article tokens kept.")] = 1024,
    bertscore_model: Annotated[
        str | None, typer.Option(help="--protocol paper: the BERTScore model (a multilingual model id).")
    ] = None,
    lid_model: Annotated[
        str | None, typer.Option(help="--protocol paper, off-target: a fastText language-ID model file.")
    ] = None,
    replicates: Replicates = 1000,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory (resumes if it holds the same run; default runs/<exp>)."),
    ] = None,
    seed: Seed = 0,
    device: Device = "auto",
    batch_size: BatchSize = None,
    shard: Shard = "0/1",
    quiet: Quiet = False,
    config_file: ConfigFile = None,
    from_run: FromRun = None,
) -> None:
    """One LAHIS experiment on an importance run's language heads, against random heads."""
    from babelheads.experiments.language_tests import LanguageTestConfig
    from babelheads.experiments.language_tests import language_test as run_test
    from babelheads.report.language_text import language_test_summary

    config = LanguageTestConfig(
        heads=str(heads),
        experiment=experiment,
        languages=_codes(languages),
        texts=texts,
        window=window,
        random_seeds=random_seeds,
        questions=questions,
        prompts=prompts,
        summary_tokens=summary_tokens,
        per_pair=per_pair,
        amplify=amplify,
        head_mask=str(head_mask) if head_mask else None,
        detect=str(detect) if detect else None,
        threshold=threshold,
        replicates=replicates,
        seed=seed,
        control=control,
        protocol=protocol,
        article_tokens=article_tokens,
        lid_model=lid_model,
        # unset: the experiment's defaults (named in its --help), without importing it here
        **({"summaries": summaries} if summaries else {}),
        **({"bertscore_model": bertscore_model} if bertscore_model else {}),
    )
    execution = _execution(device, quiet, batch_size=batch_size, shard=shard)
    store = run_test(config, out or Path("runs") / experiment, execution)
    report_run(store, execution, language_test_summary)


@app.command()
def adapt(
    heads: Annotated[Path, typer.Argument(help="An importance run (babelheads importance).")],
    language: Annotated[str, typer.Option(help="The language to adapt to.")] = "en",
    head_choice: Annotated[
        str, typer.Option(help="top (top n by importance, as the released code) or specific.")
    ] = "top",
    epochs: Annotated[int, typer.Option()] = 2,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-2,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (0: see adapt --help).")] = 0.0,
    qa: Annotated[
        str, typer.Option(help="'builtin', a JSON file or directory, or hf:NAME[:CONFIG[:SPLIT]] (XQuAD).")
    ] = "builtin",
    train_questions: Annotated[int, typer.Option(help="Training questions (0: the whole half).")] = 0,
    eval_questions: Annotated[int, typer.Option(help="Held-out questions (0: the whole half).")] = 0,
    random_seeds: Annotated[int, typer.Option(help="Random head sets trained the same way.")] = 3,
    replicates: Replicates = 1000,
    out: Out = Path("runs/adapt"),
    seed: Seed = 0,
    device: Device = "auto",
    batch_size: BatchSize = None,
    shard: Shard = "0/1",
    quiet: Quiet = False,
    config_file: ConfigFile = None,
    from_run: FromRun = None,
) -> None:
    """Learn a soft mask on a language's top heads from QA (LAHIS); the mask works with --head-mask.

    Weight decay defaults to 0: the released code's AdamW default (0.01) does nothing to its bf16
    gates but would shrink float32 ones toward 0."""
    from babelheads.experiments.adapt import AdaptConfig
    from babelheads.experiments.adapt import adapt as run_adapt
    from babelheads.report.language_text import adaptation_summary

    config = AdaptConfig(
        heads=str(heads),
        language=language,
        head_choice=head_choice,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        qa=qa,
        train_questions=train_questions,
        eval_questions=eval_questions,
        random_seeds=random_seeds,
        replicates=replicates,
        seed=seed,
    )
    execution = _execution(device, quiet, batch_size=batch_size, shard=shard)
    store = run_adapt(config, out, execution)
    if report_run(store, execution, adaptation_summary):
        typer.echo(f"the learned mask: {store.root / 'head_mask.json'}")
