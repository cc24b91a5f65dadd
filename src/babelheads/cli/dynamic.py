"""Dynamic retrieval heads: the recorded run with its statistics and probes, the statistics of any
run, and the dynamic ablation."""

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
    HeldOutSeed,
    Languages,
    Model,
    Out,
    Quiet,
    Replicates,
    Seed,
    Shard,
    _codes,
    _execution,
    _floats,
    _ints,
    report_run,
)
from babelheads.errors import BabelheadsError

StaticK = Annotated[int, typer.Option(help="Static top-K heads (0: --static-share of all heads).")]
StaticShare = Annotated[float, typer.Option(help="K as a share of all heads when --static-k is 0.")]
Span = Annotated[
    str,
    typer.Option(help="needle: the paper's S (top-1 on a needle token = the emitted one); answer: Wu et al."),
]


@app.command("dynamic")
def dynamic_command(
    model: Model = "gemma-3-270m",
    task: Annotated[str, typer.Option(help="niah (needle tests) or multihop (two-hop questions).")] = "niah",
    languages: Languages = "en,de,zh",
    needles: Annotated[
        str,
        typer.Option(help="niah: 'magic' (The magic word is <UUID>.), 'builtin', a JSON file or directory."),
    ] = "magic",
    needle_kind: Annotated[str, typer.Option(help="niah: all, fact, key or magic.")] = "all",
    lengths: Annotated[str, typer.Option(help="Prompt lengths in tokens (multihop: one length).")] = "1000",
    depths: Annotated[str, typer.Option(help="niah: needle depths in [0, 1].")] = "0,0.25,0.5,0.75,1",
    needles_per_cell: Annotated[int, typer.Option(help="niah: needles per length x depth cell.")] = 4,
    questions: Annotated[
        str,
        typer.Option(
            help="multihop: 'builtin' (en, de, zh), a JSON file or directory, or hf:NAME (HotpotQA)."
        ),
    ] = "builtin",
    count: Annotated[int, typer.Option(help="multihop: questions per language (0: all).")] = 24,
    corpus: Annotated[
        str, typer.Option(help="Haystack corpus: 'builtin', a file, a directory or hf:NAME.")
    ] = "builtin",
    data: Annotated[Path | None, typer.Option(help="Extra data root.")] = None,
    max_new_tokens: Annotated[int, typer.Option()] = 40,
    top_k: Annotated[int, typer.Option(help="Attention peaks kept per head and step.")] = 4,
    static_k: StaticK = 0,
    static_share: StaticShare = 0.05,
    span: Span = "needle",
    replicates: Replicates = 1000,
    probes: Annotated[bool, typer.Option(help="Fit the CCA, the probe and (multihop) the regressor.")] = True,
    probe_hidden: Annotated[
        str, typer.Option(help="Probe layer sizes, e.g. 1024,512 (default: 2d,d,d).")
    ] = "",
    epochs: Annotated[int, typer.Option(help="Probe training epochs.")] = 100,
    lags: Annotated[
        str, typer.Option(help="CCA lags k (state at n, scores at n + k).")
    ] = "0,1,2,3,4,5,6,7,8,9,10",
    shuffles: Annotated[
        int, typer.Option(help="Shuffled-pair CCA fits per lag (their mean is the baseline).")
    ] = 3,
    recording: Annotated[
        Path | None,
        typer.Option(
            help="A detect run recorded with --hidden-states: analyse its samples instead of decoding "
            "new ones (the task's options then do not apply)."
        ),
    ] = None,
    out: Out = Path("runs/dynamic"),
    seed: Seed = 0,
    device: Device = "auto",
    dtype: Dtype = "auto",
    batch_size: BatchSize = None,
    shard: Shard = "0/1",
    quiet: Quiet = False,
    config_file: ConfigFile = None,
    from_run: FromRun = None,
) -> None:
    """Record each decoding step's retrieval heads and hidden state; write how dynamic the heads are and
    how well the hidden state predicts them (CCA, probe), each beside its baseline."""
    from babelheads.analysis.head_probes import ProbeSettings
    from babelheads.experiments.dynamic import DynamicAnalysis, DynamicConfig, dynamic
    from babelheads.report.dynamic_text import dynamic_summary
    from babelheads.tasks.multihop import MultihopSettings
    from babelheads.tasks.niah import NiahSettings

    codes, sizes = _codes(languages), _ints(lengths, "lengths")
    data_dir = str(data) if data else None
    if task == "multihop" and len(sizes) != 1:
        raise BabelheadsError(f"--task multihop takes one --lengths value. Got {lengths!r}.")
    analysis = DynamicAnalysis(
        static_k,
        static_share,
        span,
        replicates,
        probes,
        ProbeSettings(
            hidden=_ints(probe_hidden, "probe-hidden"),
            epochs=epochs,
            cca_lags=_ints(lags, "lags"),
            shuffles=shuffles,
            seed=seed,
        ),
        seed,
    )
    config = DynamicConfig(
        model=model,
        task=task,
        niah=NiahSettings(
            languages=codes,
            corpus=corpus,
            needles=needles,
            data_dir=data_dir,
            lengths=sizes,
            depths=_floats(depths, "depths"),
            needles_per_cell=needles_per_cell,
            needle_kind=needle_kind,
            seed=seed,
        ),
        multihop=MultihopSettings(codes, questions, corpus, data_dir, sizes[0], count, seed=seed),
        max_new_tokens=max_new_tokens,
        top_k=top_k,
        dtype=dtype,
        analysis=analysis,
        recording=str(recording) if recording else None,
    )
    execution = _execution(device, quiet, batch_size=batch_size, shard=shard)
    store = dynamic(config, out, execution)
    report_run(store, execution, dynamic_summary)


