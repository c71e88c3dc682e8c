#!/usr/bin/env bash
# The GPU checks and measurements of docs/BENCHMARKS.md, unattended, in under 8 minutes on
# a CUDA machine (limits: 470 s in all) with torch, torchvision, tqdm, safetensors, pillow, numpy, pytest,
# scikit-image, scipy, onnx and onnxruntime (simplejpeg optional: PIL decodes without it)
# and no network. The package runs from this checkout.
#
#   FASHION_MNIST_DIR=/path/to/fashion-mnist bash benchmarks/gpu.sh
#
# FASHION_MNIST_DIR: a folder with the four *-ubyte(.gz) files (default: Debian's
# /usr/share/datasets/fashion-mnist; a copy carried beside the checkout works). Every step
# runs under its own time limit and a failing or missing step does not stop the others; the
# end prints one summary (each step: ok, failed, timed out or skipped, and its seconds) to
# paste into docs/BENCHMARKS.md with the tables above it. Without CUDA, or without the data,
# the steps that need them are skipped and say so; the script still exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
FASHION=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
OUT_DIR=$(mktemp -d)
SUMMARY=()

# step NAME LIMIT_S NEEDS COMMAND...: NEEDS is a comma list of cuda, fashion, or -
step() {
    local name=$1 limit=$2 needs=$3
    shift 3
    local why=""
    [[ -n ${ONLY:-} && ! $name =~ $ONLY ]] && why="not in ONLY=$ONLY"
    [[ $needs == *cuda* && $HAVE_CUDA != 1 ]] && why="no CUDA"
    [[ $needs == *fashion* && ! -e $FASHION/train-images-idx3-ubyte.gz && ! -e $FASHION/train-images-idx3-ubyte ]] &&
        why="${why:+$why, }no Fashion-MNIST in $FASHION (set FASHION_MNIST_DIR)"
    if [[ -n $why ]]; then
        SUMMARY+=("$(printf '%-44s skipped (%s)' "$name" "$why")")
        return
    fi
    echo
    echo "=== $name"
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    local status=ok
    if ((rc == 124 || rc == 137)); then
        status="timed out after ${limit} s"
    elif ((rc != 0)); then
        status="failed (exit $rc)"
    fi
    SUMMARY+=("$(printf '%-44s %-24s %4d s' "$name" "$status" $((SECONDS - t0)))")
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'CUDA', torch.cuda.is_available() and torch.cuda.get_device_name())"
HAVE_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
lscpu 2>/dev/null | grep -m1 "Model name" || true

# the CUDA paths, as tests: bf16/fp16 steps with channels_last and compile, the store's
# pinned loader, resume, 10-patch evaluation, serve's predict (tests/test_gpu.py)
step "tests marked gpu" 150 cuda,fashion env FASHION_MNIST_DIR="$FASHION" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
# the Fashion-MNIST recipe's step: fp32, bf16, what --amp auto picks
step "speed.py small" 40 cuda "$PY" benchmarks/speed.py small --device cuda --repeats 5
# the default run end to end on the GPU, 60 s of budget
step "train --budget 60s (default run)" 90 cuda,fashion "$PY" -m alexnet train --data-dir "$FASHION" --budget 60s --out "$OUT_DIR/run"
# training images/s (synthetic input): torchvision eager fp32, ours eager fp32, bf16 channels_last, auto, compiled
step "speed.py train" 80 cuda "$PY" benchmarks/speed.py train --device cuda --batch 128 --repeats 5 --compile
# the packed store end to end, and batched JPEG decoding on the GPU
step "speed.py packed decode" 50 cuda "$PY" benchmarks/speed.py packed decode --device cuda --batch 128 --repeats 3 --images 1024
# the store's decoders and loader per core, on this machine's CPU (no GPU needed)
step "pipeline.py (per core, this CPU)" 40 - "$PY" benchmarks/pipeline.py --images 240 --repeats 3
# LRN alone, forward + backward
step "lrn.py" 30 - "$PY" benchmarks/lrn.py --repeats 5

echo
echo "=== summary (paste with the tables above into docs/BENCHMARKS.md)"
printf '%s\n' "${SUMMARY[@]}"
rm -rf "$OUT_DIR"
exit 0
