"""The pre-training loop's bookkeeping: which periodic actions are due at
which step (`trainer.due`), and the one-step-late finiteness check
(`trainer.PendingCheck`). Expectations are written out by hand."""

import jax.numpy as jnp
import ml_collections
import pytest

from smog_jax import trainer

FIELDS = ('regroup', 'log', 'knn', 'checkpoint', 'stop')


def _plan(total_steps=8, regroups_per_epoch=1):
  return trainer.Plan(num_train_examples=64, steps_per_epoch=4,
                      total_steps=total_steps,
                      regroups_per_epoch=regroups_per_epoch)


def _config(log_every=1, knn_every=0, checkpoint_every=2, progress_every=100):
  return ml_collections.ConfigDict({'log_every_steps': log_every,
                                    'knn_every_epochs': knn_every,
                                    'checkpoint_every_steps': checkpoint_every,
                                    'progress_every_steps': progress_every})


def _steps(plan, config, start=0, preempt_at=None):
  """For each field of `Due`, the steps at which it holds, from `start` until
  `stop`; `regroup` lists the steps it runs before, the rest the steps done."""
  at = {name: [] for name in FIELDS}
  step = start
  todo = trainer.due(step, plan, config, preempted=False)
  while not todo.stop:
    if todo.regroup:
      at['regroup'].append(step)
    step += 1
    todo = trainer.due(step, plan, config, preempted=step == preempt_at)
    for name in FIELDS[1:]:
      if getattr(todo, name):
        at[name].append(step)
  return at


def test_every_step_logged_checkpoint_every_two_knn_only_at_the_end():
  assert _steps(_plan(), _config()) == {
      'regroup': [0, 4], 'log': [1, 2, 3, 4, 5, 6, 7, 8], 'knn': [8],
      'checkpoint': [2, 4, 6, 8], 'stop': [8]}


def test_progress_lines_every_n_steps_and_at_the_end_on_logged_steps():
  plan, config = _plan(total_steps=10), _config(log_every=3, progress_every=4)
  todo = {step: trainer.due(step, plan, config, preempted=False)
          for step in range(1, 11)}
  assert [step for step, t in todo.items() if t.progress] == [4, 8, 10]
  assert [step for step, t in todo.items() if t.log] == [3, 4, 6, 8, 9, 10]


def test_knn_every_epoch_is_also_logged():
  assert _steps(_plan(), _config(log_every=3, knn_every=1)) == {
      'regroup': [0, 4], 'log': [3, 4, 6, 8], 'knn': [4, 8],
      'checkpoint': [2, 4, 6, 8], 'stop': [8]}


def test_knn_never_and_the_last_step_always_logged():
  assert _steps(_plan(), _config(log_every=3, knn_every=-1)) == {
      'regroup': [0, 4], 'log': [3, 6, 8], 'knn': [],
      'checkpoint': [2, 4, 6, 8], 'stop': [8]}


def test_knn_every_second_epoch_and_at_an_end_within_an_epoch():
  assert _steps(_plan(total_steps=14), _config(log_every=5, knn_every=2,
                                               checkpoint_every=6)) == {
      'regroup': [0, 4, 8, 12], 'log': [5, 8, 10, 14], 'knn': [8, 14],
      'checkpoint': [6, 12, 14], 'stop': [14]}


def test_two_regroups_an_epoch_none_after_the_last_step():
  assert _steps(_plan(regroups_per_epoch=2), _config())['regroup'] == [
      0, 2, 4, 6]


def test_preempted_at_step_5_checkpoints_and_stops_there():
  assert _steps(_plan(regroups_per_epoch=2),
                _config(log_every=3, knn_every=1), preempt_at=5) == {
      'regroup': [0, 2, 4], 'log': [3, 4], 'knn': [4],
      'checkpoint': [2, 4, 5], 'stop': [5]}


def test_a_resumed_run_regroups_first_at_an_epoch_start_only():
  assert _steps(_plan(), _config(), start=4) == {
      'regroup': [4], 'log': [5, 6, 7, 8], 'knn': [8],
      'checkpoint': [6, 8], 'stop': [8]}
  assert _steps(_plan(), _config(), start=6)['regroup'] == []
  assert _steps(_plan(regroups_per_epoch=2), _config(),
                start=6)['regroup'] == [6]


def test_a_run_at_or_past_its_end_runs_nothing():
  for start in (8, 10):
    assert trainer.due(start, _plan(), _config(), preempted=False).stop
    assert _steps(_plan(), _config(), start=start) == {
        name: [] for name in FIELDS}


def test_a_non_finite_step_raises_on_check_naming_it_and_the_kept_one():
  check = trainer.PendingCheck(lambda: 1)
  check.check()  # Nothing held yet.
  check.push(1, jnp.float32(0))
  check.push(2, jnp.float32(1))  # Reads step 1's flag only: finite.
  with pytest.raises(trainer.NonFiniteError,
                     match=r'^Step 2 produced a non-finite .*step 1, is kept'):
    check.check()


def test_a_non_finite_step_raises_once_the_next_is_pushed():
  check = trainer.PendingCheck(lambda: None)
  check.push(1, jnp.float32(1))
  with pytest.raises(trainer.NonFiniteError,
                     match=r'^Step 1 .*no checkpoint was written yet'):
    check.push(2, jnp.float32(0))


class _Flag:
  """A finite step's flag that counts how often it is read."""

  def __init__(self):
    self.reads = 0

  def __float__(self):
    self.reads += 1
    return 0.0


def test_each_flag_is_read_once():
  check = trainer.PendingCheck(lambda: None)
  first, second = _Flag(), _Flag()
  check.push(1, first)
  check.check()
  check.push(2, second)
  check.check()
  check.check()
  assert (first.reads, second.reads) == (1, 1)
