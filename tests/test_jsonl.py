"""The metrics.jsonl writer on a non-local filesystem (TensorFlow's ram://)."""

import numpy as np

from smog_jax import jsonl


def test_appends_and_drops_records_past_the_resume_step():
  path = 'ram://bucket/run/metrics.jsonl'
  writer = jsonl.JsonlWriter(path)
  for step in range(1, 6):
    writer.write({'step': step, 'loss': np.float32(step / 2)})
  assert [r['step'] for r in writer.read()] == [1, 2, 3, 4, 5]
  assert writer.read()[2]['loss'] == 1.5  # numpy scalars become numbers
  # A run resumed from the checkpoint of step 3 logs steps 4 and 5 again.
  resumed = jsonl.JsonlWriter(path, resume_step=3)
  assert [r['step'] for r in resumed.read()] == [1, 2, 3]
  resumed.write({'step': 4, 'loss': 9.0})
  assert [(r['step'], r['loss']) for r in resumed.read()][-2:] == [
      (3, 1.5), (4, 9.0)]
  # Without a resume step (the evaluation log) nothing is dropped.
  assert len(jsonl.JsonlWriter(path).read()) == 4
