"""Multi-host start-up through JAX's own runtime (`jax.distributed`).

Every binary calls `initialize()` before it touches a device. With explicit
flags it connects to the named coordinator; with `--distributed=auto` (the
default) it initialises only where a cluster is detected (TPU pod, SLURM job
of several tasks), so a laptop or Colab run needs no flag at all.

A process of a multi-process run also watches the others (`PeerWatch`):
when one is gone (dead, or hung: alive but silent) it prints one sentence
and exits with status 1, before JAX's runtime would end it with SIGABRT
(docs/reliability.md).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time

import jax
from absl import flags
from absl import logging
# JAX has no public accessor of its coordination-service client (orbax
# reads it the same way).
from jax._src import distributed as jax_distributed_state

# Keys of the coordination service's key-value store that the watch uses.
_ALIVE_PREFIX = 'smog_jax/alive/'
_STOP_PREFIX = 'smog_jax/stop/'
_DONE = 'done'
# Seconds between two signs of life of a process.
_BEAT_SECONDS = 1.0


def define_flags() -> None:
  """Registers the multi-host flags (call from a binary, not at import)."""
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0 (jax.distributed coordinator).')
  flags.DEFINE_integer('num_processes', None, 'Total number of processes.')
  flags.DEFINE_integer('process_id', None, 'Index of this process.')
  flags.DEFINE_integer('heartbeat_timeout_seconds', 100,
                       "JAX's heartbeat timeout; a process silent for a "
                       'quarter of it counts as lost: the others stop with '
                       'an error instead of waiting.')
  flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                    "'auto': initialise when a TPU pod or a multi-task SLURM "
                    "job is detected; 'on': always (auto-detect the "
                    "cluster); 'off': single process.")


def _cluster_detected() -> bool:
  slurm_tasks = int(os.environ.get('SLURM_NTASKS', '1'))
  tpu_hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return slurm_tasks > 1 or ',' in tpu_hosts


def initialize() -> None:
  """Initialises `jax.distributed` as the flags ask (idempotent per process).

  With more than one process, also starts the `PeerWatch` (stopped at
  exit) with a quarter of `--heartbeat_timeout_seconds` as its limit.
  """
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
  if jax.process_count() > 1:
    watch = PeerWatch(f.heartbeat_timeout_seconds / 4)
    watch.start()
    atexit.register(watch.stop)


def lost_process_sentence(cause: str) -> str:
  """What a process says when another process of its run is gone."""
  return (f'{_program()}: process {jax.process_index()} lost contact with '
          f'another process of the run ({cause}); restart every process '
          'with the same command: the run resumes from its last checkpoint.')


def exit_lost_process(cause: str) -> None:
  """Prints `lost_process_sentence(cause)` and ends the process: status 1.

  Not `sys.exit`: exit handlers would wait at JAX's shutdown barrier for
  the lost process, and JAX's runtime would then abort this one.
  """
  sys.stderr.write(lost_process_sentence(cause) + '\n')
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def _program() -> str:
  spec = getattr(sys.modules.get('__main__'), '__spec__', None)
  return spec.name if spec is not None else 'smog_jax'


class PeerWatch:
  """Ends this process with one sentence when another process is lost.

  JAX's coordination service declares a process dead once it missed
  `heartbeat_timeout` seconds of heartbeats, and its client then aborts
  every survivor (SIGABRT) through a callback that Python cannot replace
  (jaxlib passes it an `absl::Status`, which has no Python conversion).
  A survivor blocked where no collective fails (a barrier, a hung peer's
  collective) would meet that abort. So each process writes a counter
  into the service's key-value store every second and reads the others':
  one whose counter stood still for `limit_seconds` is lost, and this
  process exits with status 1 and `lost_process_sentence`. The limit
  must end before the service's verdict, which comes as soon as half the
  timeout after a hang (a process's last heartbeat can be half a timeout
  old); `initialize` uses a quarter. A process that exits on its own
  writes `done` first, so that its peers do not take it for lost.
  """

  def __init__(self, limit_seconds: float):
    self._client = jax_distributed_state.global_state.client
    self._me = jax.process_index()
    self._peers = [i for i in range(jax.process_count()) if i != self._me]
    self._limit = limit_seconds
    self._stopping = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name='smog_jax-peer-watch')

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    """Writes `done` and ends the watch (at exit; idempotent)."""
    if self._stopping.is_set():
      return
    self._stopping.set()
    try:
      self._client.key_value_set(f'{_ALIVE_PREFIX}{self._me}', _DONE,
                                 allow_overwrite=True)
      self._client.key_value_set(f'{_STOP_PREFIX}{self._me}', _DONE,
                                 allow_overwrite=True)
    except jax.errors.JaxRuntimeError:
      pass  # The service is gone already: nothing to tell the peers.
    self._thread.join(timeout=2 * _BEAT_SECONDS)

  def _lost(self, cause: str) -> None:
    if not self._stopping.is_set():
      exit_lost_process(cause)

  def _run(self) -> None:
    started = time.monotonic()
    seen = {peer: (None, started) for peer in self._peers}
    beat = 0
    while not self._stopping.is_set():
      try:
        self._client.key_value_set(f'{_ALIVE_PREFIX}{self._me}', str(beat),
                                   allow_overwrite=True)
        values = dict(self._client.key_value_dir_get(_ALIVE_PREFIX))
      except jax.errors.JaxRuntimeError as e:
        return self._lost(f'coordinator unreachable: {_first_line(e)}')
      beat += 1
      now = time.monotonic()
      for peer, (last, since) in list(seen.items()):
        value = values.get(f'{_ALIVE_PREFIX}{peer}')
        if value == _DONE:
          del seen[peer]
        elif value != last:
          seen[peer] = (value, now)
        elif now - since > self._limit:
          return self._lost(f'process {peer} gave no sign of life for '
                            f'{now - since:.0f} s')
      try:  # The pause; a held request fails at once if the service dies.
        self._client.blocking_key_value_get(
            f'{_STOP_PREFIX}{self._me}', int(_BEAT_SECONDS * 1000))
      except jax.errors.JaxRuntimeError as e:
        if 'DEADLINE_EXCEEDED' not in str(e):
          return self._lost(f'coordinator unreachable: {_first_line(e)}')


def _first_line(error: Exception) -> str:
  return str(error).splitlines()[0] if str(error) else type(error).__name__
