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
# the Fashion-MNIST recipe's step: fp32, bf16, what --amp auto picks (bf16 where the card has it)
"$PY" benchmarks/speed.py small --device cuda --repeats 5
# the default run end to end on the GPU: --device auto, --amp auto; the recipe's cap of 30
# epochs binds before its 5-minute budget if a GPU trains 30 epochs in 90 s (then this is
# the default run exactly; the header says which bound)
"$PY" -m alexnet train --budget 90s --out /tmp/alexnet-gpu-run
# training images/s (synthetic input): torchvision eager fp32, ours eager fp32, bf16 channels_last, auto, compiled
"$PY" benchmarks/speed.py train --device cuda --batch 128 --repeats 5 --compile
# the packed store end to end, and batched JPEG decoding on the GPU
"$PY" benchmarks/speed.py packed decode --device cuda --batch 128 --repeats 3 --images 1024
# LRN alone, forward + backward
"$PY" benchmarks/lrn.py --repeats 5
