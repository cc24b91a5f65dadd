"""The study's sizes: how many samples, draws and problems each stage takes.

A profile is data: per stage, the fields of that stage's run config that differ from the run's own
defaults. ``default`` fits about a quarter of an hour on 2 CPU cores with the built-in Gemma 3 270M;
``paper`` takes the papers' sizes, for a GPU and a model of their size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from babelheads.errors import BabelheadsError
from babelheads.models import DEFAULT_MODEL

Overrides = Mapping[str, object]
WIKIPEDIA = "hf:wikimedia/wikipedia:20231101.{lang}:train:text"
"""Haystacks of the papers' kind for long contexts, streamed (needs the datasets package and the hub)."""


@dataclass(frozen=True)
class Profile:
    """name, about : what ``--profile`` shows. Every other field: the overrides of one stage's config
    (its keys are that config's field names; nested settings are their own entries)."""

    name: str
    about: str
    model: str = DEFAULT_MODEL
    """The model the profile is meant for (the study's when --model is not given)."""
    lahis_languages: tuple[str, ...] = ("en", "de", "zh")
    """LAHIS's languages unless the study names them."""
    detection: Overrides = field(default_factory=dict)
    """NiahSettings of the detection grid (and of the translation grid)."""
    detect: Overrides = field(default_factory=dict)
    ablate: Overrides = field(default_factory=dict)
    cot: Overrides = field(default_factory=dict)
    importance_texts: Overrides = field(default_factory=dict)
    language_tests: Overrides = field(default_factory=dict)
    experiments: tuple[str, ...] = ("ppl", "ppl-cross", "general", "off-target", "attn-transfer", "retrieval")
    adapt: Overrides = field(default_factory=dict)
    probe: Overrides = field(default_factory=dict)
    dynamic_ablate: Overrides = field(default_factory=dict)
    dynamic_ablate_niah: Overrides = field(default_factory=dict)
    rag: Overrides = field(default_factory=dict)
    compress: Overrides = field(default_factory=dict)
    compress_niah: Overrides = field(default_factory=dict)


DEFAULT = Profile(
    name="default",
    about="every paper's experiments at sizes that fit about 15 minutes on 2 CPU cores (Gemma 3 270M)",
    # 2 lengths x 5 depths x 2 needles = 20 samples per language or translation pair.
    detection={"lengths": (800, 1600), "depths": (0.0, 0.25, 0.5, 0.75, 1.0), "needles_per_cell": 2},
    # Masked while decoding only (the official protocol), so the head sets of a prompt share one prefill
    # and decode as one batch; the top set against the spread of 6 random sets (t, 5 df); 6 prompts a
    # language.
    ablate={
        "k": (2,),
        "random_seeds": 6,
        "phases": "decode",
        "lengths": (800,),
        "needles_per_cell": 2,
        "max_new_tokens": 12,
    },
    # Gemma 3 270M solves none of the word problems: the stage shows the protocol, its claims say "no
    # data" (a model that solves some, e.g. Qwen2.5-Coder-0.5B, needs more problems and draws).
    cot={"problems": 2, "k": (4,), "random_seeds": 2, "cot_tokens": 48, "phases": "decode"},
    importance_texts={"texts": 6, "window": 128},
    language_tests={
        "texts": 5,
        "window": 96,
        "random_seeds": 3,
        "questions": 2,
        "prompts": 2,
        "summary_tokens": 16,
        "per_pair": 2,
        "replicates": 500,
    },
    adapt={"epochs": 1, "train_questions": 6, "eval_questions": 8, "random_seeds": 3, "replicates": 500},
    probe={"epochs": 60, "cca_lags": (0, 1, 2, 3, 4, 5), "shuffles": 2},
    dynamic_ablate={"random_seeds": 3, "progressive": (1, 2, 4), "replicates": 500},
    dynamic_ablate_niah={"lengths": (800,), "depths": (0.25, 0.75), "needles_per_cell": 1},
    rag={"count": 3, "replicates": 500},
    compress={"random_seeds": 3, "shares": (0.25,), "max_new_tokens": 16, "replicates": 500},
    compress_niah={"lengths": (1200,), "depths": (0.25, 0.75), "needles_per_cell": 1},
)

PAPER = Profile(
    name="paper",
    about="the papers' sizes (haystacks from Wikipedia up to 32K tokens, 10 depths, more draws and "
    "samples), for a GPU and a model such as Qwen/Qwen2.5-7B-Instruct",
    model="Qwen/Qwen2.5-7B-Instruct",
    lahis_languages=("en", "de", "zh", "fr", "es"),
    # The multilingual study: lengths over a linspace, 10 depths, 3 needles per language; Wikipedia
    # haystacks (streamed; the built-in corpus holds 11K-17K tokens per language).
    detection={
        "lengths": (4000, 8000, 16000, 24000, 32000),
        "depths": tuple(i / 9 for i in range(10)),
        "needles_per_cell": 3,
        "corpus": WIKIPEDIA,
    },
    detect={"max_new_tokens": 50},
    ablate={
        "k": (5, 10, 20),
        "random_seeds": 10,
        "phases": "decode",
        "lengths": (4000, 16000),
        "needles_per_cell": 4,
        "max_new_tokens": 32,
    },
    cot={"problems": 40, "k": (16,), "random_seeds": 8, "cot_tokens": 256, "phases": "decode"},
    importance_texts={"texts": 64, "window": 512},
    language_tests={
        "texts": 32,
        "window": 256,
        "random_seeds": 8,
        "questions": 0,
        "prompts": 16,
        "per_pair": 8,
    },
    adapt={"epochs": 2, "random_seeds": 5},
    probe={},
    dynamic_ablate={"random_seeds": 5, "progressive": (1, 2, 4, 8, 16)},
    dynamic_ablate_niah={
        "lengths": (4000, 16000),
        "depths": (0.25, 0.5, 0.75),
        "needles_per_cell": 4,
        "corpus": WIKIPEDIA,
    },
    rag={"count": 0},
    compress={"random_seeds": 8, "shares": (0.25, 0.5)},
    compress_niah={
        "lengths": (8000, 32000),
        "depths": (0.25, 0.5, 0.75),
        "needles_per_cell": 4,
        "corpus": WIKIPEDIA,
    },
)

PROFILES = {profile.name: profile for profile in (DEFAULT, PAPER)}


def profile_named(name: str) -> Profile:
    if name not in PROFILES:
        raise BabelheadsError(f"Unknown --profile {name!r}. Use one of: {', '.join(PROFILES)}.")
    return PROFILES[name]
