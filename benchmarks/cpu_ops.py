"""XLA:CPU against PyTorch's oneDNN, operation by operation, on one network.

The train step's big operations at the shapes the config's ResNet runs them
(one pipeline's large crops, `batch_size x num_large_crops` images), each
jitted alone and timed alternately with the same operation in PyTorch eager:
  * every convolution: forward, gradient to the input (`dx`), gradient to
    the kernel (`dw`); PyTorch: `aten.convolution_backward` with one output;
  * BatchNorm (training statistics) + ReLU, forward and backward, on every
    convolution's output shape (Flax's `nn.BatchNorm`, as the ResNet runs it);
  * the projector, Linear - BN - ReLU - Linear - BN, forward and backward
    (the project's `MLPHead`).
`--dw_as_matmuls` adds two ways to get the kernel gradient without XLA's
convolution: a `[N*Ho*Wo, C]^T [N*Ho*Wo, F]` matmul per kernel tap on
shifted inputs, and the im2col patches with one matmul (their PyTorch column
is oneDNN's kernel gradient again).
Milliseconds are each variant's best of `--rounds`. Needs PyTorch (not a
project requirement): `pip install torch --index-url
https://download.pytorch.org/whl/cpu`. The process is set up as
`smog_jax.main` sets itself up (`startup.start_process`); PyTorch gets the
same number of threads as XLA:CPU's pool (the usable cores) and channels_last.

  python benchmarks/cpu_ops.py --config configs/fashion_mnist.py
  python benchmarks/cpu_ops.py --config configs/fashion_mnist.py --dw_as_matmuls
"""

from __future__ import annotations

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.extend import core as jax_core
from ml_collections import config_flags

import machine
from smog_jax import models, startup
from smog_jax.models.heads import MLPHead

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config.')
_ITERS = flags.DEFINE_integer('iters', 20, 'Calls per timed round.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternating rounds; best kept.')
_PAUSE_SECONDS = 0.3
_DW_AS_MATMULS = flags.DEFINE_bool(
    'dw_as_matmuls', False, 'Also time the kernel gradient computed as '
    'matmuls in JAX: one a kernel tap, or im2col patches and one.')