@app.command("dynamic-stats")
def dynamic_stats(
    run: Annotated[Path, typer.Argument(help="A detect or dynamic run.")],
    static_k: StaticK = 0,
    static_share: StaticShare = 0.05,
    span: Span = "needle",
    replicates: Replicates = 1000,
    seed: Seed = 0,
    config_file: ConfigFile = None,
) -> None:
    """How dynamic a run's retrieval heads are (Table 1 statistics), from its stored events: nothing is
    decoded. Writes dynamic_stats and static_heads into the run."""
    from babelheads.experiments.dynamic import DynamicAnalysis, dynamic_statistics
    from babelheads.report.dynamic_text import statistics_text
    from babelheads.sources import open_source

    store = open_source(run, ("detect", "dynamic"), "RUN").store
    try:
        stats, static, _ = dynamic_statistics(
            store, DynamicAnalysis(static_k, static_share, span, replicates, False, seed=seed)
        )
    except ValueError as error:
        raise BabelheadsError(str(error)) from None
    store.write_derived("dynamic_stats", stats)
    store.write_derived("static_heads", static)
    typer.echo(statistics_text(stats, static))


@app.command("dynamic-ablate")
def dynamic_ablate_command(
    heads: Annotated[Path, typer.Option(help="A detect or dynamic run: its scores rank the static heads.")],
    model: HeadsModel = None,
    languages: Languages = "en,de,zh",
    needles: Annotated[str, typer.Option(help="'magic', 'builtin', a JSON file or directory.")] = "magic",
    needle_kind: Annotated[str, typer.Option(help="all, fact, key or magic.")] = "all",
    lengths: Annotated[str, typer.Option(help="Prompt lengths in tokens.")] = "1000",
    depths: Annotated[str, typer.Option(help="Needle depths in [0, 1].")] = "0.25,0.5,0.75",
    needles_per_cell: Annotated[int, typer.Option()] = 2,
    max_new_tokens: Annotated[int, typer.Option()] = 40,
    random_seeds: Annotated[int, typer.Option(help="Random head draws per step.")] = 3,
    progressive: Annotated[str, typer.Option(help="k values of the progressive masking.")] = "1,2,4,8",
    static_k: StaticK = 0,
    static_share: StaticShare = 0.05,
    method: Annotated[
        str, typer.Option(help="gate (zero the head's output) or uniform (the official code).")
    ] = "gate",
    replicates: Replicates = 1000,
    control: Annotated[
        bool,
        typer.Option(help="Negative control: random heads masked in place of each step's dynamic heads."),
    ] = False,
    out: Out = Path("runs/dynamic-ablate"),
    seed: HeldOutSeed = 1,
    device: Device = "auto",
    dtype: Dtype = "auto",
    batch_size: BatchSize = None,
    shard: Shard = "0/1",
    quiet: Quiet = False,
    config_file: ConfigFile = None,
    from_run: FromRun = None,
) -> None:
    """At each step, mask that step's dynamic heads (or as many static or random heads) and regenerate
    the token, teacher-forced on the clean continuation; held-out haystacks."""
    from babelheads.experiments.dynamic_ablate import DynamicAblateConfig, dynamic_ablate
    from babelheads.report.dynamic_text import dynamic_ablation_summary
    from babelheads.tasks.niah import NiahSettings

    config = DynamicAblateConfig(
        heads=str(heads),
        model=model,
        niah=NiahSettings(
            languages=_codes(languages),
            needles=needles,
            needle_kind=needle_kind,
            lengths=_ints(lengths, "lengths"),
            depths=_floats(depths, "depths"),
            needles_per_cell=needles_per_cell,
            seed=seed,
        ),
        max_new_tokens=max_new_tokens,
        random_seeds=random_seeds,
        progressive=_ints(progressive, "progressive"),
        static_k=static_k,
        static_share=static_share,
        method=method,
        dtype=dtype,
        replicates=replicates,
        control=control,
    )
    execution = _execution(device, quiet, batch_size=batch_size, shard=shard)
    store = dynamic_ablate(config, out, execution)
    report_run(store, execution, dynamic_ablation_summary)
