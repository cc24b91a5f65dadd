"""Retrieval heads: detect, summary, compare, ablate, and the study and sweeps built on them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from babelheads.cli.app import app
from babelheads.cli.options import (
    BatchSize,
    ConfigFile,
    Device,
    DeviceMap,
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
    SharePrefix,
    TestedLanguages,
    _codes,
    _execution,
    _floats,
    _ints,
    report_run,
)
from babelheads.errors import BabelheadsError


@app.command()
def detect(
    model: Model = "gemma-3-270m",
    languages: Languages = "en,de,zh",
    pairs: Annotated[
        str, typer.Option(help="Retrieval + translation instead: SOURCE:ANSWER pairs, e.g. en:zh,en:de.")
    ] = "",
    corpus: Annotated[
        str, typer.Option(help="'builtin', a text file, a directory, or hf:NAME[:CONFIG[:SPLIT[:COLUMN]]].")
    ] = "builtin",
    needles: Annotated[
        str,
        typer.Option(
            help="'builtin', 'magic' (The magic word is <UUID>.), a JSON file, or a directory of <lang>.json."
        ),
    ] = "builtin",
    data: Annotated[
        Path | None, typer.Option(help="Extra data root with languages/, corpus/, needles/.")
    ] = None,
    lengths: Annotated[str, typer.Option(help="Prompt lengths in tokens.")] = "1000,2000",
    depths: Annotated[str, typer.Option(help="Needle depths in [0, 1].")] = "0,0.25,0.5,0.75,1",
    needles_per_cell: Annotated[int, typer.Option(help="Needles per length x depth cell.")] = 1,
    needle_kind: Annotated[
        str, typer.Option(help="all, fact (invented facts) or key (code words, numbers).")
    ] = "all",
    max_new_tokens: Annotated[int, typer.Option()] = 32,
    score: Annotated[
        str, typer.Option(help="paper (distinct copies, <= 1) or official (every copy).")
    ] = "paper",
    score_on: Annotated[str, typer.Option(help="success (as the official code) or all samples.")] = "success",
    success_threshold: Annotated[float, typer.Option(help="ROUGE-1 recall above this is a success.")] = 0.5,
    top_k: Annotated[int, typer.Option(help="Attention peaks kept per head and step.")] = 4,
    sink_tokens: Annotated[int, typer.Option(help="Leave the first N positions out of the peaks.")] = 0,
    prompt: Annotated[str, typer.Option(help="auto, chat or plain.")] = "auto",
    hidden_states: Annotated[
        bool,
        typer.Option(
            help="Also record each step's final hidden state, so that `dynamic --recording RUN` analyses "
            "this run (statistics, CCA, probes) without decoding again."
        ),
    ] = False,
    out: Out = Path("runs/detect"),
    seed: Seed = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    batch_size: BatchSize = None,
    share_prefix: SharePrefix = True,
    device_map: DeviceMap = None,
    shard: Shard = "0/1",
    head_mask: HeadMask = None,
    quiet: Quiet = False,
    config_file: ConfigFile = None,
    from_run: FromRun = None,
) -> None:
    """Find retrieval heads with needle-in-a-haystack tests, per language."""
    from babelheads.analysis.aggregate import AggregateSettings
    from babelheads.experiments.detect import DetectConfig
    from babelheads.experiments.detect import detect as run_detect
    from babelheads.report.text import detection_summary
    from babelheads.tasks.niah import NiahSettings

    task = NiahSettings(
        languages=tuple(code.strip() for code in languages.split(",") if code.strip()),
        pairs=tuple(pair.strip() for pair in pairs.split(",") if pair.strip()),
        corpus=corpus,
        needles=needles,
        data_dir=str(data) if data else None,
        lengths=_ints(lengths, "lengths"),
        depths=_floats(depths, "depths"),
        needles_per_cell=needles_per_cell,
        needle_kind=needle_kind,
        prompt=prompt,
        seed=seed,
    )
    analysis = AggregateSettings(score=score, score_on=score_on, success_threshold=success_threshold)
    config = DetectConfig(
        model=model,
        task=task,
        max_new_tokens=max_new_tokens,
        top_k=top_k,
        sink_tokens=sink_tokens,
        dtype=dtype,
        analysis=analysis,
        head_mask=str(head_mask) if head_mask else None,
        hidden_states=hidden_states,
    )
    execution = _execution(
        device, quiet, batch_size=batch_size, shard=shard, share_prefix=share_prefix, device_map=device_map
    )
    store = run_detect(config, out, execution)
    report_run(store, execution, detection_summary)


@app.command()
def summary(
    run: Annotated[Path, typer.Argument(help="A detection run directory.")],
    top: Annotated[int, typer.Option(help="Top heads to list per language.")] = 10,
    score: Annotated[
        str | None, typer.Option(help="Re-aggregate with this variant: paper or official.")
    ] = None,
    score_on: Annotated[str | None, typer.Option(help="Re-aggregate over success or all samples.")] = None,
    success_threshold: Annotated[
        float | None, typer.Option(help="Re-aggregate with this ROUGE-1 success threshold.")
    ] = None,
    threshold: Annotated[float, typer.Option(help="Retrieval-head threshold for the share printed.")] = 0.1,
    write: Annotated[
        bool, typer.Option(help="Also rewrite the run's scores tables and official JSON with these settings.")
    ] = False,
    config_file: ConfigFile = None,
) -> None:
    """Print the score distribution and top heads of a detection run; re-aggregate without re-running."""
    from dataclasses import replace

    from babelheads.experiments.detect import finalize
    from babelheads.report.text import check_summary_options, detection_summary
    from babelheads.runs import RunStore
    from babelheads.sources import recorded_analysis

    check_summary_options(top, threshold)  # before --write rewrites anything
    store = RunStore(run)
    store.validate()
    if store.manifest()["spec"].get("kind") != "detect":
        raise BabelheadsError(f"{run} is not a detection run; summary reads detection runs.")
    changes = {"score": score, "score_on": score_on, "success_threshold": success_threshold}
    changes = {key: value for key, value in changes.items() if value is not None}
    settings = replace(recorded_analysis(store)[0], **changes) if changes else None
    if settings is not None and write:
        finalize(store, settings)
    typer.echo(detection_summary(store, top, settings, threshold))


@app.command()
def compare(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(help="Detection runs of one model (or two models with --models)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the comparison tables (Parquet and CSV) go.")] = Path(
        "runs/compare"
    ),
    threshold: Annotated[float, typer.Option(help="Retrieval-head threshold.")] = 0.1,
    strong: Annotated[float, typer.Option(help="Strong-head threshold.")] = 0.5,
    replicates: Annotated[int, typer.Option(help="Bootstrap replicates over samples.")] = 200,
    seed: Seed = 0,
    models: Annotated[
        bool, typer.Option(help="Compare two models (one run each) instead of languages.")
    ] = False,
    config_file: ConfigFile = None,
    from_run: FromRun = None,
) -> None:
    """Shared vs language-specific heads, strength vs generality, rank agreement, translation."""
    from babelheads.experiments.compare import CompareConfig, run_compare
    from babelheads.report.text import comparison_summary

    config = CompareConfig(
        threshold=threshold, strong=strong, replicates=replicates, seed=seed, models=models
    )
    if not runs:
        raise BabelheadsError("Give the detection runs to compare, or --from an earlier compare run.")
    tables, notes = run_compare(list(runs), out, config)
    typer.echo(comparison_summary(tables, notes))
    typer.echo(f"\ntables written to {out} (CSV under {out / 'csv'})")


@app.command()
def ablate(
    run: Annotated[Path, typer.Argument(help="The detection run whose scores pick the heads.")],
    out: Out = Path("runs/ablate"),
    task: Annotated[str, typer.Option(help="niah (held-out needle tests) or cot (word problems).")] = "niah",
    holdout: Annotated[
        str, typer.Option(help="niah: seed (other haystacks), needles (unused needles) or none.")
    ] = "seed",
    problems: Annotated[int, typer.Option(help="cot: word problems per language.")] = 30,
    cot_tokens: Annotated[int, typer.Option(help="cot: step limit of a reasoning answer.")] = 96,
    cot_prompt: Annotated[
        str, typer.Option(help="cot: chat or plain few-shot prompt (default: the detection run's).")
    ] = "",
    languages: TestedLanguages = "",
    k: Annotated[str, typer.Option(help="Numbers of heads to mask (a sweep).")] = "2,4,8",
    head_sets: Annotated[
        str, typer.Option(help="top, random, agnostic, specific.")
    ] = "top,random,agnostic,specific",
    random_seeds: Annotated[
        int, typer.Option(help="Draws of random heads per K (the top set is compared with their spread).")
    ] = 5,
    method: Annotated[
        str, typer.Option(help="gate (zero the head's output) or uniform (official code).")
    ] = "gate",
    phases: Annotated[str, typer.Option(help="all (prefill and decoding) or decode.")] = "all",
    threshold: Annotated[float, typer.Option(help="Retrieval-head threshold.")] = 0.1,
    lengths: Annotated[str, typer.Option(help="Prompt lengths in tokens.")] = "1000",
    depths: Annotated[str, typer.Option(help="Needle depths in [0, 1].")] = "0.25,0.5,0.75",
    needle_kind: Annotated[str, typer.Option(help="all, fact or key.")] = "all",
    needles_per_cell: Annotated[int, typer.Option()] = 1,
    max_new_tokens: Annotated[int, typer.Option()] = 16,
    success_threshold: Annotated[float, typer.Option(help="ROUGE-1 recall above this is a success.")] = 0.5,
    replicates: Replicates = 200,
    seed: Seed = 0,
    device: Device = "auto",
    batch_size: BatchSize = None,
    share_prefix: SharePrefix = True,
    device_map: DeviceMap = None,
    shard: Shard = "0/1",
    head_mask: HeadMask = None,
    control: Annotated[
        bool,
        typer.Option(help="Negative control: the 'top' set is random non-retrieval heads (must not hold)."),
    ] = False,
    quiet: Quiet = False,
    config_file: ConfigFile = None,
    from_run: FromRun = None,
) -> None:
    """Mask sets of heads (top, random, agnostic, specific) and measure NIAH accuracy and ROUGE."""
    from babelheads.experiments.ablate import AblateConfig
    from babelheads.experiments.ablate import ablate as run_ablate
    from babelheads.report.text import ablation_summary

    config = AblateConfig(
        run=str(run),
        task=task,
        holdout=holdout,
        problems=problems,
        cot_tokens=cot_tokens,
        cot_prompt=cot_prompt,
        languages=tuple(code for code in languages.split(",") if code),
        k=_ints(k, "k"),
        head_sets=tuple(name.strip() for name in head_sets.split(",") if name.strip()),
        random_seeds=random_seeds,
        method=method,
        phases=phases,
        threshold=threshold,
        lengths=_ints(lengths, "lengths"),
        depths=_floats(depths, "depths"),
        needle_kind=needle_kind,
        needles_per_cell=needles_per_cell,
        max_new_tokens=max_new_tokens,
        success_threshold=success_threshold,
        replicates=replicates,
        seed=seed,
        head_mask=str(head_mask) if head_mask else None,
        control=control,
    )
    execution = _execution(
        device, quiet, batch_size=batch_size, shard=shard, share_prefix=share_prefix, device_map=device_map
    )
    store = run_ablate(config, out, execution)
    report_run(store, execution, ablation_summary, "ablation written to")


@app.command()
def study(
    out: Annotated[Path, typer.Option(help="Directory for every run and the report.")] = Path("runs/study"),
    profile: Annotated[
        str,
        typer.Option(
            help="default (every paper at sizes for about a quarter of an hour on 2 CPU cores) or paper "
            "(the papers' sizes: Wikipedia haystacks to 32K tokens, more samples; for a GPU and a model "
            "such as Qwen/Qwen2.5-7B-Instruct)."
        ),
    ] = "default",
    only: Annotated[
        str, typer.Option(help="Run only these stages (comma-separated; see the stage lines).")
    ] = "",
    skip: Annotated[str, typer.Option(help="Skip these stages (comma-separated).")] = "",
    model: Annotated[
        str,
        typer.Option(
            help="Built-in name, hub id, model directory or .gguf file (default: the profile's: "
            "gemma-3-270m; paper: Qwen/Qwen2.5-7B-Instruct)."
        ),
    ] = "",
    languages: Languages = "en,de,zh",
    lahis_languages: Annotated[
        str,
        typer.Option(
            help="LAHIS's languages (its general heads are those of 80 % of them; default: the "
            "profile's: en,de,zh; paper: en,de,zh,fr,es)."
        ),
    ] = "",
    translate_from: Annotated[str, typer.Option(help="Source language of the translation task.")] = "en",
    seed: Seed = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    batch_size: BatchSize = None,
    share_prefix: SharePrefix = True,
    device_map: DeviceMap = None,
    control: Annotated[
        bool,
        typer.Option(
            help="Also run the negative controls (the first language copied under the others' codes; "
            "random heads as 'top', as language heads, as dynamic heads, kept whole) and show their "
            "verdicts beside the claims. About doubles the time."
        ),
    ] = False,
    quiet: Quiet = False,
    config_file: ConfigFile = None,
) -> None:
    """The whole mission in one command: every paper's experiments in stages, then one report."""
    from babelheads.study import StudyConfig, profile_named, run_study
    from babelheads.study.runner import FAILED

    config = StudyConfig(
        model=model or profile_named(profile).model,
        languages=_codes(languages),
        lahis_languages=_codes(lahis_languages),
        translate_from=translate_from,
        seed=seed,
        dtype=dtype,
        profile=profile,
        control=control,
    )
    execution = _execution(
        device, quiet, batch_size=batch_size, share_prefix=share_prefix, device_map=device_map
    )
    say = lambda line: typer.echo(line, err=True)  # noqa: E731
    report, results = run_study(config, out, execution, say, only=_codes(only), skip=_codes(skip))
    if report is not None:
        typer.echo(f"report written to {report}")
    if any(result.status == FAILED for result in results):
        raise typer.Exit(1)


