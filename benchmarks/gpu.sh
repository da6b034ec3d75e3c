#!/usr/bin/env bash
# The prepared accelerator check: one H100/H200, about 5 minutes, synthetic
# uint8 crops, no TensorFlow (JAX, flax, optax and ml-collections only).
#
#   bash benchmarks/gpu.sh          # on the accelerator host
#   bash benchmarks/gpu.sh smoke    # tiny sizes, to check the script on a CPU
#                                   # (TensorFlow, tfds and clu blocked)
#
# Pure-Python wheels the host lacks (ml-collections) go in .whl/ beside the
# repository root; they are installed into /tmp/site first. Figures go to
# docs/benchmarks.md with the card named.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3

if [[ "${1:-}" == smoke ]]; then
  # As on the accelerator host: TensorFlow, tfds and clu cannot be imported.
  blocked="$(mktemp -d)"
  trap 'rm -rf "$blocked"' EXIT
  for module in tensorflow tensorflow_datasets clu; do
    mkdir "$blocked/$module"
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

echo "== ResNet-50 multi-crop SMoG step, with and without device augmentation"
python3 benchmarks/train_step.py "${step[@]}"
echo "== The same with the backbone's BatchNorm per resolution (not pooled)"
python3 benchmarks/train_step.py "${step[@]}" \
  --config.model.backbone_bn=per_resolution
echo "== k-means, K = 3000, D = 128, 10 iterations"
python3 benchmarks/grouping.py "${kmeans[@]}" --repeats=1
if [[ -f benchmarks/gpu_backbones.py ]]; then
  echo "== Backbones: multi-crop bf16 step"
  python3 benchmarks/gpu_backbones.py "${backbones[@]}"
fi
