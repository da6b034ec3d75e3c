"""Export the pre-trained online backbone, and load it into downstream models.

An exported directory holds

  OUT/variables/     the backbone's {'params', 'batch_stats'} (orbax
                     StandardCheckpointer, host arrays);
  OUT/backbone.json  {"format", "model": config.model, "preprocessing":
                     {dataset, image_size, channels, mean, std,
                     eval_crop_fraction}, "step", "source"}.

Usage:
  python -m smog_jax.export --workdir PRETRAIN_WORKDIR --output OUT

In a downstream Flax model:
  backbone, variables = smog_jax.export.load_backbone(OUT)  # or a workdir
  features = backbone.apply(variables, images, train=False)  # [B, F]
Images must be preprocessed as `backbone.json` says (scale to [0, 1], then
subtract `mean` and divide by `std` per channel, channel-last).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app
from absl import flags
from absl import logging
from etils import epath

from smog_jax import checkpointing
from smog_jax import models
from smog_jax import startup
from smog_jax.data import settings as data_settings

EXPORT_FORMAT = 'smog_jax.backbone.v1'
DESCRIPTION_FILE = 'backbone.json'
VARIABLES_SUBDIR = 'variables'


@dataclasses.dataclass(frozen=True)
class LoadedBackbone:
  """A backbone ready to run, and how its inputs must be prepared.

  Attributes:
    module: the Flax backbone; `module.apply(variables, x, train=False)`.
    variables: `{'params', 'batch_stats'}` as host numpy arrays.
    model_config: the pre-training `config.model`.
    preprocessing: dataset, image_size, channels, mean, std,
      eval_crop_fraction of the pre-training data.
    step: the pre-training step the weights come from.
    source: 'workdir' or 'export'.
  """
  module: nn.Module
  variables: dict[str, Any]
  model_config: ml_collections.ConfigDict
  preprocessing: dict[str, Any]
  step: int
  source: str


def is_export_dir(path: str) -> bool:
  return (epath.Path(path) / DESCRIPTION_FILE).is_file()


def preprocessing_from_config(config: ml_collections.ConfigDict
                              ) -> dict[str, Any]:
  """The input preprocessing of a pre-training config (its `data` fields)."""
  resolved = data_settings.resolve(config)
  return dict(dataset=resolved.dataset, image_size=resolved.image_size,
              channels=resolved.channels, mean=list(resolved.mean),
              std=list(resolved.std),
              eval_crop_fraction=resolved.eval_crop_fraction)


def _abstract_variables(module: nn.Module, preprocessing: dict[str, Any]):
  """Shapes of the module's variables, from its config alone (no compute)."""
  size, channels = preprocessing['image_size'], preprocessing['channels']
  return jax.eval_shape(
      lambda: module.init(jax.random.key(0),
                          jnp.zeros((1, size, size, channels)), train=False))


def load_backbone_info(path: str) -> LoadedBackbone:
  """Loads the online backbone from a pre-training workdir or an export.

  Args:
    path: a `smog_jax.main` workdir (its newest checkpoint) or a directory
      written by `export_backbone`.

  Returns:
    The module, its variables and their provenance.
  """
  path = os.fspath(path)
  if is_export_dir(path):
    desc = json.loads((epath.Path(path) / DESCRIPTION_FILE).read_text())
    if desc.get('format') != EXPORT_FORMAT:
      raise ValueError(f'{path!r}: unknown export format {desc.get("format")!r}'
                       f' (expected {EXPORT_FORMAT!r}).')
    model_config = ml_collections.ConfigDict(desc['model'])
    models.upgrade_saved(model_config)
    module = models.build_backbone(model_config)
    abstract = _abstract_variables(module, desc['preprocessing'])
    abstract = {k: abstract[k] for k in ('params', 'batch_stats')
                if k in abstract}
    variables = ocp.StandardCheckpointer().restore(
        checkpointing.absolute(os.path.join(path, VARIABLES_SUBDIR)), abstract)
    return LoadedBackbone(module, dict(variables), model_config,
                          desc['preprocessing'], int(desc['step']), 'export')
  config, variables, step = checkpointing.load_pretrained(path)
  return LoadedBackbone(models.build_backbone(config.model), variables,
                        config.model, preprocessing_from_config(config), step,
                        'workdir')


def load_backbone(path: str) -> tuple[nn.Module, dict[str, Any]]:
  """`(module, variables)` of the online backbone at `path`.

  Use inside your own model:

    class Classifier(nn.Module):
      backbone: nn.Module
      num_classes: int
      @nn.compact
      def __call__(self, x, train=False):
        return nn.Dense(self.num_classes)(self.backbone(x, train=False))

  and put `variables['params']` under the backbone's name in the classifier's
  params (see docs/evaluation.md).
  """
  loaded = load_backbone_info(path)
  return loaded.module, loaded.variables


def write_export(output: str, model_config: ml_collections.ConfigDict,
                 preprocessing: dict[str, Any], variables: dict[str, Any],
                 step: int, source: str) -> str:
  """Writes a backbone export directory (the format `load_backbone` reads).

  Every process must call it (orbax saves collectively); only process 0
  writes `backbone.json`.

  Args:
    output: the directory to write; its `variables/` must not exist.
    model_config: the backbone's `config.model`.
    preprocessing: dataset, image_size, channels, mean, std,
      eval_crop_fraction (`preprocessing_from_config`).
    variables: `{'params', 'batch_stats'}` of the backbone.
    step: the training step the weights come from.
    source: where they come from (a workdir, a converted file).

  Returns:
    `output`, absolute.
  """
  output = checkpointing.absolute(os.fspath(output))
  variables_dir = os.path.join(output, VARIABLES_SUBDIR)
  if epath.Path(variables_dir).exists():
    raise FileExistsError(f'{variables_dir!r} exists; choose a new --output.')
  if jax.process_index() == 0:
    epath.Path(output).mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(variables_dir, jax.tree.map(np.asarray, variables))
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    desc = dict(format=EXPORT_FORMAT, model=model_config.to_dict(),
                preprocessing=preprocessing, step=step, source=source)
    (epath.Path(output) / DESCRIPTION_FILE).write_text(
        json.dumps(desc, indent=2, sort_keys=True))
  return output


def export_backbone(workdir: str, output: str) -> str:
  """Writes the online backbone of `workdir`'s newest checkpoint to `output`.

  Every process must call it (orbax saves collectively).

  Returns:
    `output`.
  """
  config, variables, step = checkpointing.load_pretrained(workdir)
  output = write_export(output, config.model,
                        preprocessing_from_config(config), variables, step,
                        checkpointing.absolute(os.fspath(workdir)))
  logging.info('Exported the backbone of %s (step %d) to %s', workdir, step,
               output)
  return output


def define_flags() -> None:
  """Registers the binary's flags (not at import: the library stays importable
  next to other binaries that define --workdir)."""
  flags.DEFINE_string('workdir', None, 'Pre-training workdir to export from.')
  flags.DEFINE_string('output', None, 'Directory to write.')
  flags.mark_flags_as_required(['workdir', 'output'])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  startup.start_process(multi_host=False)
  export_backbone(flags.FLAGS.workdir, flags.FLAGS.output)


if __name__ == '__main__':
  define_flags()
  app.run(main)