def _convolutions(jaxpr) -> list:
  """(lhs shape, rhs shape, strides, padding) of every convolution."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      found.append((tuple(eqn.invars[0].aval.shape),
                    tuple(eqn.invars[1].aval.shape),
                    tuple(eqn.params['window_strides']),
                    tuple(tuple(p) for p in eqn.params['padding'])))
    for sub in jax_core.jaxprs_in_params(eqn.params):
      found += _convolutions(sub)
  return found


def _mean_ms(fn, iters: int) -> float:
  """Milliseconds a call of `fn` (which waits for its result) takes.

  The other framework's idle threads spin for a while after its last call
  (XLA's pool, PyTorch's OpenMP team) and would take the cores: a pause and
  two untimed calls first.
  """
  time.sleep(_PAUSE_SECONDS)
  fn()
  fn()
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return 1e3 * (time.perf_counter() - start) / iters


def _jax_conv(strides, padding):
  return lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _conv_ops(lhs, rhs, strides, padding, torch):
  """{op: (jax thunk, torch thunk)} of one convolution."""
  rng = np.random.default_rng(0)
  x, w = (rng.standard_normal(s).astype(np.float32) for s in (lhs, rhs))
  conv = _jax_conv(strides, padding)
  y = conv(x, w)
  g = rng.standard_normal(y.shape).astype(np.float32)
  fwd = jax.jit(conv)
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda a: conv(a, w), x)[1](g)[0])
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda b: conv(x, b), w)[1](g)[0])
  x, w, g = (jax.device_put(a) for a in (x, w, g))
  wait = jax.block_until_ready
  tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)
  tw = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1)
  tg = torch.from_numpy(np.array(g)).permute(0, 3, 1, 2)
  cl = torch.channels_last
  tx, tw, tg = (t.contiguous(memory_format=cl) for t in (tx, tw, tg))
  tpad = [p[0] for p in padding]
  if any(p[0] != p[1] for p in padding):
    raise ValueError(f'Asymmetric padding {padding}: not a PyTorch conv.')

  def torch_grad(mask):
    return lambda: torch.ops.aten.convolution_backward(
        tg, tx, tw, None, list(strides), tpad, [1, 1], False, [0, 0], 1,
        mask)

  def torch_fwd():
    with torch.no_grad():
      torch.nn.functional.conv2d(tx, tw, None, strides, tpad)

  ops = {'conv forward': (lambda: wait(fwd(x, w)), torch_fwd),
          'conv dx': (lambda: wait(dx(x, w, g)),
                      torch_grad([True, False, False])),
          'conv dw': (lambda: wait(dw(x, w, g)),
                      torch_grad([False, True, False]))}
  if _DW_AS_MATMULS.value:
    taps = jax.jit(functools.partial(_dw_by_taps, rhs[:2], strides, padding))
    patches = jax.jit(functools.partial(_dw_by_patches, rhs[:2], strides,
                                        padding))
    np.testing.assert_allclose(taps(x, g), dw(x, w, g), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(patches(x, g), dw(x, w, g), rtol=1e-3,
                               atol=1e-3)
    ops['conv dw, tap matmuls'] = (lambda: wait(taps(x, g)),
                                   ops['conv dw'][1])
    ops['conv dw, patches'] = (lambda: wait(patches(x, g)), ops['conv dw'][1])
  return ops


def _shifted_inputs(x, kernel_hw, strides, padding) -> list:
  """The input each kernel tap reads, `[N, Ho, Wo, C]`, tap by tap."""
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out_hw = [(n + sum(p) - k) // s + 1 for n, p, k, s in
            zip(x.shape[1:3], padding, kernel_hw, strides)]
  return [padded[:, ky:ky + strides[0] * (out_hw[0] - 1) + 1:strides[0],
                 kx:kx + strides[1] * (out_hw[1] - 1) + 1:strides[1]]
          for ky in range(kernel_hw[0]) for kx in range(kernel_hw[1])]


def _dw_by_taps(kernel_hw, strides, padding, x, g):
  """The kernel gradient as one `[N*Ho*Wo, C]^T [N*Ho*Wo, F]` matmul a tap."""
  rows = g.reshape(-1, g.shape[-1])
  grads = [jax.lax.dot_general(t.reshape(rows.shape[0], -1), rows,
                               (((0,), (0,)), ((), ())))
           for t in _shifted_inputs(x, kernel_hw, strides, padding)]
  return jnp.stack(grads).reshape(*kernel_hw, x.shape[-1], g.shape[-1])


def _dw_by_patches(kernel_hw, strides, padding, x, g):
  """The kernel gradient as one matmul of the im2col patches with `g`."""
  patches = jnp.concatenate(_shifted_inputs(x, kernel_hw, strides, padding),
                            axis=-1)
  rows = g.reshape(-1, g.shape[-1])
  grad = jax.lax.dot_general(patches.reshape(rows.shape[0], -1), rows,
                             (((0,), (0,)), ((), ())))
  return grad.reshape(*kernel_hw, x.shape[-1], g.shape[-1])


class _NormRelu(nn.Module):
  """BatchNorm in training mode + ReLU, as the ResNet runs them."""

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.BatchNorm(use_running_average=False, momentum=0.9,
                                epsilon=1e-5)(x))


def _module_ops(module, x_shape, torch_module, torch):
  """{op: (jax thunk, torch thunk)}: forward + backward of a Flax module
  and the same PyTorch module (train mode, batch statistics)."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal(x_shape).astype(np.float32)
  variables = module.init(jax.random.PRNGKey(0), x)
  out, _ = module.apply(variables, x, mutable=['batch_stats'])
  g = rng.standard_normal(out.shape).astype(np.float32)

  def loss(params, x):
    y, _ = module.apply({**variables, 'params': params}, x,
                        mutable=['batch_stats'])
    return jnp.vdot(y, g)

  step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  params, x = jax.device_put(variables['params']), jax.device_put(x)
  if len(x_shape) == 4:
    tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    tg = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
  else:
    tx, tg = torch.from_numpy(np.array(x)), torch.from_numpy(g)
  tx.requires_grad_(True)
  torch_params = [tx, *torch_module.parameters()]

  def torch_step():
    torch.autograd.grad(torch_module(tx), torch_params, tg)

  return lambda: jax.block_until_ready(step(params, x)), torch_step


