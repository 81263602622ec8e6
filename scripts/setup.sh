#!/usr/bin/env bash
# Create .venv (if missing or out of date) with edgebert, its training/export, OpenVINO and report
# extras and dev tools.
# torch is pinned to 2.13.0: on our machines that is a CPU wheel on local disk; a bare `torch`
# would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
stamp=.venv/.edgebert-setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/edgebert ]; then
  exit 0
fi
echo "setting up .venv (first run takes a few minutes)" >&2
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[train,openvino,report,dev]"
echo "$want" > "$stamp"
