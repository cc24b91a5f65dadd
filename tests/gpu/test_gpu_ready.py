"""GPU readiness: what only a CUDA GPU can check, in one command: ``bash scripts/gpu_check.sh``.

Every model here has random weights built from the config of a real model: nothing is downloaded and no
weights travel with the code. Without CUDA every test skips with one reason line. Each check prints one
``gpu:`` line with what it measured. Expected outcome on one H100 (80 GB), where all four should pass
in about two and a half minutes in all, most of it
building the random models and the tokenizer:

1. ``test_bf16_detection_at_32k_tokens``: Llama-3.2-1B's shape (16 layers, 32 query heads, 8 KV heads
   of 64 dimensions, hidden 2048, vocabulary 128256, 1.24 B parameters, about 2.5 GB in bf16) in bf16,
   one NIAH-like prompt of 32768 tokens, prefilled in chunks of 4096 and decoded 4 steps with the
   instrument recording (``greedy_decode``, the runner's own path). On layers 0, 1, 7 and 15 of every
   decode step, transformers' own eager attention is computed on exactly the query and keys the
   instrument was given (a registered attention function that wraps the instrument's), so the two
   differ only in the instrument's arithmetic. Passes when, for every head, the recorded top-1 weight
   is the eager row's maximum within ``PEAK_RTOL`` = 4 %, every recorded top-k position's eager weight
   is at least (1 - 4 %) x the eager row's k-th largest weight (ties at bf16 precision count as
   either), and every recorded weight equals the eager weight at its position within 4 %. Why 4 %: the
   logits are bf16 (8-bit significand); the instrument and eager multiply the same operands in two
   GEMM shapes, which may round a logit one bf16 step apart: 2^-5 = 0.031 for |logit| in [4, 8), a
   weight ratio of e^0.031 = 1.032; eager also rounds its weights to bf16 (2^-9 = 0.2 %). A wrong
   position, mask or scale is off by far more (random attention over 32K keys: peak weights of
   1e-4..1e-2). Memory: the peak allocated above the weights must stay under 2 x the KV cache
   (2 x 1 GiB at 32K) + 3 GiB = 5 GiB; eager attention at 32K tokens would hold the weights
   (batch, heads, n, n) of one layer, 32 x 32768^2 x 2 bytes = 64 GiB in bf16 (128 GiB in the float32
   softmax), more than an H100 holds. Expected: about 1.5 to 2.5 GiB above the weights (the 1 GiB cache;
   the last chunk's boolean mask and its additive bf16 copy, 128 + 256 MiB; K and V repeated to 32
   heads for the masked sdpa kernel, 256 MiB; the MLP's 4096 x 8192 activations), and about 1 to 3 s
   for the prefill (about 135 TFLOP) with tens of ms per decode step.

2. ``test_compression_memory_deltas``: the compression experiment that ``benchmarks/kv_memory.py``
   runs (``compress`` with its policies), on SmolLM2-135M's shape (30 layers, 9 query heads, 3 KV
   heads of 64, hidden 576; the tests' 1000-token vocabulary) in bf16, NIAH at 8000 tokens, share 0.25.
   On CUDA each sample records ``peak_prefill`` and ``peak_decode``: the peak allocated while the
   question is prefilled and while decoding, above the weights and the reference prefill that every
   policy forks. Passes when they are finite and positive for every policy, at least the policy's own
   cache bytes while decoding, and head-split's are below full's. Expected: the full cache is
   30 x 3 x 8000 x 64 x 2 x 2 bytes = 176 MiB; head-split keeps 22 of the 90 KV heads whole and 320
   positions of the others, about 27 % of it (48 MiB). full's delta reads about 176 MiB (its first
   update copies the context it shares with the reference prefill); head-split's roughly 50 to
   100 MiB. About 20 to 40 s.

3. ``test_importance_gradients_bf16_against_float32``: LAHIS gate gradients (``gate_gradients``, one
   forward and backward pass over 8 windows of 192 tokens of the built-in English corpus) of one random
   model of Llama-3.2-1B's shape in float32 and again after rounding it to bf16. Passes when the
   per-text losses agree within ``LOSS_RTOL`` = 0.2 % relative, the heads' mean gradients (512 heads)
   and their LAHIS 'paper' importance both rank alike (Spearman > 0.9), and the relative error of the
   whole gradient array, ||g_bf16 - g_fp32|| / ||g_fp32||, stays under ``GRADIENT_RTOL`` = 10 %. Why:
   bf16 keeps 8 significand bits (unit roundoff 2^-9 = 0.2 %) against float32's 24; the gradient
   passes 16 layers forward and back and the weights themselves are rounded, so each head's gradient
   is off by a few unit roundoffs, more where it is a sum of cancelling terms. The same check on CPU
   bf16 gave Spearman 0.999 and an error of 1.0 % (4 layers, hidden 512) and 0.9997 and 1.8 % (16
   layers, hidden 1024), losses within 1e-4: the bounds leave 5x room for CUDA's kernels (flash sdpa,
   cuBLAS) and the wider model, while a dtype bug (a gate cast that cuts the gradient, an overflow, a
   sign) gives an error of order 1 and ranks near 0. Expected on an H100: about 10 s, mostly building
   the float32 model (5 GB).

4. ``test_study_paper_profile_slice``: ``babelheads study --profile paper``'s settings cut to a slice
   (one 4000-token length, one depth, the built-in corpus) on a random model of SmolLM2-135M's shape
   on CUDA. The random model retrieves nothing, so ablation, chain of thought, dynamic ablation, RAG
   and compression end with one line saying so; detection, translation, comparison, LAHIS importance,
   its experiments, the soft mask and the dynamic analyses must finish and the report be written.
   About a minute.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

NO_CUDA = "no CUDA device: run scripts/gpu_check.sh on a machine with a GPU"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]

GIB = 2**30
LLAMA_3_2_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    bos_token_id=128000,
    eos_token_id=128001,
)
"""The config of meta-llama/Llama-3.2-1B (its weights are not needed: the checks use random ones)."""
SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
)
"""The config of HuggingFaceTB/SmolLM2-135M, the benchmark's model, without its vocabulary."""

