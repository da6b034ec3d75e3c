"""The SMoG pre-training loop (the library behind `smog_jax.main`).

One process per host, each driving its local devices of one global mesh.
The loop: restore or initialise the state (filling the memory bank with one
forward pass), then per step: regroup at every epoch start (or
`smog.regroups_per_epoch` times an epoch), one fused train
step, periodic metrics / kNN monitor / checkpoints. Everything a resumed run
needs is in the checkpointed `TrainState`; the data position is its step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from smog_jax import checkpointing
from smog_jax import console
from smog_jax import data as data_lib
from smog_jax import memory_bank
from smog_jax import metrics as metrics_lib
from smog_jax import models
from smog_jax import optim
from smog_jax import schedules
from smog_jax import sharding as sharding_lib
from smog_jax import train
from smog_jax import train_state as train_state_lib
from smog_jax import validation
from smog_jax.data import indices
from smog_jax.data import sources

@dataclasses.dataclass(frozen=True)
class Plan:
  """The run's length, derived once from the config and the data."""
  num_train_examples: int
  steps_per_epoch: int
  total_steps: int
  regroups_per_epoch: int

  @classmethod
  def of(cls, config: ml_collections.ConfigDict, num_examples: int) -> Plan:
    """The plan of `config` on `num_examples` training examples."""
    per_epoch = indices.steps_per_epoch(num_examples, config.batch_size)
    total = config.total_steps
    if total is None or total <= 0:
      total = config.num_epochs * per_epoch
    return cls(num_examples, per_epoch, int(total),
               config.smog.regroups_per_epoch)

  @property
  def regroup_every_steps(self) -> int:
    """Regrouping (k-means + target reset) runs before every step that is a
    multiple of this; the reference: once an epoch."""
    return self.steps_per_epoch // self.regroups_per_epoch


def make_plan(config: ml_collections.ConfigDict, data: data_lib.DataSettings,
              mesh) -> Plan:
  """The run's length; first checks the config (`validation`), no compile."""
  num_examples = data_lib.num_train_examples(data)
  validation.validate(config, mesh.size, jax.process_count(), num_examples)
  return Plan.of(config, num_examples)


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


class NonFiniteError(RuntimeError):
  """A step produced a NaN/inf loss, centroid or parameter."""


class PendingCheck:
  """The finiteness check of the latest step, read one step late.

  Reading a step's `nonfinite` flag waits for the step, so it is read once
  the next step is dispatched (`push`): the device never waits for the host.
  `check` reads it at once, before anything saves or logs that step.
  """

  def __init__(self, last_good_step: Callable[[], int | None]):
    """Takes what names the step kept: the newest checkpoint's (or None)."""
    self._last_good_step = last_good_step
    self._pending = None

  def push(self, step: int, nonfinite) -> None:
    """Checks the step held so far, then holds step `step`'s flag."""
    self.check()
    self._pending = (step, nonfinite)

  def check(self) -> None:
    """Raises `NonFiniteError` if the step held went non-finite."""
    if self._pending is None:
      return
    step, nonfinite = self._pending
    self._pending = None
    if not float(nonfinite):
      return
    last = self._last_good_step()
    kept = ('no checkpoint was written yet' if last is None else
            f'the last good checkpoint, step {last}, is kept')
    raise NonFiniteError(
        f'Step {step} produced a non-finite loss or centroid, so the run '
        f'stopped without saving it ({kept}): lower '
        '--config.optimizer.peak_lr or check the input data, then run the '
        'same command again.')


@dataclasses.dataclass(frozen=True)
class Due:
  """What the loop does with the state at a step, in this order.

  Attributes:
    log: write the metrics of the step just done.
    progress: show them in a progress line too.
    knn: add the kNN monitor's top-1 to them.
    checkpoint: save the state.
    stop: end the run here (its last step, or preempted).
    regroup: regroup before running the next step.
  """
  log: bool
  progress: bool
  knn: bool
  checkpoint: bool
  stop: bool
  regroup: bool


def due(step: int, plan: Plan, config: ml_collections.ConfigDict,
        preempted: bool) -> Due:
  """The periodic actions once `step` steps are done (no I/O).

  At the step a run starts from, only `stop` and `regroup` apply: the rest
  was done for that step before it was saved.

  Args:
    step: the state's step: how many steps are done.
    plan: the run's length.
    config: its `log_every_steps`, `progress_every_steps`,
      `checkpoint_every_steps` and `knn_every_epochs` (negative: never;
      0: only at the end).
    preempted: whether the run was asked to stop after this step.
  """
  last = step >= plan.total_steps
  epochs, into_epoch = divmod(step, plan.steps_per_epoch)
  every = config.knn_every_epochs
  knn = every >= 0 and (last or (every > 0 and into_epoch == 0 and
                                 epochs % every == 0))
  stop = last or preempted
  progress = last or step % config.progress_every_steps == 0
  return Due(log=knn or progress or step % config.log_every_steps == 0,
             progress=progress, knn=knn,
             checkpoint=stop or step % config.checkpoint_every_steps == 0,
             stop=stop,
             regroup=not stop and step % plan.regroup_every_steps == 0)


