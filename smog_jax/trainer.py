"""The SMoG pre-training loop (the library behind `smog_jax.main`).

One process per host, each driving its local devices of one global mesh.
The loop: restore or initialise the state (filling the memory bank with one
forward pass), then per step: regroup at every epoch start, one fused train
step, periodic metrics / kNN monitor / checkpoints. Everything a resumed run
needs is in the checkpointed `TrainState`; the data position is its step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from clu import metric_writers
from clu import periodic_actions

from smog_jax import checkpointing
from smog_jax import data as data_lib
from smog_jax import memory_bank
from smog_jax import models
from smog_jax import optim
from smog_jax import schedules
from smog_jax import sharding as sharding_lib
from smog_jax import train
from smog_jax import train_state as train_state_lib

METRICS_FILE = 'metrics.jsonl'


class JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON object per `write_scalars` call to `WORKDIR/metrics.jsonl`.

  On resume from step S, records of steps after S (logged by the previous
  run after its last checkpoint, and about to be logged again) are dropped
  first, so the file holds each step once.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    if os.path.exists(path):
      with open(path) as f:
        kept = [line for line in f
                if line.strip() and json.loads(line)['step'] <= resume_step]
      with open(path, 'w') as f:
        f.writelines(kept)
    self._file = open(path, 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {'step': int(step)}
    record.update({k: float(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def make_writer(workdir: str, resume_step: int) -> metric_writers.MetricWriter:
  """TensorBoard + log + JSONL on process 0; log only elsewhere."""
  if jax.process_index() != 0:
    return metric_writers.create_default_writer(just_logging=True)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir, asynchronous=False),
      JsonlWriter(workdir, resume_step)])


@dataclasses.dataclass(frozen=True)
class Plan:
  """The run's length, derived once from the config and the data."""
  num_train_examples: int
  steps_per_epoch: int
  total_steps: int


def make_plan(config: ml_collections.ConfigDict) -> Plan:
  num_examples = data_lib.num_train_examples(config)
  steps_per_epoch = data_lib.steps_per_epoch(config)
  if steps_per_epoch < 1:
    raise ValueError(
        f'batch_size={config.batch_size} exceeds the {num_examples} training '
        'examples: lower --config.batch_size.')
  total = config.total_steps
  if total is None or total <= 0:
    total = config.num_epochs * steps_per_epoch
  return Plan(num_examples, steps_per_epoch, int(total))


class _Preemption:
  """Whether to checkpoint and stop after the current step.

  Single process: SIGTERM sets a flag. Several processes must agree on the
  step, so there JAX's own preemption sync (`manager.reached_preemption`,
  fed by the distributed runtime's SIGTERM notifier) decides alone.
  """

  def __init__(self, manager):
    self.requested = False
    self._manager = manager
    self._previous = None
    self._single = jax.process_count() == 1

  def __enter__(self):
    if self._single:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def _handler(self, signum, frame):
    del frame
    logging.warning('Signal %d: checkpointing after this step.', signum)
    self.requested = True

  def __exit__(self, *exc):
    if self._single:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step: int) -> bool:
    return self.requested or self._manager.reached_preemption(step)


def _knn_due(config, epoch_done: int, plan: Plan, step: int) -> bool:
  every = config.get('knn_every_epochs', 0)
  if every < 0:
    return False
  at_end = step == plan.total_steps
  at_epoch = (every > 0 and step % plan.steps_per_epoch == 0 and
              epoch_done % every == 0)
  return at_end or at_epoch


def knn_monitor(config: ml_collections.ConfigDict, state, mesh) -> float:
  """Weighted kNN top-1 of the online backbone's features (train -> test)."""
  from smog_jax import evaluation  # pylint: disable=g-import-not-at-top
  backbone = models.build_backbone(config.model)
  variables = {'params': state.params['backbone'],
               'batch_stats': state.batch_stats['backbone']}
  data_cfg = config.data
  train_split = data_cfg.train_split
  if data_cfg.get('train_slice'):
    train_split = f'{train_split}[:{data_cfg.train_slice}]'
  feats = {}
  for name, split in (('train', train_split), ('test', data_cfg.eval_split)):
    it = data_lib.make_eval_iterator(config, mesh, split, 'test')
    feats[name] = evaluation.extract_features(backbone, variables, it, mesh)
  num_classes = int(max(feats['train'][1].max(), feats['test'][1].max())) + 1
  return evaluation.knn_top1(*feats['train'], *feats['test'], num_classes,
                             k=config.knn_k, temperature=config.knn_temperature,
                             mesh=mesh)