CONTEXT = 32 * 1024
DECODE_STEPS = 4
PREFILL_CHUNK = 4096
CHECKED_LAYERS = (0, 1, 7, 15)
PEAK_RTOL = 0.04
MEMORY_SLACK = 3 * GIB
KV_LENGTH = 8000
KV_SHARE = 0.25
GRADIENT_TEXTS = 8
GRADIENT_WINDOW = 192
GRADIENT_RTOL = 0.10
LOSS_RTOL = 2e-3
MIN_SPEARMAN = 0.9
CHECK_ATTENTION = "babelheads-gpu-check"
CAPTURE_ATTRIBUTE = "_babelheads_gpu_check_rows"


def say(capsys, line: str) -> None:
    """One result line on the terminal, whatever pytest captures."""
    with capsys.disabled():
        print(f"\ngpu: {line}", flush=True)


def random_model(config, dtype: torch.dtype, device: str, seed: int = 0) -> torch.nn.Module:
    """A causal LM with random weights from ``config``, built directly on ``device`` in ``dtype``,
    with the instrument's attention."""
    from transformers import AutoModelForCausalLM

    from babelheads.probe import ATTENTION_NAME

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION_NAME, dtype=dtype)
    return model.eval()


def llama_config(**overrides):
    from transformers import LlamaConfig

    return LlamaConfig(**{**LLAMA_3_2_1B, **overrides})


