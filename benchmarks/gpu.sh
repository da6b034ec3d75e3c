#!/usr/bin/env bash
# The prepared accelerator check: one H100/H200, a few minutes, synthetic
# uint8 crops, no TensorFlow (JAX, flax, optax and ml-collections only).
#
#   bash benchmarks/gpu.sh          # on the accelerator host
#   bash benchmarks/gpu.sh smoke    # tiny sizes, to check the script on a CPU
#                                   # (TensorFlow, tfds and clu blocked)
#
# Pure-Python wheels go in .whl/ beside the repository root (`bash
# benchmarks/gpu_wheels.sh`: ml-collections, which the host lacks, and the
# pinned flax and optax); they are installed into a temporary folder first.
# Through the device tool: command `set -o pipefail; bash benchmarks/gpu.sh
# 2>&1 | tee $OUT/gpu.log`, carry ['.whl'], so the log comes back even if
# the call times out. Figures go to docs/benchmarks.md with the card named.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade \
    --target "$scratch/site" .whl/*.whl
  export PYTHONPATH="$scratch/site:$PYTHONPATH"
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
# A program compiled by one part is not compiled again by a later one (the
# ResNet-50 step of part 1 is part 4's pooled side).
export JAX_COMPILATION_CACHE_DIR="$scratch/xla_cache"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0

if [[ "${1:-}" == smoke ]]; then
  # As on the accelerator host: TensorFlow, tfds and clu cannot be imported.
  blocked="$scratch/blocked"
  for module in tensorflow tensorflow_datasets clu; do
    mkdir -p "$blocked/$module"
    echo "raise ImportError('$module is not on the accelerator host')" \
      >"$blocked/$module/__init__.py"
  done
  export PYTHONPATH="$blocked:$PYTHONPATH"
  step=(--config configs/fashion_mnist.py:tiny --steps 2)
  kmeans=(--kmeans_rows=4000)
  backbones=(--smoke)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  step=(--config configs/imagenet_resnet50.py --config.batch_size=128
        --config.model.dtype=bfloat16 --steps 20)
  kmeans=(--kmeans_rows=1000000)
  backbones=()
fi
python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'
# Most wanted first, so a run cut short still answers issue 30's questions.
part() { echo "== [${SECONDS} s] $*"; }

part "ResNet-50 multi-crop SMoG step, with and without device augmentation"
python3 benchmarks/train_step.py "${step[@]}"
part "k-means, K = 3000, D = 128, 10 iterations"
python3 benchmarks/grouping.py "${kmeans[@]}" --repeats=1
part "Backbones: each ImageNet recipe's bf16 step, throughput and memory"
python3 benchmarks/gpu_backbones.py "${backbones[@]}"
part "ResNet-50 step, backbone BatchNorm pooled against per resolution"
python3 benchmarks/train_step.py "${step[@]}" --rounds 4 \
  --backbone_bn_per_resolution
part "done"
