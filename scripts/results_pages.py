"""Write a docs results page from runs' claims tables, so results are generated, never retyped.

    .venv/bin/python scripts/results_pages.py RUN_DIR [RUN_DIR ...] \\
        --title "Gemma 3 270M, default study" --out docs/results/gemma-3-270m.md

A RUN_DIR is a run that wrote a claims table (compare, ablate, dynamic, language-test, ...) or a study
directory: then every immediate subdirectory with a claims.parquet is used, in the order of the study's
stages when its study.json names them, and study.json's command and profile go into the header.

The page: a header (the command that produced the runs when known, each run's kind, date and commit
from its manifest, the model, the package versions from the manifests' "environment"), the claims
table as ``babelheads claims RUN ... --markdown`` prints it, then every claim with its statement, its
test and its parts as ``babelheads claims RUN --parts`` prints them. The table and the parts are
formatted by the package's own functions (babelheads.report.text), so the page says what the command
says.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from babelheads.errors import BabelheadsError
from babelheads.report.text import claims_markdown, claims_text
from babelheads.runs import RunStore

CLAIMS = "claims.parquet"
STUDY = "study.json"
# The study's run directories in stage order, for a study directory without a study.json.
STAGE_RUNS = (
    "detect", "translation", "compare", "ablate", "cot", "importance", "lt-ppl", "lt-ppl-cross",
    "lt-general", "lt-off-target", "lt-attn-transfer", "adapt", "dynamic", "dynamic-ablate", "rag",
    "compress",
)  # fmt: skip


@dataclass
class Study:
    """A study directory given on the command line and its study.json (``{}`` when it has none)."""

    directory: Path
    record: dict

    def stages(self) -> dict[str, dict]:
        stages = self.record.get("stages")
        return (
            {str(name): entry for name, entry in stages.items() if isinstance(entry, dict)}
            if (isinstance(stages, dict))
            else {}
        )

    def run_order(self) -> list[str]:
        """The run directories in the order of the stages that wrote them."""
        names = [str(run) for entry in self.stages().values() for run in entry.get("runs") or []]
        return names or list(STAGE_RUNS)

    def control_runs(self) -> set[str]:
        """Runs written as negative controls: their verdicts fill the control column of the others."""
        return {str(run) for name, entry in self.stages().items() if name == "controls"
                for run in entry.get("runs") or []}  # fmt: skip

    def command(self) -> str | None:
        """The command that made the study: as recorded, or rebuilt from its recorded settings."""
        recorded = self.record.get("command") or self.record.get("argv")
        if isinstance(recorded, list):
            return shlex.join(str(word) for word in recorded)
        if recorded:
            return str(recorded)
        config = self.record.get("config")
        if not isinstance(config, dict):
            return None
        words = ["babelheads", "study", "--out", str(self.directory)]
        for flag, key in (("--model", "model"), ("--profile", "profile"), ("--seed", "seed")):
            if config.get(key) is not None:
                words += [flag, str(config[key])]
        for flag, key, default in (
            ("--languages", "languages", None),
            ("--lahis-languages", "lahis_languages", "en,de,zh,fr,es"),
        ):
            codes = ",".join(map(str, config.get(key) or []))
            if codes and codes != default:
                words += [flag, codes]
        if config.get("translate_from") not in (None, "en"):
            words += ["--translate-from", str(config["translate_from"])]
        if config.get("dtype") not in (None, "auto"):
            words += ["--dtype", str(config["dtype"])]
        return shlex.join(words + (["--control"] if config.get("control") else []))

    def profile(self) -> str | None:
        config = self.record.get("config")
        profile = self.record.get("profile") or (config.get("profile") if isinstance(config, dict) else None)
        return str(profile) if profile else None


def read_study(directory: Path) -> Study:
    """A study directory with its study.json ({} when it has none, or an unreadable one, named)."""
    path = directory / STUDY
    if not path.is_file():
        return Study(directory, {})
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        print(f"warning: {path} is unreadable ({error}); its command is left out", file=sys.stderr)
        return Study(directory, {})
    return Study(directory, data if isinstance(data, dict) else {})


def is_control(run: Path) -> bool:
    """A run made as a negative control (its config says so)."""
    try:
        config = RunStore(run).manifest()["spec"].get("config")
    except BabelheadsError:
        return False
    return isinstance(config, dict) and config.get("control") is True


def resolve_runs(paths: list[Path]) -> tuple[list[Path], list[Study], list[Path]]:
    """The runs with a claims table that ``paths`` name (a study directory: its immediate subdirectories
    with one, in stage order), the studies given, and the control runs left out of a study's table."""
    runs: list[Path] = []
    studies: list[Study] = []
    controls: list[Path] = []
    for path in paths:
        if (path / CLAIMS).is_file():
            runs.append(path)
            continue
        if not path.is_dir():
            raise BabelheadsError(f"{path} is not a directory. Give a run or a study directory.")
        found = sorted(child for child in path.iterdir() if (child / CLAIMS).is_file())
        if not found:
            raise BabelheadsError(
                f"{path} has no claims table and no subdirectory with one. Give a run that tests claims "
                "(compare, ablate, dynamic, language-test, ...) or a study directory."
            )
        study = read_study(path)
        studies.append(study)
        order = {name: index for index, name in enumerate(study.run_order())}
        for child in sorted(found, key=lambda child: (order.get(child.name, len(order)), child.name)):
            if child.name in study.control_runs() or is_control(child):
                controls.append(child)
            else:
                runs.append(child)
    return runs, studies, controls


