#!/usr/bin/env bash
# The main job: set up, export the embedded default BERT (all-MiniLM-L6-v2) to a validated
# fp32 + INT8 ONNX bundle, add its OpenVINO IR and NNCF INT8 model, then benchmark every model on
# ONNX Runtime CPU and OpenVINO side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/edgebert export --quantize int8 --out bundle --force
.venv/bin/edgebert quantize bundle --target openvino
.venv/bin/edgebert bench bundle --device cpu,openvino