def knn_monitor(config: ml_collections.ConfigDict,
                data: data_lib.DataSettings, state, mesh) -> float:
  """Weighted kNN top-1 of the online backbone's features (train -> test)."""
  from smog_jax.evaluation import evaluators  # pylint: disable=g-import-not-at-top
  variables = {'params': state.params['backbone'],
               'batch_stats': state.batch_stats['backbone']}
  evaluator = evaluators.Knn(data, mesh, models.build_backbone(config.model),
                             k=config.knn_k,
                             temperature=config.knn_temperature)
  return evaluator.run(variables)['top1']


def build(config: ml_collections.ConfigDict, data: data_lib.DataSettings,
          mesh, plan: Plan, materialize: bool = True):
  """(network, tx, step_config, initial state) for `config` and its `data`.

  With `materialize=False` the state is abstract (`jax.ShapeDtypeStruct`s
  with their shardings): enough to compile the programs, nothing allocated.
  """
  network = models.build_network(config.model)
  sched = schedules.from_config(config, plan.total_steps, plan.steps_per_epoch)
  tx = optim.make_optimizer(config.optimizer, sched.learning_rate)
  step_config = train.StepConfig.of(config.smog, sched, data.augment_spec)
  d = config.data
  shape = (d.image_size, d.image_size, d.channels)

  def create(rng):
    return train_state_lib.create_train_state(
        rng, network, tx, shape, config.smog.num_heads,
        config.smog.num_groups,
        memory_bank_rows=memory_bank.padded_rows(plan.num_train_examples,
                                                 mesh.size),
        num_large_crops=d.num_large_crops)

  abstract = jax.eval_shape(create, jax.random.PRNGKey(config.seed))
  shardings = train_state_lib.state_sharding(abstract, mesh)
  if not materialize:
    return network, tx, step_config, checkpointing.abstract_like(
        abstract, shardings)
  # Created directly with its shardings: the bank is never whole on one device.
  state = jax.jit(create, out_shardings=shardings)(
      jax.random.PRNGKey(config.seed))
  return network, tx, step_config, state


def restore_or_fill(config: ml_collections.ConfigDict,
                    data: data_lib.DataSettings, mesh, plan: Plan, manager,
                    network, state):
  """The newest readable checkpoint, else `state` with its memory bank filled.

  Args:
    config: the run's config (a checkpoint's must allow resuming with it).
    data: its data settings (the bank fill's crops and augmentation).
    mesh: the global mesh.
    plan: the run's length.
    manager: the checkpoint manager.
    network: the SMoG network (fills the bank with one forward pass).
    state: the freshly initialised state.

  Returns:
    (the state, the step it is at).
  """
  shardings = train_state_lib.state_sharding(state, mesh)
  restored = checkpointing.restore_latest(
      manager, checkpointing.abstract_like(state, shardings), config)
  if restored is not None:
    state = restored
    console.show('Resumed from step %d.', int(state.step))
  else:
    fill = memory_bank.jit_fill_bank_step(network, data.augment_spec, mesh,
                                          state)
    for batch in data_lib.make_bank_fill_iterator(data, mesh):
      state = fill(state, batch)
    console.show('Memory bank filled: %s examples.',
                 f'{plan.num_train_examples:,}')
  return state, int(jax.device_get(state.step))


def _knn_schedule(config: ml_collections.ConfigDict) -> str:
  every = config.knn_every_epochs
  if every < 0:
    return 'off'
  when = ('at the end' if every == 0 else
          f'every {every} epochs and at the end')
  return f'{when}, k={config.knn_k}'


def show_start(config: ml_collections.ConfigDict, config_name: str,
               data: data_lib.DataSettings, plan: Plan, mesh, workdir: str,
               num_params: int) -> None:
  """The start-up block: what runs, on what, for how long, and where."""
  d, m = config.data, config.model
  crops = f'{d.num_large_crops} x {d.large_crop_size} px'
  if d.num_small_crops:
    crops += f' + {d.num_small_crops} x {d.small_image_size} px'
  console.block(f'smog_jax.main: {config_name}', [
      ('devices', console.describe_devices(mesh.size)),
      ('data', f'{d.dataset} {sources.train_split(data)}: '
               f'{plan.num_train_examples:,} images; crops {crops} '
               'a pipeline'),
      ('model', f'{m.backbone}, {num_params:,} parameters; '
                f'{config.smog.num_heads} heads x '
                f'{config.smog.num_groups} groups'),
      ('plan', f'{plan.total_steps:,} steps of {config.batch_size} '
               f'({plan.total_steps / plan.steps_per_epoch:g} epochs of '
               f'{plan.steps_per_epoch:,}); regrouping every '
               f'{plan.regroup_every_steps:,} steps'),
      ('kNN', _knn_schedule(config)),
      ('workdir', f'{workdir} (checkpoints every '
                  f'{config.checkpoint_every_steps:,} steps, '
                  'metrics.jsonl, TensorBoard)'),
      ('full log', console.log_path() or 'on the terminal'),
  ])


