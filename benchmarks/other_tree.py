"""Runs a benchmark of this checkout on the `smog_jax` of another tree.

To time an older commit with today's scripts (the same measurement on both
sides of a change):

  git worktree add /tmp/old COMMIT
  python3 benchmarks/other_tree.py /tmp/old benchmarks/train_step.py \
      --config /tmp/old/configs/fashion_mnist.py --profile

`PYTHONPATH=TREE` does not do it: the editable install of `setup.sh` finds
`smog_jax` through its own import hook, ahead of `sys.path`.
"""

import os
import runpy
import sys


def main() -> None:
  if len(sys.argv) < 3:
    raise SystemExit('usage: python3 benchmarks/other_tree.py TREE SCRIPT '
                     '[ARGS...]')
  tree, script = (os.path.abspath(p) for p in sys.argv[1:3])
  # The editable install's finder would import this checkout's smog_jax.
  sys.meta_path = [f for f in sys.meta_path
                   if 'editable' not in repr(f).lower()]
  sys.path[:0] = [tree, os.path.dirname(script)]
  import smog_jax  # pylint: disable=g-import-not-at-top
  if not smog_jax.__file__.startswith(tree + os.sep):
    raise SystemExit(f'smog_jax came from {smog_jax.__file__}, not {tree}.')
  print(f'smog_jax of {tree}', flush=True)
  sys.argv = [script] + sys.argv[3:]
  runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
  main()
