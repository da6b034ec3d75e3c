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
In a Flax NNX model (`model.train()` / `model.eval()` set its BN mode):
  backbone = smog_jax.export.load_nnx_backbone(OUT)  # an nnx.Module
  features = backbone(images)  # [B, backbone.num_features]
Images must be preprocessed as `backbone.json` says (scale to [0, 1], then
subtract `mean` and divide by `std` per channel, channel-last).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import flax.linen as nn
from flax import nnx
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app
from absl import flags
from etils import epath

from smog_jax import checkpointing
from smog_jax import console
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


def abstract_variables(module: nn.Module, preprocessing: dict[str, Any]
                       ) -> dict[str, Any]:
  """Shapes of a backbone's `{'params'[, 'batch_stats']}` for inputs as
  `preprocessing` says, from its config alone (no compute)."""
  size, channels = preprocessing['image_size'], preprocessing['channels']
  variables = jax.eval_shape(
      lambda: module.init(jax.random.key(0),
                          jnp.zeros((1, size, size, channels)), train=False))
  return {k: variables[k] for k in ('params', 'batch_stats')
          if k in variables}


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
    abstract = abstract_variables(module, desc['preprocessing'])
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


class NNXBackbone(nnx.Module):
  """A pre-trained backbone as a Flax NNX module (see `load_nnx_backbone`).

  The linen backbone runs inside `flax.nnx.bridge.ToNNX` (`self.linen`):
  its weights are `nnx.Param`s and its BatchNorm running statistics
  `nnx.BatchStat`s, under their linen names
  (e.g. `self.linen.BasicBlock_0['Conv_0']['kernel']`), so `nnx.Optimizer(...,
  wrt=nnx.Param)` trains the weights and never the statistics.

  Call: `backbone(images, train=None) -> [B, num_features]`, `images`
  preprocessed as `backbone.json` says. `train=None` follows the NNX mode,
  eval when loaded:
    * eval (`model.eval()`, `nnx.view(model, use_running_average=True,
      deterministic=True)`): BatchNorm normalises with the running
      statistics, no drop path; the linen `apply(..., train=False)`.
    * train (`model.train()`): BatchNorm normalises with the batch's
      statistics and updates the running ones (momentum
      `config.model.bn_momentum`), the linen `apply(..., train=True,
      mutable=['batch_stats'])`; ViT / Swin drop path at the pre-training
      `drop_path_rate` if the module was given `rngs`.
  `train=True` or `False` sets both for one call.

  Attributes:
    linen: the `ToNNX`-wrapped linen backbone.
    num_features: F, the size of the features.
    use_running_average: BatchNorm mode, as in `nnx.BatchNorm`.
    deterministic: no drop path, as in `nnx.Dropout`.
  """

  def __init__(self, module: nn.Module, variables: dict[str, Any],
               image_shape: Sequence[int], *, rngs: nnx.Rngs | None = None):
    """Wraps `module` holding `variables`.

    Args:
      module: the linen backbone, `__call__(images, train)`.
      variables: its `{'params', 'batch_stats'}`.
      image_shape: `(height, width, channels)` of an input image; only the
        variables' structure is derived from it (no initialisation runs).
      rngs: its `dropout` stream (or `default`) drives drop path in train
        mode; None: none.
    """
    sample = jnp.zeros((1, *image_shape), jnp.float32)

    def wrapped_with_features():
      linen = nnx.bridge.ToNNX(module).lazy_init(
          sample, train=False, rngs=jax.random.key(0))
      return linen, linen(sample, train=False)

    linen, features = nnx.eval_shape(wrapped_with_features)
    weights = {}
    for collection in variables.values():
      weights.update(traverse_util.flatten_dict(dict(collection)))
    expected = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(linen)))
    if weights.keys() != expected.keys():
      name = lambda keys: sorted('/'.join(map(str, k)) for k in keys)
      raise ValueError(
          f'The variables do not fit {type(module).__name__}: missing '
          f'{name(expected.keys() - weights.keys())}, unexpected '
          f'{name(weights.keys() - expected.keys())}.')
    nnx.update(linen, traverse_util.unflatten_dict(jax.device_put(weights)))
    self.linen = linen
    self.num_features = int(features.shape[-1])
    self.use_running_average = True
    self.deterministic = True
    self.dropout_rngs = (nnx.data(None) if rngs is None
                         else rngs['dropout'].fork())

  def __call__(self, images: jax.Array, train: bool | None = None
               ) -> jax.Array:
    batch_statistics = not self.use_running_average if train is None else train
    drop_path = not self.deterministic if train is None else train
    rngs = None
    if drop_path and self.dropout_rngs is not None:
      rngs = nnx.Rngs(dropout=self.dropout_rngs())
    if batch_statistics:
      return self.linen(images, train=True, rngs=rngs,
                        mutable=['batch_stats'])
    return self.linen(images, train=False, rngs=rngs)

  def set_view(self, use_running_average: bool | None = None,
               deterministic: bool | None = None):
    """For `nnx.view`: sets the BatchNorm and the drop path mode."""
    if use_running_average is not None:
      self.use_running_average = use_running_average
    if deterministic is not None:
      self.deterministic = deterministic


def load_nnx_backbone(path: str, rngs: nnx.Rngs | None = None
                      ) -> NNXBackbone:
  """The online backbone at `path` as a Flax NNX module, in eval mode.

  Embed it in your own `nnx.Module` and fine-tune it with `nnx.Optimizer`:

    class Classifier(nnx.Module):
      def __init__(self, backbone, num_classes, rngs):
        self.backbone = backbone
        self.head = nnx.Linear(backbone.num_features, num_classes, rngs=rngs)
      def __call__(self, images):
        return self.head(self.backbone(images))

  `model.train()` fine-tunes the BatchNorm statistics too, `model.train();
  model.backbone.eval()` keeps them; `nnx.Optimizer(model, tx,
  wrt=nnx.All(nnx.Param, nnx.PathContains('head')))` trains the head alone
  (see docs/evaluation.md).

  Args:
    path: a `smog_jax.main` workdir (its newest checkpoint) or a directory
      written by `export_backbone`.
    rngs: for drop path in train mode (ViT / Swin); None: none.

  Returns:
    The `NNXBackbone`: `backbone(images, train=None)` gives `[B,
    backbone.num_features]` features.
  """
  loaded = load_backbone_info(path)
  size = loaded.preprocessing['image_size']
  return NNXBackbone(loaded.module, loaded.variables,
                     (size, size, loaded.preprocessing['channels']),
                     rngs=rngs)


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
  console.show('Exported the backbone of %s (step %d) to %s.', workdir, step,
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
  startup.start_binary('export', flags.FLAGS.workdir, multi_host=False)
  export_backbone(flags.FLAGS.workdir, flags.FLAGS.output)


if __name__ == '__main__':
  define_flags()
  app.run(main)
