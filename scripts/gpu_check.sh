#!/usr/bin/env bash
# GPU readiness in one command: bash scripts/gpu_check.sh [more pytest options]
#
# Runs the `gpu` tests (tests/gpu/test_gpu_ready.py) with .venv's python (or $PYTHON). Without CUDA
# every test skips with one line, "no CUDA device: run scripts/gpu_check.sh on a machine with a GPU",
# and the script exits 0. On a GPU machine install a CUDA build of torch into .venv before
# scripts/setup.sh (which otherwise installs the CPU build). The models have random weights built from
# real configs: nothing is downloaded. Each check prints a `gpu:` line with what it measured.
#
# Expected on one H100 (80 GB): all pass, in about two and a half minutes.
#   1. bf16 detection at 32K tokens: Llama-3.2-1B's shape (16 layers, 32 query / 8 KV heads, hidden
#      2048; 2.5 GB of bf16 weights), a NIAH-like prompt of 32768 tokens, 4 decode steps recorded.
#      The instrument's top-k peaks on layers 0, 1, 7, 15 equal transformers' eager attention on the
#      same query and keys within 4 % (one bf16 step of a logit below 8 is 3.2 %). Peak memory above
#      the weights must stay under 2 x the KV cache (1 GiB) + 3 GiB = 5 GiB, expected 1.5-2.5 GiB;
#      eager attention would need 32 x 32768^2 x 2 bytes = 64 GiB for one layer. About 1-3 s of
#      prefill, tens of ms per decode step.
#   2. Compression memory deltas: benchmarks/kv_memory.py's compress run on SmolLM2-135M's shape in
#      bf16, NIAH at 8000 tokens, share 0.25. The peaks above the weights and the shared reference
#      prefill are finite, positive, at least each policy's cache bytes, and head-split's are below
#      full's. Expected: full cache 176 MiB, head-split about 27 % of it; full's decode delta reads
#      about 176 MiB (its first update copies the context it shares with the reference prefill),
#      head-split's 50-100 MiB. About 20-40 s.
#   3. Importance gradients, bf16 against float32: LAHIS gate gradients of one random Llama-3.2-1B-shaped
#      model over 8 English windows of 192 tokens, in float32 and rounded to bf16. Losses within 0.2 %,
#      Spearman > 0.9 over the 512 heads for the mean gradient and the 'paper' importance, gradient
#      array error under 10 % (a 16-layer model on CPU bf16: 0.9997 and 1.8 %). About 10 s.
#   4. study --profile paper cut to a slice (one 4000-token length, the built-in corpus) on a random
#      SmolLM2-135M-shaped model: detection, translation, comparison, LAHIS, the soft mask and the
#      dynamic analyses finish; the stages that need retrieval heads (which a random model lacks) end
#      with one line each; the report is written. About a minute.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
if [ ! -x "$python" ]; then
  echo "scripts/gpu_check.sh: $python not found; run scripts/setup.sh first (or set PYTHON)." >&2
  exit 2
fi
"$python" -c "import torch; print('torch', torch.__version__, '| CUDA:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
  && ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "note: nvidia-smi sees a GPU but this torch has no CUDA: install a CUDA build of torch into .venv." >&2
fi
exec "$python" -m pytest -m gpu tests/gpu -q -rs "$@"
