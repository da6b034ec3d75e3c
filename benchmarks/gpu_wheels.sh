#!/usr/bin/env bash
# The pure-Python wheels benchmarks/gpu.sh needs on the accelerator host,
# fetched here (that host reaches no package registry) into .whl/, which git
# ignores through .git/info/exclude. Versions are requirements.txt's pins:
# the host's own jax stays, the rest of the training code's packages match
# this repository's. Python 3.12 wheels, as the host's Python.
#
#   bash benchmarks/gpu_wheels.sh    # then carry ['.whl'] with gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' \
  >>.git/info/exclude
pins=()
for name in ml-collections flax optax; do
  pin="$(grep -i "^${name}==" requirements.txt)" || {
    echo "requirements.txt pins no ${name}" >&2; exit 1; }
  pins+=("${pin}")
done
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
ls .whl
