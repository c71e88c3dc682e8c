#!/usr/bin/env bash
# The GPU measurements of docs/BENCHMARKS.md, in one run of a few minutes, on a CUDA
# machine with torch, torchvision, tqdm, safetensors, pillow, scikit-image, onnx and
# onnxruntime installed and no network (the package runs from this checkout).
#
#   bash benchmarks/gpu.sh            # prints the tables; paste them into docs/BENCHMARKS.md
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
# training images/s (synthetic input): torchvision eager fp32, ours eager fp32, bf16 channels_last, compiled
"$PY" benchmarks/speed.py train --device cuda --batch 128 --repeats 5 --compile
# the packed store end to end, and batched JPEG decoding on the GPU
"$PY" benchmarks/speed.py packed decode --device cuda --batch 128 --repeats 3 --images 1024
# LRN alone, forward + backward
"$PY" benchmarks/lrn.py --repeats 5
