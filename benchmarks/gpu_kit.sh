#!/usr/bin/env bash
# The GPU benchmark of issue 5, for a session that is lent the device machine (one NVIDIA H200,
# Python 3.12 with PyTorch and CUDA 13 libraries, no internet, the CPU onnxruntime only; each call
# carries at most 64 MiB, and a machine stays warm 30 s after a call).
#
#   bash benchmarks/gpu_kit.sh prepare
#       here: onnxruntime-gpu and the Python pieces edgebert's training tests need there (for
#       Python 3.12), a bundle of the reference SST-2 MiniLM with its fp32 and fp16 models, and SST-2
#       dev, packed with xz and cut into .gpu-kit/part-NN of at most 60 MiB (git ignores .gpu-kit).
#       It prints the device calls to make.
#   bash benchmarks/gpu_kit.sh device
#       there, once every part has been carried to /tmp/kit (one call a part, back to back, each
#       `mkdir -p /tmp/kit && mv .gpu-kit/part-NN /tmp/kit/` carrying that part; the last call runs
#       this): unpacks, then `edgebert bench` on the GPU (CUDA: fp32 and fp16; synthetic shapes and
#       real text) beside the same machine's CPU, and the GPU training test. Results: $OUT/gpu.tar.
#
# To try `device` here: KIT_PYTHON=3.11 prepares a kit for this machine's Python, and
# KIT_PY=.venv/bin/python runs it with that interpreter (after the parts are copied to /tmp/kit);
# without a GPU it must stop at the clear "could not start CUDAExecutionProvider" line.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu-kit
PYTHON_VERSION=${KIT_PYTHON:-3.12}
PART_MB=60

prepare() {
    local shared=../shared venv=.venv/bin
    [ -d "$shared/models/minilm-sst2" ] || { echo "no $shared/models/minilm-sst2 here" >&2; exit 1; }
    rm -rf "$KIT" && mkdir -p "$KIT/stage"
    version() { "$venv/python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
    # transformers 4.57 (the device has 5.x, which edgebert's export cannot use) wants
    # tokenizers <= 0.23.0 and huggingface-hub < 1: the versions of this .venv
    "$venv/python" -m pip install --quiet --no-deps --only-binary=:all: --target "$KIT/stage/site" \
        --python-version "$PYTHON_VERSION" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        onnxruntime-gpu "transformers==$(version transformers)" "tokenizers==$(version tokenizers)" \
        "huggingface-hub==$(version huggingface_hub)"
    "$venv/edgebert" export --model "$shared/models/minilm-sst2" --quantize fp16 --out "$KIT/stage/bundle" \
        --force --json >"$KIT/export.json"
    cp "$shared/data/sst2/dev.tsv" "$KIT/stage/dev.tsv"
    tar -C "$KIT/stage" -cf - . | xz -T2 -6 | split -b "${PART_MB}M" -d - "$KIT/part-"
    rm -rf "$KIT/stage"
    (cd "$KIT" && sha256sum part-* >SHA256SUMS)
    local parts=("$KIT"/part-*) last
    last=$(basename "${parts[-1]}")
    echo "kit: ${#parts[@]} parts, $(du -ch "$KIT"/part-* | tail -1 | cut -f1) in all. Device calls, back to back:"
    for part in "${parts[@]}"; do
        part=$(basename "$part")
        if [ "$part" = "$last" ]; then
            echo "  run(carry=[\"$KIT/$part\", \"$KIT/SHA256SUMS\"], timeout_s=600, command=\"mkdir -p /tmp/kit && mv $KIT/$part $KIT/SHA256SUMS /tmp/kit/ && bash benchmarks/gpu_kit.sh device\")"
        else
            echo "  run(carry=[\"$KIT/$part\"], command=\"mkdir -p /tmp/kit && mv $KIT/$part /tmp/kit/\")"
        fi
    done
}

device() {
    local kit=/tmp/kit out=${OUT:-/tmp/kit/out} python=${KIT_PY:-python3}
    mkdir -p "$out/gpu"
    (cd "$kit" && sha256sum --check --quiet SHA256SUMS) || { echo "a part is missing or damaged" >&2; exit 1; }
    rm -rf "$kit/unpacked" && mkdir "$kit/unpacked"
    cat "$kit"/part-* | xz -d | tar -C "$kit/unpacked" -xf -
    local site=$kit/unpacked/site nvidia
    # onnxruntime.preload_dlls looks for NVIDIA's pip libraries beside onnxruntime: link the ones
    # PyTorch's environment holds there
    nvidia=$("$python" -c "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))" 2>/dev/null || true)
    [ -n "$nvidia" ] && ln -sfn "$nvidia/nvidia" "$site/nvidia"
    export PYTHONPATH=$site:$PWD PYTHONUNBUFFERED=1
    local results=$out/gpu
    {
        nvidia-smi || true
        "$python" -c "import onnxruntime as o, sys; print(sys.version); print(o.__version__, o.get_available_providers())"
    } 2>&1 | tee "$results/device.txt"
    local bundle=$kit/unpacked/bundle data=$kit/unpacked/dev.tsv
    set +e
    "$python" -m edgebert bench "$bundle" --device gpu,cpu --data "$data" --batch-size 1,8,32 --seq-len 128 \
        --report "$results/report" --no-save 2>&1 | tee "$results/bench.txt"
    "$python" -m edgebert bench "$bundle" --device gpu,cpu --data "$data" --real-text --no-save --json \
        >"$results/real.json" 2>"$results/real.err"
    tail -5 "$results/real.err"
    "$python" -m pytest -q -p no:cacheprovider tests/test_loop.py -k gpu 2>&1 | tail -15 | tee "$results/tests.txt"
    set -e
    tar -C "$out" -cf "$out/gpu.tar" gpu && rm -rf "$results"
    echo "results: $out/gpu.tar"
}

case "${1:-}" in
    prepare) prepare ;;
    device) device ;;
    *) echo "usage: bash benchmarks/gpu_kit.sh prepare|device" >&2; exit 2 ;;
esac