def niah_prompt(tokenizer, length: int, depth: float = 0.5) -> list[int]:
    """Exactly ``length`` token ids: BOS, the built-in English corpus (repeated as needed) with a needle
    at ``depth``, and the question."""
    from babelheads.data.corpora import load_corpus

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    haystack = encode(load_corpus("builtin", "en", 0))
    needle = encode("\nThe special magic number is 7392581.\n")
    question = encode("\n\nWhat is the special magic number? The special magic number is")
    body = length - 1 - len(needle) - len(question)
    filler = (haystack * (body // len(haystack) + 1))[:body]
    cut = int(depth * body)
    ids = [tokenizer.bos_token_id, *filler[:cut], *needle, *filler[cut:], *question]
    assert len(ids) == length
    return ids


class EagerRows:
    """transformers' eager attention of the last query on exactly the query, keys and mask that the
    instrument records from, for ``layers``, at every forward pass it records (decode steps)."""

    def __init__(self, layers: tuple[int, ...]):
        self.layers = layers
        self.rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}

    def add(self, module, query, key, value, attention_mask, scaling) -> None:
        from transformers.models.llama.modeling_llama import eager_attention_forward

        mask = None
        if attention_mask is not None:
            row = attention_mask[:, :, -1:, :]
            mask = row
            if row.dtype == torch.bool:  # eager adds its mask: make the boolean one additive
                mask = torch.zeros(row.shape, dtype=query.dtype, device=row.device)
                mask = mask.masked_fill(~row, torch.finfo(query.dtype).min)
        _, weights = eager_attention_forward(module, query[:, :, -1:, :], key, value, mask, scaling=scaling)
        self.rows[module.layer_idx].append(weights[0, :, -1].float().cpu())  # (heads, keys)


def register_check_attention() -> None:
    """An attention function that is the instrument's own plus, on modules that carry an
    :class:`EagerRows`, the eager row of the same inputs while the instrument records."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from babelheads.probe.attention import PROBE_ATTRIBUTE, probed_attention

    def checked(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        output = probed_attention(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
        capture = getattr(module, CAPTURE_ATTRIBUTE, None)
        instrument = getattr(module, PROBE_ATTRIBUTE, None)
        if capture is not None and instrument is not None and instrument.is_recording:
            capture.add(module, query, key, value, attention_mask, scaling)
        return output

    AttentionInterface.register(CHECK_ATTENTION, checked)
    AttentionMaskInterface.register(CHECK_ATTENTION, sdpa_mask)


def decode_with_eager_rows(model, ids: list[int], steps: int, layers: tuple[int, ...], chunk: int):
    """The runner's greedy decode with the instrument recording; returns (Decoded, EagerRows)."""
    from babelheads.models import describe_heads
    from babelheads.probe import ATTENTION_NAME, Instrument
    from babelheads.runner import greedy_decode

    register_check_attention()
    capture = EagerRows(layers)
    layout = describe_heads(model)
    modules = {m.layer_idx: m for n, m in model.named_modules() if n.endswith("self_attn")}
    with Instrument(model, layout) as instrument:
        model.set_attn_implementation(CHECK_ATTENTION)  # after the instrument, which sets its own
        for layer in layers:
            setattr(modules[layer], CAPTURE_ATTRIBUTE, capture)
        try:
            device = next(model.parameters()).device
            decoded = greedy_decode(
                instrument, torch.tensor([ids], device=device), steps, prefill_chunk=chunk
            )
        finally:
            for layer in layers:
                delattr(modules[layer], CAPTURE_ATTRIBUTE)
            model.set_attn_implementation(ATTENTION_NAME)
    return decoded, capture


def peak_errors(decoded, capture: EagerRows, prompt_length: int, rtol: float) -> dict[str, float]:
    """Compare every recorded head of the captured layers with its eager row; returns the worst
    relative errors and counts. Asserts the shapes: one eager row per recorded step, over the keys
    0..position of the step's query."""
    positions = torch.from_numpy(decoded.records.positions)  # (steps, 1, layers, heads, top_k)
    weights = torch.from_numpy(decoded.records.weights)
    steps, top_k = positions.shape[0], positions.shape[-1]
    worst = {"top1": 0.0, "at_positions": 0.0, "ties": 0, "heads": 0, "failures": 0}
    for layer, rows in capture.rows.items():
        assert len(rows) == steps, f"layer {layer}: {len(rows)} eager rows for {steps} recorded steps"
        for step, row in enumerate(rows):
            assert row.shape[-1] == prompt_length + step, (layer, step, row.shape)
            found = positions[step, 0, layer]  # (heads, top_k)
            got = weights[step, 0, layer]
            assert (found >= 0).all() and (found < row.shape[-1]).all(), (layer, step)
            top = row.topk(top_k, dim=-1).values  # (heads, top_k), best first
            eager_at = row.gather(1, found)
            top1 = ((got[:, 0] - top[:, 0]).abs() / top[:, 0]).max().item()
            at_positions = ((got - eager_at).abs() / eager_at.clamp_min(1e-30)).max().item()
            below = eager_at < top[:, -1:] * (1 - rtol)  # a recorded position outside eager's top-k
            worst["top1"] = max(worst["top1"], top1)
            worst["at_positions"] = max(worst["at_positions"], at_positions)
            worst["ties"] += int((found[:, 0] != row.argmax(dim=-1)).sum())
            worst["heads"] += row.shape[0]
            bad = (
                ((got[:, 0] - top[:, 0]).abs() > rtol * top[:, 0])
                | below.any(dim=-1)
                | ((got - eager_at).abs() > rtol * eager_at).any(dim=-1)
            )
            worst["failures"] += int(bad.sum())
    return worst


def test_bf16_detection_at_32k_tokens(tiny_tokenizer_session, capsys):
    from babelheads.models import describe_heads
    from babelheads.probe import Instrument
    from babelheads.runner import greedy_decode
    from babelheads.runner.cache import kv_bytes_per_row

    model = random_model(llama_config(), torch.bfloat16, "cuda")
    layout = describe_heads(model)
    ids = niah_prompt(tiny_tokenizer_session, CONTEXT)

    # Correctness first (it also warms the kernels up for the timing below).
    decoded, capture = decode_with_eager_rows(model, ids, DECODE_STEPS, CHECKED_LAYERS, PREFILL_CHUNK)
    assert decoded.records.num_steps == DECODE_STEPS
    errors = peak_errors(decoded, capture, len(ids), PEAK_RTOL)
    say(
        capsys,
        f"bf16 32K peaks vs eager on layers {list(CHECKED_LAYERS)} x {DECODE_STEPS} steps: "
        f"{errors['heads']} heads, worst top-1 weight error {errors['top1']:.2%}, worst weight error at "
        f"the recorded positions {errors['at_positions']:.2%}, {errors['ties']} top-1 near-ties, "
        f"{errors['failures']} heads outside {PEAK_RTOL:.0%}",
    )
    assert errors["failures"] == 0, errors

    # Then the instrument alone, as a detect run uses it: peak memory above the weights, and time.
    del decoded, capture
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated()
    started = time.perf_counter()
    with Instrument(model, layout) as instrument:
        decoded = greedy_decode(
            instrument, torch.tensor([ids], device="cuda"), DECODE_STEPS, prefill_chunk=PREFILL_CHUNK
        )
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() - resident
    cache = kv_bytes_per_row(layout, CONTEXT + DECODE_STEPS, 2)
    bound = 2 * cache + MEMORY_SLACK
    eager = layout.num_heads * CONTEXT**2 * 2  # one layer's bf16 attention weights
    say(
        capsys,
        f"bf16 32K detection on {torch.cuda.get_device_name()}: prefill + {DECODE_STEPS} decode steps in "
        f"{seconds:.2f} s; weights {resident / GIB:.2f} GiB, peak {peak / GIB:.2f} GiB above them "
        f"(KV cache {cache / GIB:.2f} GiB; bound {bound / GIB:.1f} GiB; eager weights of one layer "
        f"{eager / GIB:.0f} GiB)",
    )
    assert decoded.records.num_steps == DECODE_STEPS
    assert (decoded.records.positions >= 0).all() and (
        decoded.records.positions < CONTEXT + DECODE_STEPS
    ).all()
    assert peak <= bound, f"peak {peak / GIB:.2f} GiB above the weights, bound {bound / GIB:.2f} GiB"
    assert peak * 10 < eager


def save_random_model(directory: Path, tokenizer, shape: dict, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A local model directory (config, random weights, tokenizer) of ``shape``, for load_model."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**shape, vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.to(dtype).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def compression_samples(
    model_dir: Path, out: Path, length: int, device: str, dtype: str, shape: dict, share: float = KV_SHARE
):
    """The benchmark's compression run (benchmarks/kv_memory.py: its policies, one English NIAH
    length) with a score file of random scores; the run's samples table."""
    from babelheads.execution import Execution
    from babelheads.experiments.compress import CompressConfig, compress
    from babelheads.tasks.niah import NiahSettings

    rng = np.random.default_rng(0)
    scores = out.parent / f"{out.name}-scores.json"
    heads = range(shape["num_attention_heads"])
    scores.write_text(
        json.dumps(
            {
                f"{layer}-{head}": [float(rng.random())]
                for layer in range(shape["num_hidden_layers"])
                for head in heads
            }
        )
    )
    config = CompressConfig(
        heads=str(scores),
        model=str(model_dir),
        niah=NiahSettings(("en",), lengths=(length,), depths=(0.25, 0.75), needles_per_cell=1, seed=1),
        policies=("full", "head-split", "window", "random-heads"),
        shares=(share,),
        random_seeds=2,
        max_new_tokens=8,
        dtype=dtype,
        replicates=50,
    )
    store = compress(config, out, Execution(device=device, progress=False))
    return store.table("samples")


def test_compression_memory_deltas(tiny_tokenizer_session, tmp_path, capsys):
    model_dir = save_random_model(tmp_path / "smollm2-shape", tiny_tokenizer_session, SMOLLM2_135M)
    samples = compression_samples(
        model_dir, tmp_path / "compress", KV_LENGTH, "cuda", "bfloat16", SMOLLM2_135M
    )
    assert len(samples) and (samples["status"] == "ok").all()
    for column in ("peak_prefill", "peak_decode"):
        assert np.isfinite(samples[column]).all(), f"{column} must be measured on CUDA"
        assert (samples[column] > 0).all(), samples[["policy", column]]
    # The policy's cache is alive while decoding, so its delta holds at least the cache's bytes.
    assert (samples["peak_decode"] >= samples["bytes"]).all(), samples[["policy", "peak_decode", "bytes"]]
    mean = samples.groupby("policy")[["peak_prefill", "peak_decode", "bytes"]].mean() / 2**20
    say(
        capsys,
        f"compression deltas at {KV_LENGTH} tokens (MiB, mean of {samples['sample_id'].nunique()} samples): "
        + "; ".join(
            f"{policy} cache {row['bytes']:.0f}, prefill {row['peak_prefill']:.0f}, "
            f"decode {row['peak_decode']:.0f}"
            for policy, row in mean.iterrows()
        ),
    )
    for sample_id, rows in samples.groupby("sample_id"):
        full = rows[rows["policy"] == "full"].iloc[0]
        split = rows[rows["policy"] == "head-split"].iloc[0]
        assert split["bytes"] < full["bytes"], sample_id
        for column in ("peak_prefill", "peak_decode"):
            assert split[column] < full[column], (sample_id, column, split[column], full[column])


def importance_gradients(model, tokenizer, windows) -> tuple[np.ndarray, np.ndarray]:
    """LAHIS gate gradients (texts, layers, heads) and per-text losses, by the experiment's own code."""
    from babelheads.experiments.importance import gate_gradients
    from babelheads.models import LoadedModel, describe_heads
    from babelheads.probe import Instrument

    layout = describe_heads(model)
    loaded = LoadedModel(model, tokenizer, layout, {"model": "random"}, False)
    with Instrument(model, layout) as instrument:
        gradient, losses = gate_gradients(loaded, instrument, windows)
    return gradient.cpu().numpy(), losses.numpy()


def paper_importance(gradient: np.ndarray) -> np.ndarray:
    """LAHIS's 'paper' importance per head (analysis/language_heads.importance_scores), gates of one."""
    import pandas as pd

    from babelheads.analysis.language_heads import importance_scores

    texts, layers, heads = gradient.shape
    frame = pd.DataFrame(
        {
            "sample_id": np.repeat(np.arange(texts), layers * heads).astype(str),
            "language": "en",
            "layer": np.tile(np.repeat(np.arange(layers), heads), texts),
            "head": np.tile(np.arange(heads), texts * layers),
            "gradient": gradient.reshape(-1),
            "gate": 1.0,
        }
    )
    table = importance_scores(frame).sort_values(["layer", "head"])
    return table["paper"].to_numpy()


def gradient_agreement(low: tuple[np.ndarray, np.ndarray], high: tuple[np.ndarray, np.ndarray]) -> dict:
    from scipy.stats import spearmanr

    (g_low, loss_low), (g_high, loss_high) = low, high
    return {
        "loss": float(np.max(np.abs(loss_low - loss_high) / np.abs(loss_high))),
        "mean_spearman": float(spearmanr(g_low.mean(axis=0).ravel(), g_high.mean(axis=0).ravel())[0]),
        "paper_spearman": float(spearmanr(paper_importance(g_low), paper_importance(g_high))[0]),
        "relative": float(np.linalg.norm(g_low - g_high) / np.linalg.norm(g_high)),
        "sign": float(np.mean(np.sign(g_low) == np.sign(g_high))),
    }


def lm_windows(tokenizer, texts: int, window: int):
    from babelheads.tasks.lm_texts import TextSettings, TextWindows

    settings = TextSettings(languages=("en",), texts=texts, window=window)
    return TextWindows(settings).language_windows("en", tokenizer)


def test_importance_gradients_bf16_against_float32(tiny_tokenizer_session, capsys):
    windows = lm_windows(tiny_tokenizer_session, GRADIENT_TEXTS, GRADIENT_WINDOW)
    model = random_model(llama_config(), torch.float32, "cuda")
    high = importance_gradients(model, tiny_tokenizer_session, windows)
    model.to(torch.bfloat16)  # the same weights, rounded
    low = importance_gradients(model, tiny_tokenizer_session, windows)
    found = gradient_agreement(low, high)
    say(
        capsys,
        f"importance bf16 vs float32 over {low[0].shape[1] * low[0].shape[2]} heads x {len(windows)} texts: "
        f"loss {found['loss']:.2e} relative, Spearman {found['mean_spearman']:.3f} (mean gradient) and "
        f"{found['paper_spearman']:.3f} (paper importance), gradient error {found['relative']:.1%}, "
        f"signs agree {found['sign']:.1%}",
    )
    assert np.isfinite(low[0]).all() and np.abs(high[0]).max() > 0
    assert found["loss"] < LOSS_RTOL, found
    assert found["mean_spearman"] > MIN_SPEARMAN, found
    assert found["paper_spearman"] > MIN_SPEARMAN, found
    assert found["relative"] < GRADIENT_RTOL, found


def test_study_paper_profile_slice(tiny_tokenizer_session, tmp_path, monkeypatch, capsys):
    """The study's paper profile on CUDA, cut to a slice a random model runs in a minute: the paper's
    settings but the sizes (the built-in corpus: no hub here). A random model retrieves nothing, so the
    stages that need retrieval heads end with one line each; the others must finish and the report
    must gather their claims."""
    from dataclasses import replace

    from babelheads.execution import Execution
    from babelheads.study import PROFILES, StudyConfig, run_study

    niah = {"lengths": (4000,), "depths": (0.5,), "needles_per_cell": 1}
    paper = PROFILES["paper"]
    slice_ = replace(
        paper,
        name="paper-slice",
        detection={**paper.detection, **niah, "corpus": "builtin"},
        ablate={**paper.ablate, "lengths": (4000,), "needles_per_cell": 1, "random_seeds": 2},
        cot={**paper.cot, "problems": 2, "random_seeds": 2, "cot_tokens": 32},
        importance_texts={"texts": 2, "window": 256},
        language_tests={
            **paper.language_tests,
            "texts": 2,
            "random_seeds": 2,
            "questions": 2,
            "prompts": 1,
            "per_pair": 1,
        },
        adapt={**paper.adapt, "epochs": 1, "train_questions": 2, "eval_questions": 2, "random_seeds": 2},
        probe={"epochs": 2, "cca_lags": (0, 1), "shuffles": 1},
        dynamic_ablate_niah=niah,
        rag={"count": 1},
        compress_niah={**niah, "corpus": "builtin"},
    )
    monkeypatch.setitem(PROFILES, "paper-slice", slice_)
    model = save_random_model(tmp_path / "model", tiny_tokenizer_session, SMOLLM2_135M)
    config = StudyConfig(
        model=str(model), languages=("en", "de"), lahis_languages=("en", "de"), profile="paper-slice"
    )
    lines: list[str] = []
    report, results = run_study(
        config, tmp_path / "study", Execution(device="cuda", progress=False), say=lines.append
    )
    by_name = {result.name: result for result in results}
    for name in ("detect", "translate", "compare", "importance", "language-tests", "adapt", "dynamic"):
        assert by_name[name].status == "done", (name, by_name[name], lines)
    for result in results:
        assert result.status in ("done", "failed", "not run"), result
        assert result.status == "done" or result.reason, result
    assert report is not None and report.exists()
    say(capsys, "study paper slice: " + ", ".join(f"{r.name} {r.status} {r.seconds:.0f} s" for r in results))
