#!/usr/bin/env bash
# The main job: set up, export the embedded default BERT (all-MiniLM-L6-v2) to a validated
# fp32 + INT8 ONNX bundle, then benchmark it on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/edgebert export --quantize int8 --out bundle --force
.venv/bin/edgebert bench bundle --device cpu
