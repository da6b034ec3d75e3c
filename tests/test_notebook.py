"""notebooks/smog_colab.ipynb runs headlessly, end to end, on `:tiny` settings.

As papermill does, a cell after the one tagged `parameters` overrides them:
no install, the repository checkout, the committed 64-image Fashion-MNIST
fixture, 8 pre-training steps.
"""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'notebooks', 'smog_colab.ipynb')
FIXTURE = os.path.join(REPO, 'tests', 'data', 'fashion_mnist')
TOTAL_STEPS = 8
RESULT_MARKER = 'NOTEBOOK_RESULT '


def _parameters(tmp_path):
  overrides = {'data.data_dir': str(tmp_path / 'tfds'),
               'data.fashion_mnist_idx_dir': FIXTURE,
               'data.download': False,
               # Both configs on the fixture's 64 + 64 images.
               'data.train_slice': 64, 'data.eval_split': 'test'}
  return '\n'.join([
      'INSTALL = False',
      f'REPO_DIR = {REPO!r}',
      "CONFIG = 'configs/fashion_mnist.py:tiny'",
      f'TOTAL_STEPS = {TOTAL_STEPS}',
      f"WORKDIR = {str(tmp_path / 'run')!r}",
      "LINEAR_EVAL_CONFIG = 'configs/linear_eval.py:fashion_mnist_tiny'",
      f'OVERRIDES = {overrides!r}',
      'CLASSIFIER_EXAMPLES = 64',
      'CLASSIFIER_STEPS = 20',
  ])


@pytest.fixture(scope='module')
def executed(tmp_path_factory, monkeypatch_module):
  tmp_path = tmp_path_factory.mktemp('notebook')
  nb = nbformat.read(NOTEBOOK, as_version=4)
  (position,) = [i for i, c in enumerate(nb.cells)
                 if 'parameters' in c.metadata.get('tags', [])]
  nb.cells.insert(position + 1,
                  nbformat.v4.new_code_cell(_parameters(tmp_path)))
  nb.cells.append(nbformat.v4.new_code_cell(
      f'print({RESULT_MARKER!r} + json.dumps(dict(records=records, '
      'results=results, losses=losses, classifier_top1=classifier_top1, '
      'step=info.step, cwd=os.getcwd())))'))
  # One CPU device in the kernel, as on Colab; the session's XLA flags and
  # compilation cache kept.
  monkeypatch_module.setenv(
      'XLA_FLAGS', f'{os.environ.get("XLA_FLAGS", "")} '
      '--xla_force_host_platform_device_count=1')
  NotebookClient(nb, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': str(tmp_path)}}).execute()
  return nb


@pytest.fixture(scope='module')
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as mp:
    yield mp


def _result(nb):
  for output in nb.cells[-1].outputs:
    for line in output.get('text', '').splitlines():
      if line.startswith(RESULT_MARKER):
        return json.loads(line[len(RESULT_MARKER):])
  raise AssertionError('the notebook printed no result')


def test_pretrains_evaluates_and_reuses_the_backbone(executed):
  result = _result(executed)
  assert result['cwd'] == REPO
  assert [r['step'] for r in result['records']] == list(
      range(1, TOTAL_STEPS + 1))
  assert result['step'] == TOTAL_STEPS  # the exported backbone's step
  for mode in ('fast', 'knn'):
    assert 0.0 <= result['results'][mode]['top1'] <= 100.0
    assert result['results'][mode]['pretrained_step'] == TOTAL_STEPS
  # The head learns on its 64 training images.
  losses = result['losses']
  assert len(losses) == 20 and losses[-1] < losses[0]
  assert 0.0 <= result['classifier_top1'] <= 100.0


def test_shows_the_four_report_figures(executed):
  pngs = [o for c in executed.cells if c.cell_type == 'code'
          for o in c.outputs if 'image/png' in o.get('data', {})]
  assert len(pngs) == 4
