"""Multi-host start-up through JAX's own runtime (`jax.distributed`).

Every binary calls `initialize()` before it touches a device. With explicit
flags it connects to the named coordinator; with `--distributed=auto` (the
default) it initialises only where a cluster is detected (TPU pod, SLURM job
of several tasks), so a laptop or Colab run needs no flag at all.
"""

from __future__ import annotations

import os

import jax
from absl import flags
from absl import logging


def define_flags() -> None:
  """Registers the multi-host flags (call from a binary, not at import)."""
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0 (jax.distributed coordinator).')
  flags.DEFINE_integer('num_processes', None, 'Total number of processes.')
  flags.DEFINE_integer('process_id', None, 'Index of this process.')
  flags.DEFINE_integer('heartbeat_timeout_seconds', 100,
                       'A process silent this long counts as lost: the '
                       'others stop with an error instead of waiting.')
  flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                    "'auto': initialise when a TPU pod or a multi-task SLURM "
                    "job is detected; 'on': always (auto-detect the "
                    "cluster); 'off': single process.")


def _cluster_detected() -> bool:
  slurm_tasks = int(os.environ.get('SLURM_NTASKS', '1'))
  tpu_hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return slurm_tasks > 1 or ',' in tpu_hosts


def initialize() -> None:
  """Initialises `jax.distributed` as the flags ask (idempotent per process)."""
  f = flags.FLAGS
  explicit = f.coordinator_address is not None or f.num_processes is not None
  if f.distributed == 'off' and not explicit:
    return
  if not explicit and f.distributed == 'auto' and not _cluster_detected():
    return
  # CPU processes (tests, CPU clusters) exchange collectives through gloo.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=f.coordinator_address,
      num_processes=f.num_processes, process_id=f.process_id,
      heartbeat_timeout_seconds=f.heartbeat_timeout_seconds)
  logging.info('jax.distributed: process %d of %d, %d local / %d global '
               'devices.', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
