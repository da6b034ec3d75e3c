"""The recipe configs: the reference values, and that each one compiles.

The dry runs build every program of a recipe from abstract shapes at the
real data set size and global batch on the 8 fake CPU devices, no data and
no memory: the memory bank's odd ImageNet size must shard (padded), and the
train step, bank fill and regrouping must trace and partition.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from smog_jax import dry_run, models, optim, recipes, sharding

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs')

# Training-set sizes (tfds): imagenet2012 'train' 1,281,167; cifar10 50,000.
IMAGENET, CIFAR10 = 1_281_167, 50_000

RECIPES = [('imagenet_resnet50', '', IMAGENET),
           ('imagenet_resnet50', 'w2', IMAGENET),
           ('imagenet_swin_t', None, IMAGENET),
           ('imagenet_vit_s16', '', IMAGENET),
           ('imagenet_vit_s16', 'b16', IMAGENET),
           ('cifar10', '', CIFAR10)]


def _load(name, variant=None):
  return recipes.load_config(os.path.join(CONFIGS, f'{name}.py'), variant)


def test_swin_t_config_is_the_reference_recipe():
  c = _load('imagenet_swin_t')
  assert (c.num_epochs, c.batch_size) == (400, 4096)
  assert (c.data.image_size, c.data.small_image_size) == (224, 96)
  assert (c.data.num_large_crops, c.data.num_small_crops) == (2, 4)
  m = c.model
  assert (m.backbone, m.head_activation, m.projection_dim) == (
      'swin_t', 'gelu', 256)
  assert m.head_gelu_approximate is False  # PyTorch's nn.GELU(): exact.
  assert (m.drop_path_rate, m.dtype) == (0.2, 'bfloat16')
  o = c.optimizer
  assert (o.name, o.b1, o.b2, o.eps) == ('adamw', 0.9, 0.999, 1e-8)
  assert (o.start_lr, o.peak_lr, o.end_lr, o.warmup_epochs) == (
      4e-5, 1e-3, 4e-5, 10)
  assert (o.weight_decay, o.exclude_1d_from_decay, o.grad_clip_norm) == (
      0.05, True, 3.0)
  assert (c.smog.num_heads, c.smog.num_groups, c.smog.temperature) == (
      3, 3000, 0.1)


def test_recipes_compute_dtypes():
  """bfloat16 for the accelerator recipes; float32 for the CPU demo.

  The Fashion-MNIST demo computes in float32 (on an AVX2-only CPU the faster
  dtype at 24 px crops, where it was measured, docs/quality.md); CIFAR-10 and
  the tests' tiny variant stay float32 (the tests compare states at float32
  tolerances).
  """
  for name, variant, _ in RECIPES:
    want = 'float32' if name == 'cifar10' else 'bfloat16'
    assert _load(name, variant).model.dtype == want, name
  assert _load('fashion_mnist').model.dtype == 'float32'
  assert _load('fashion_mnist', 'tiny').model.dtype == 'float32'


@pytest.mark.parametrize('variant,backbone', [
    ('imagenet2012_swin_t', 'swin_t'), ('imagenet2012_vit_s16', 'vit_s16'),
    ('imagenet2012_vit_b16', 'vit_b16')])
def test_transformer_linear_eval_protocol(variant, backbone):
  c = _load('linear_eval', variant)
  assert c.model.backbone == backbone and c.data.dataset == 'imagenet2012'
  assert (c.linear.epochs, c.linear.learning_rate, c.linear.weight_decay) == (
      150, 0.1, 0.0)
  assert c.num_classes == 1000
  models.build_backbone(c.model)


def test_adamw_does_not_decay_1d_params_biases_or_position_tables():
  vit = models.VisionTransformer(patch_size=4, embed_dim=8, depth=1,
                                 num_heads=2, base_image_size=8)
  params = jax.eval_shape(lambda: vit.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False))['params']
  params = jax.tree.map(lambda s: jnp.ones(s.shape), params)
  opt = ml_collections.ConfigDict(dict(
      name='adamw', weight_decay=0.5, b1=0.9, b2=0.999, eps=1e-8,
      exclude_1d_from_decay=True, grad_clip_norm=3.0))
  tx = optim.make_optimizer(opt, optax.constant_schedule(0.1))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  # Zero gradients: AdamW's update is -lr * wd * p on decayed leaves only.
  decayed = {jax.tree_util.keystr(path): float(u.min()) for path, u
             in jax.tree_util.tree_leaves_with_path(updates)}
  for path, value in decayed.items():
    is_table = any(n in path for n in ('position_embedding', 'class_token'))
    is_1d = ("'bias'" in path or "'scale'" in path)
    want = 0.0 if (is_table or is_1d) else -0.1 * 0.5
    np.testing.assert_allclose(value, want, atol=1e-7, err_msg=path)
  assert sum(v != 0 for v in decayed.values()) == 5  # patch, qkv, proj, 2 mlp


def test_swin_relative_position_tables_are_not_decayed():
  from smog_jax.models import swin  # pylint: disable=g-import-not-at-top
  block = swin.SwinBlock(num_heads=2, window=2, shift=1, mlp_ratio=2.0,
                         drop_path=0.0, dtype=jnp.float32)
  params = jax.eval_shape(lambda: block.init(
      jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 8))))['params']
  mask = optim._is_matrix(params)  # pylint: disable=protected-access
  table = mask['WindowAttention_0']['relative_position_table']
  assert table is False
  assert mask['WindowAttention_0']['attention']['qkv']['kernel'] is True


@pytest.mark.parametrize('name,variant,num_examples', RECIPES)
def test_recipe_dry_run_on_8_devices(name, variant, num_examples):
  config = _load(name, variant)
  mesh = sharding.make_mesh()
  assert mesh.size == 8
  lowered = dry_run.lower(config, mesh, num_examples)
  assert set(lowered) == {'train_step', 'fill_bank', 'regroup'}
  # The bank was padded to shard: the next multiple of 3072 (which 8 and
  # every power of two up to 1024 divide: the same rows on those meshes).
  bank = lowered['regroup'].args_info[0][0].memory_bank
  assert bank.shape[1] == -(-num_examples // 3072) * 3072 >= num_examples
  # Regrouping at the real N compiles and keeps the bank split 8 ways.
  compiled = lowered['regroup'].compile()
  bank_sharding = compiled.input_shardings[0][0].memory_bank
  assert bank_sharding.shard_shape(bank.shape)[1] == bank.shape[1] // 8


def test_cifar10_train_step_and_bank_fill_compile():
  lowered = dry_run.lower(_load('cifar10', ''), sharding.make_mesh(), CIFAR10,
                          ('train_step', 'fill_bank'))
  assert set(lowered) == {'train_step', 'fill_bank'}
  for program in lowered.values():
    assert program.compile().memory_analysis().temp_size_in_bytes > 0