def load(run: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame | None]:
    """A run's manifest, claims and claim parts, read and checked as ``babelheads claims`` reads them."""
    if not (run / "manifest.json").is_file():
        raise BabelheadsError(f"{run} is not a babelheads run (no manifest.json). Check the path.")
    store = RunStore(run)
    store.validate()
    parts = store.derived("claim_parts") if store.has_derived("claim_parts") else None
    return store.manifest(), store.derived("claims"), parts


Loaded = list[tuple[dict, pd.DataFrame, pd.DataFrame | None]]


def header(
    title: str,
    runs: list[Path],
    loaded: Loaded,
    studies: list[Study],
    controls: list[Path],
    commands: list[str],
    regenerate: str,
) -> list[str]:
    lines = [f"# {title}", ""]
    lines += [
        "This page is generated from the runs' claims tables; do not edit it by hand. Regenerate it with",
        "",
        "```bash",
        regenerate,
        "```",
        "",
    ]
    given = [text for text in (study.command() for study in studies) if text] + list(commands)
    if given:
        lines += ["The runs were made by", "", "```bash", *given, "```", ""]
    else:
        lines += [
            "The command that made the runs is not recorded; `babelheads COMMAND --from RUN` replays a "
            "run's settings.",
            "",
        ]
    profiles = sorted({profile for profile in (study.profile() for study in studies) if profile})
    if profiles:
        lines += [f"Study profile: {', '.join(f'`{name}`' for name in profiles)}.", ""]
    models = sorted({str(model) for _, claims, _ in loaded for model in claims.get("model", []) if model})
    lines += [f"Model: {', '.join(f'`{model}`' for model in models) or 'not recorded'}.", ""]
    lines += ["| run | kind | written | commit |", "|---|---|---|---|"]
    for run, (manifest, _, _) in zip(runs, loaded, strict=True):
        commit = str((manifest.get("environment") or {}).get("git_commit") or "-")
        lines.append(
            f"| `{run}` | {manifest['spec']['kind']} | {manifest.get('created', '-')} | `{commit[:12]}"
            f"{'+dirty' if commit.endswith('+dirty') else ''}` |"
        )
    lines.append("")
    if controls:
        lines += [
            "Negative-control runs, whose verdicts fill the control column rather than rows of their own: "
            + ", ".join(f"`{run}`" for run in controls)
            + ".",
            "",
        ]
    environments = []
    for manifest, _, _ in loaded:
        environment = manifest.get("environment") or {}
        versions = {"python": environment.get("python"), **(environment.get("packages") or {})}
        text = ", ".join(f"{name} {version}" for name, version in versions.items() if version)
        if text and text not in environments:
            environments.append(text)
    if environments:
        label = "Versions" if len(environments) == 1 else "Versions (the runs differ)"
        lines += [f"{label}: " + "; ".join(environments) + ".", ""]
    for study in studies:
        stages = study.stages()
        if not stages:
            continue
        lines += [f"Stages of `{study.directory}` (its `{STUDY}`):", ""]
        lines += ["| stage | status | seconds | note |", "|---|---|---|---|"]
        for name, entry in stages.items():
            seconds = entry.get("seconds")
            seconds = f"{seconds:.0f}" if isinstance(seconds, int | float) else "-"
            note = "done earlier" if entry.get("earlier") else str(entry.get("reason") or "")
            lines.append(f"| {name} | {entry.get('status', '-')} | {seconds} | {note.replace('|', '/')} |")
        lines.append("")
    return lines


def claim_sections(loaded: Loaded, runs: list[Path]) -> list[str]:
    lines = ["## Every claim's parts", ""]
    for run, (_, claims, parts) in zip(runs, loaded, strict=True):
        for index, claim in enumerate(claims.to_dict("records")):
            lines += [f"### `{claim['claim']}`", ""]
            lines += [f"{claim['statement']} ({claim['paper']}; run `{run}`)", ""]
            lines += [f"Test: {claim['test']}", ""] if claim.get("test") else []
            lines += [f"Unit resampled: {claim['unit']}.", ""] if claim.get("unit") else []
            lines += ["```text", claims_text(claims.iloc[[index]], parts), "```", ""]
    return lines


def page(paths: list[Path], title: str, commands: list[str], regenerate: str) -> str:
    runs, studies, controls = resolve_runs(paths)
    loaded = [load(run) for run in runs]
    table = claims_markdown(pd.concat([claims for _, claims, _ in loaded], ignore_index=True))
    lines = header(title, runs, loaded, studies, controls, commands, regenerate)
    lines += [
        "## Claims",
        "",
        "Each claim's verdict, its estimate with the 95 % interval and the number of units resampled, the "
        "verdict on the negative control and why a claim is not decided (see [Claims](../claims.md)).",
        "",
        table,
        "",
    ]
    lines += claim_sections(loaded, runs)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="Runs with a claims table, or study directories.")
    parser.add_argument("--title", required=True, help="The page's title.")
    parser.add_argument("--out", required=True, type=Path, help="The Markdown page to write.")
    parser.add_argument(
        "--command",
        action="append",
        default=[],
        help="A command that made the runs, when no study.json records it (repeatable).",
    )
    args = parser.parse_args(argv)
    regenerate = shlex.join(
        [".venv/bin/python", "scripts/results_pages.py", *map(str, args.runs), "--title", args.title]
        + [word for command in args.command for word in ("--command", command)]
        + ["--out", str(args.out)]
    )
    try:
        text = page(args.runs, args.title, args.command, regenerate)
    except BabelheadsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"{args.out} written from {len(args.runs)} path(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