def build(config: ml_collections.ConfigDict, mesh, plan: Plan):
  """(network, tx, step_config, initial state) for `config`."""
  network = models.build_network(config.model)
  sched = schedules.from_config(config, plan.total_steps, plan.steps_per_epoch)
  tx = optim.make_optimizer(config.optimizer, sched.learning_rate)
  step_config = train.StepConfig(
      schedules=sched, augment=data_lib.augment_spec(config),
      temperature=config.smog.temperature,
      centroid_gradient=config.smog.centroid_gradient)
  d = config.data
  shape = (d.image_size, d.image_size, d.channels)

  def create(rng):
    return train_state_lib.create_train_state(
        rng, network, tx, shape, config.smog.num_heads,
        config.smog.num_groups, memory_bank_rows=plan.num_train_examples,
        num_large_crops=d.num_large_crops)

  abstract = jax.eval_shape(create, jax.random.PRNGKey(config.seed))
  shardings = train_state_lib.state_sharding(abstract, mesh)
  # Created directly with its shardings: the bank is never whole on one device.
  state = jax.jit(create, out_shardings=shardings)(
      jax.random.PRNGKey(config.seed))
  return network, tx, step_config, state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Runs (or resumes) pre-training in `workdir`; returns the final state."""
  mesh = sharding_lib.make_mesh()
  sharding_lib.check_divisible(config.batch_size, mesh)
  plan = make_plan(config)
  logging.info('Plan: %s; mesh: %d devices over %d processes.', plan,
               mesh.size, jax.process_count())
  network, tx, step_config, state = build(config, mesh, plan)
  shardings = train_state_lib.state_sharding(state, mesh)

  manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
  restored = checkpointing.restore_latest(
      manager, checkpointing.abstract_like(state, shardings))
  if restored is not None:
    state = restored
    logging.info('Resumed from step %d.', int(state.step))
  else:
    fill = memory_bank.jit_fill_bank_step(network, step_config.augment, mesh,
                                          state)
    for batch in data_lib.make_bank_fill_iterator(config, mesh):
      state = fill(state, batch)
    logging.info('Memory bank filled: %d examples.', plan.num_train_examples)

  start = int(jax.device_get(state.step))
  step_fn = train.jit_train_step(network, tx, step_config, mesh, state)
  regroup_fn = memory_bank.jit_regroup(config.smog.kmeans_iters, mesh, state)
  writer = make_writer(workdir, start)
  if start == 0:
    writer.write_hparams(_flat(config.to_dict()))
  # Steps/s and ETA go to the log; metrics.jsonl keeps one record per step.
  report = periodic_actions.ReportProgress(num_train_steps=plan.total_steps,
                                           every_secs=60)
  batches = data_lib.make_train_iterator(config, mesh, start_step=start)

  last_log_time, last_log_step = time.time(), start
  with _Preemption(manager) as preemption:
    for step in range(start, plan.total_steps):
      epoch = step // plan.steps_per_epoch
      if step % plan.steps_per_epoch == 0:
        state = regroup_fn(state, jnp.asarray(epoch, jnp.int32))
      state, metrics = step_fn(state, next(batches))
      done = step + 1
      report(done)

      knn_due = _knn_due(config, done // plan.steps_per_epoch, plan, done)
      if (knn_due or done % config.log_every_steps == 0 or
          done == plan.total_steps):
        scalars = jax.device_get(metrics)
        now = time.time()
        scalars['images_per_sec'] = (config.batch_size * (done - last_log_step)
                                     / max(now - last_log_time, 1e-9))
        scalars['epoch'] = done / plan.steps_per_epoch
        if knn_due:
          scalars['knn_top1'] = knn_monitor(config, state, mesh)
        writer.write_scalars(done, scalars)
        # Evaluation time does not count towards images_per_sec.
        last_log_time, last_log_step = time.time(), done

      preempted = preemption.reached(done)
      if (done % config.checkpoint_every_steps == 0 or
          done == plan.total_steps or preempted):
        checkpointing.save(manager, state, config, force=preempted)
      if preempted:
        logging.warning('Stopped by preemption at step %d.', done)
        break
  manager.wait_until_finished()
  manager.close()
  writer.flush()
  writer.close()
  return state


def _flat(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out
