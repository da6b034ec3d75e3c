#!/usr/bin/env bash
# Runs N JAX processes on this machine, each with D fake CPU devices: a stand-in
# for a multi-host pod (jax.distributed over localhost, gloo CPU collectives).
#
#   launch/local_multiprocess.sh N D WORKDIR [extra smog_jax.main flags...]
#   launch/local_multiprocess.sh 2 4 /tmp/smog_2x4 \
#       --config configs/fashion_mnist.py:tiny --config.total_steps=8
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS WORKDIR [flags...]" >&2
  exit 2
fi
num_processes=$1; devices=$2; workdir=$3; shift 3
port=${SMOG_COORDINATOR_PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < num_processes; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu \
    python3 -m smog_jax.main --workdir "$workdir" \
      --coordinator_address "127.0.0.1:${port}" \
      --num_processes "$num_processes" --process_id "$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