def _torch_head(torch, features, hidden, output):
  nn_ = torch.nn
  return nn_.Sequential(nn_.Linear(features, hidden), nn_.BatchNorm1d(hidden),
                        nn_.ReLU(), nn_.Linear(hidden, output),
                        nn_.BatchNorm1d(output, affine=False))


def main(argv):
  del argv
  startup.start_process(multi_host=False)
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SystemExit('benchmarks/cpu_ops.py needs PyTorch: pip install torch '
                     '--index-url https://download.pytorch.org/whl/cpu') from None
  torch.set_num_threads(machine.usable_cores())
  config = _CONFIG.value
  d, m = config.data, config.model
  images = (config.batch_size * d.num_large_crops, d.large_crop_size,
            d.large_crop_size, d.channels)
  network = models.build_network(m)
  variables = jax.eval_shape(
      lambda: network.init(jax.random.PRNGKey(0), jnp.zeros(images)))
  jaxpr = jax.make_jaxpr(lambda v, x: network.apply(
      v, x, train=True, method=network.features, mutable=['batch_stats']))(
          variables, jnp.zeros(images))
  ops = []
  for lhs, rhs, strides, padding in _convolutions(jaxpr.jaxpr):
    shape = (f'{lhs[1]}x{lhs[2]}x{lhs[3]} -> {rhs[3]}, {rhs[0]}x{rhs[1]}'
             f'/{strides[0]}')
    ops += [(op, shape, pair) for op, pair in
            _conv_ops(lhs, rhs, strides, padding, torch).items()]
    out = jax.eval_shape(_jax_conv(strides, padding),
                         jax.ShapeDtypeStruct(lhs, jnp.float32),
                         jax.ShapeDtypeStruct(rhs, jnp.float32)).shape
    norm = torch.nn.Sequential(torch.nn.BatchNorm2d(out[-1]),
                               torch.nn.ReLU()).to(
                                   memory_format=torch.channels_last)
    ops.append(('BN + ReLU fwd+bwd', f'{out[1]}x{out[2]}x{out[3]}',
                _module_ops(_NormRelu(), out, norm, torch)))
  head = MLPHead(m.projector_hidden_dim, m.projection_dim, output_norm=True)
  num_features = network.backbone.num_features
  ops.append(('projector fwd+bwd',
              f'{num_features} -> {m.projector_hidden_dim} -> '
              f'{m.projection_dim}',
              _module_ops(head, (images[0], num_features),
                          _torch_head(torch, num_features,
                                      m.projector_hidden_dim,
                                      m.projection_dim), torch)))
  for _, _, (jax_fn, torch_fn) in ops:  # Compile and warm up.
    for _ in range(3):
      jax_fn()
      torch_fn()
  best = [[float('inf')] * 2 for _ in ops]
  for _ in range(_ROUNDS.value):
    for row, (_, _, fns) in zip(best, ops):
      for i, fn in enumerate(fns):
        row[i] = min(row[i], _mean_ms(fn, _ITERS.value))
  print(f'{images[0]} images of {images[1]}x{images[2]}x{images[3]}; '
        f'jax {jax.__version__}, torch {torch.__version__} '
        f'({torch.get_num_threads()} threads); {machine.cpu_description()}')
  print(f'{"operation":20s} {"shape":30s} {"XLA ms":>8s} {"oneDNN ms":>9s} '
        f'{"XLA/oneDNN":>10s}')
  for (op, shape, _), (t_jax, t_torch) in zip(ops, best):
    print(f'{op:20s} {shape:30s} {t_jax:8.2f} {t_torch:9.2f} '
          f'{t_jax / t_torch:10.2f}')
  for kind in sorted({op for op, _, _ in ops}):
    rows = [b for (op, _, _), b in zip(ops, best) if op == kind]
    t_jax, t_torch = (sum(r[i] for r in rows) for i in (0, 1))
    print(f'{"sum " + kind:51s} {t_jax:8.2f} {t_torch:9.2f} '
          f'{t_jax / t_torch:10.2f}')


if __name__ == '__main__':
  app.run(main)