@app.command()
def sweep(
    file: Annotated[
        Path, typer.Argument(help="TOML or YAML file with [[job]] entries (command, out, flags).")
    ],
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (e.g. ray://head:10001); default: a local Ray.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all).")] = None,
    cpus_per_job: Annotated[float, typer.Option(help="CPUs Ray reserves per job.")] = 1.0,
    gpus_per_job: Annotated[float, typer.Option(help="GPUs Ray reserves per job.")] = 0.0,
    config_file: ConfigFile = None,
) -> None:
    """Run many detect/ablate jobs on Ray, each an ordinary resumable run; failures are reported per job."""
    from babelheads.sweep import read_sweep, run_sweep

    jobs = read_sweep(file)
    typer.echo(f"{len(jobs)} job{'' if len(jobs) == 1 else 's'} from {file}", err=True)
    results = run_sweep(
        jobs, address, workers, cpus_per_job, gpus_per_job, say=lambda line: typer.echo(line, err=True)
    )
    failed = [result for result in results if not result.ok]
    typer.echo(
        f"{len(results) - len(failed)} of {len(results)} jobs done"
        + (f", {len(failed)} failed:" if failed else "")
    )
    for result in failed:
        typer.echo(f"  {result.name} ({result.out}): {result.message}")
    if failed:
        raise typer.Exit(1)
