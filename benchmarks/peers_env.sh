#!/usr/bin/env bash
# Creates .peers-venv: a separate environment with Hugging Face Optimum's ONNX Runtime integration, for
# benchmarks/peers_optimum.py (the peer baseline edgebert is compared against). edgebert's own .venv is
# left alone. Idempotent: a stamp file holding the pins below marks a finished install.
#
#   bash benchmarks/peers_env.sh          # then: .peers-venv/bin/python benchmarks/peers_optimum.py ...
#
# torch is installed first and pinned on its own so pip takes the local CPU wheel rather than a CUDA build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.peers-venv"
STAMP="$VENV/.peers-env-done"
PYTHON="${PYTHON:-python3}"

TORCH_PIN="torch==2.13.0"
PEER_PINS=(
  "optimum-onnx[onnxruntime]==0.1.0"
  "optimum==2.1.0"
  "transformers==4.57.6"
  "onnxruntime==1.32.0"
  "onnx==1.23.2"
  "tokenizers==0.22.2"
  "huggingface_hub==0.36.2"
  "numpy==2.4.6"
)
WANT="$TORCH_PIN ${PEER_PINS[*]}"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]]; then
  echo "peers_env: $VENV is up to date (stamp $STAMP)" >&2
else
  start=$SECONDS
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "peers_env: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  rm -f "$STAMP"
  pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --quiet)
  echo "peers_env: installing $TORCH_PIN" >&2
  "${pip[@]}" "$TORCH_PIN"
  echo "peers_env: installing ${PEER_PINS[*]}" >&2
  "${pip[@]}" "$TORCH_PIN" "${PEER_PINS[@]}"
  printf '%s' "$WANT" >"$STAMP"
  echo "peers_env: done in $((SECONDS - start)) s" >&2
fi

"$VENV/bin/python" - <<'EOF'
from importlib import metadata

for name in ("torch", "transformers", "optimum", "optimum-onnx", "onnxruntime"):
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name}: not installed")
EOF