def show_progress(step: int, plan: Plan, scalars, eta: str) -> None:
  """One progress line: step, loss, images/s, ETA."""
  console.show(
      'step %s/%s (%d %%), epoch %.1f: loss %.4f, %s images/s, ETA %s',
      f'{step:,}', f'{plan.total_steps:,}', 100 * step // plan.total_steps,
      step / plan.steps_per_epoch, scalars['loss'],
      f'{scalars["images_per_sec"]:,.0f}', eta)


def show_summary(step: int, first_step: int, last_record, workdir: str
                 ) -> None:
  """The closing block: time, final metrics, what to look at next."""
  final = f'loss {last_record["loss"]:.4f}'
  if 'knn_top1' in last_record:
    final += f', kNN top-1 {100 * last_record["knn_top1"]:.2f} %'
  console.block(
      f'Done: step {step:,} ({step - first_step:,} steps in '
      f'{console.duration(console.elapsed())}); {final}.', [
          ('metrics', f'{workdir}/metrics.jsonl; tensorboard --logdir '
                      f'{workdir}'),
          ('report', f'python -m smog_jax.report --workdir {workdir}'),
      ])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       config_name: str = ''):
  """Runs (or resumes) pre-training in `workdir`; returns the final state.

  Args:
    config: the run's config.
    workdir: its folder (checkpoints, metrics, logs).
    config_name: how the start-up block names the config.
  """
  mesh = sharding_lib.make_mesh()
  data_lib.pin_folder_listing(config)  # The listing a resume must find.
  data = data_lib.resolve(config)  # Once: every part reads these settings.
  plan = make_plan(config, data, mesh)
  network, tx, step_config, state = build(config, data, mesh, plan)
  show_start(config, config_name, data, plan, mesh, workdir,
             sum(x.size for x in jax.tree.leaves(state.params)))
  manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
  state, step = restore_or_fill(config, data, mesh, plan, manager, network,
                                state)

  step_fn = train.jit_train_step(network, tx, step_config, mesh, state)
  regroup_fn = memory_bank.jit_regroup(
      config.smog.kmeans_iters, plan.num_train_examples, mesh, state)
  writer = metrics_lib.MetricsWriter(workdir, resume_step=step,
                                     tensorboard=True)
  if step == 0:
    writer.write_hparams({
        k: v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in checkpointing.flatten(config.to_dict()).items()})
  batches = data_lib.make_train_iterator(data, mesh, step, plan.total_steps)

  first_step, record = step, None
  progress = console.Progress(plan.total_steps)
  last_log_time, last_log_step = time.time(), step
  finite = PendingCheck(manager.latest_step)
  todo = due(step, plan, config, preempted=False)
  with _Preemption(manager) as preemption, _finishing(manager, writer):
    while not todo.stop:
      if todo.regroup:
        regrouping = step // plan.regroup_every_steps
        state = regroup_fn(state, jnp.asarray(regrouping, jnp.int32))
        console.show('Regrouping %d before step %d.', regrouping, step)
      state, metrics = step_fn(state, next(batches))
      step += 1
      if step == first_step + 1:  # Compiled: the rate counts from here.
        progress.start(step)
      finite.push(step, metrics['nonfinite'])
      preempted = preemption.reached(step)
      todo = due(step, plan, config, preempted)
      if todo.log or todo.checkpoint:
        finite.check()
      if todo.log:
        scalars = jax.device_get(metrics)
        elapsed = max(time.time() - last_log_time, 1e-9)
        scalars['images_per_sec'] = (config.batch_size *
                                     (step - last_log_step) / elapsed)
        scalars['epoch'] = step / plan.steps_per_epoch
        if todo.progress:
          show_progress(step, plan, scalars, progress.eta(step))
        if todo.knn:
          scalars['knn_top1'] = knn_monitor(config, data, state, mesh)
          console.show('kNN top-1 %.2f %% at step %d.',
                       100 * scalars['knn_top1'], step)
        record = {'step': step, **{k: float(v) for k, v in scalars.items()}}
        writer(record)
        # Evaluation time does not count towards images_per_sec.
        last_log_time, last_log_step = time.time(), step
      if todo.checkpoint:
        if checkpointing.save(manager, state, config, force=preempted):
          console.show('Checkpoint of step %s to %s/checkpoints.',
                       f'{step:,}', workdir)
      if preempted:
        logging.warning('Stopped by preemption at step %d.', step)
  if step >= plan.total_steps and record is not None:
    show_summary(step, first_step, record, workdir)
  return state


@contextlib.contextmanager
def _finishing(manager, writer):
  """Finishes in-flight checkpoint writes and metrics, also on an error."""
  try:
    yield
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()
