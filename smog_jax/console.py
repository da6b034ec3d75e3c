"""What a person sees in the terminal, and where the full log goes.

The terminal of a binary shows a start-up block, progress lines, one line
per event, warnings and a closing summary (`show`, `block`, `Progress`).
Everything logged, those lines included, goes to the full log file: absl's
file (`--log_dir`, by default WORKDIR/logs for a local workdir, absl's
temporary folder for a remote one), where orbax's, TensorFlow's and JAX's
INFO lines go too. `--alsologtostderr` (or `--logtostderr`) puts the full
log on the terminal instead, as absl does.
"""

from __future__ import annotations

import importlib
import logging as std_logging
import os
import sys
import time

import jax
from absl import flags
from absl import logging
from ml_collections import config_flags

# Marks a log record as a terminal line (`logging.info(..., extra=...)`).
_CONSOLE = 'smog_console'
_INDENT = ' ' * 10  # Under the 'HH:MM:SS  ' of a line's first row.
_ORBAX = f'{os.sep}orbax{os.sep}'
# What the binaries that read data import quietly (`setup`).
TENSORFLOW = ('tensorflow', 'tensorflow_datasets')
_started = time.time()
_log_path: str | None = None


class _TerminalFormatter(std_logging.Formatter):
  """'HH:MM:SS  message', the level named when above INFO."""

  def format(self, record: std_logging.LogRecord) -> str:
    text = record.getMessage()
    if record.levelno > std_logging.INFO:
      text = f'{record.levelname}: {text}'
    stamp = time.strftime('%H:%M:%S', time.localtime(record.created))
    return f'{stamp}  ' + text.replace('\n', '\n' + _INDENT)


def _is_terminal_line(record: std_logging.LogRecord) -> bool:
  """Terminal lines, warnings; orbax's warnings only from ERROR up.

  Orbax warns about how this project opens checkpoints (read-only, one
  metadata file per checkpoint rather than per item); its errors raise.
  """
  if getattr(record, _CONSOLE, False):
    return True
  threshold = (std_logging.ERROR if _ORBAX in record.pathname
               else std_logging.WARNING)
  return record.levelno >= threshold


def _log_dir(workdir: str | None) -> str | None:
  """--log_dir if given, else WORKDIR/logs if local, absl's temporary folder
  if remote; None (no log file) without a workdir."""
  if flags.FLAGS['log_dir'].present:
    return flags.FLAGS.log_dir
  if not workdir:
    return None
  return '' if '://' in workdir else os.path.join(workdir, 'logs')


def _import_quietly(modules: tuple[str, ...], stream) -> None:
  """Imports `modules` with file descriptor 2 pointing at `stream`.

  TensorFlow's C++ libraries print INFO lines to the process's standard
  error as they load, before any logging is set up; this sends them to the
  log file.
  """
  sys.stderr.flush()
  stream.flush()
  saved = os.dup(2)
  os.dup2(stream.fileno(), 2)
  try:
    for module in modules:
      importlib.import_module(module)
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def setup(program: str, workdir: str | None,
          quiet_imports: tuple[str, ...] = ()) -> str | None:
  """Sends the full log to its file and terminal lines to the terminal.

  Call first in a binary's `main` (flags parsed, before JAX starts).

  Args:
    program: the binary's name (the log file's prefix).
    workdir: its folder (the log goes to WORKDIR/logs when local); None:
      no log file unless --log_dir is given.
    quiet_imports: modules whose import prints to the process's standard
      error (TensorFlow's), imported here with that output sent to the log.

  Returns:
    The log file's path, or None when there is none (the full log on the
    terminal, or no workdir).
  """
  global _started, _log_path
  _started = time.time()
  # TensorFlow's own INFO lines (its CPU features) are not a user's concern.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  f = flags.FLAGS
  if f.logtostderr or f.alsologtostderr:
    return None
  log_dir = _log_dir(workdir)
  handler = logging.get_absl_handler()
  if log_dir is None:
    handler.python_handler.stream = open(os.devnull, 'w', encoding='utf-8')
  else:
    if log_dir:
      os.makedirs(log_dir, exist_ok=True)
    handler.use_absl_log_file(program, log_dir)
  terminal = std_logging.StreamHandler(sys.stderr)
  terminal.setFormatter(_TerminalFormatter())
  terminal.addFilter(_is_terminal_line)
  std_logging.getLogger().addHandler(terminal)
  stream = handler.python_handler.stream
  _import_quietly(quiet_imports, stream)
  _log_path = None if log_dir is None else stream.name
  return _log_path


def log_path() -> str | None:
  """The full log's file, as `setup` returned it."""
  return _log_path


def config_name(flag) -> str:
  """'FILE[:VARIANT] --config.a=1 ...' of a `config_flags` flag."""
  overrides = config_flags.get_override_values(flag)
  return ' '.join([config_flags.get_config_filename(flag)] + [
      f'--config.{k}={v}' for k, v in overrides.items()])


def show(message: str, *args) -> None:
  """Logs an INFO line that process 0 also shows on the terminal."""
  lead = jax.process_index() == 0
  logging.info(message, *args, extra={_CONSOLE: lead})


def block(title: str, rows: list[tuple[str, str]]) -> None:
  """Shows a title and aligned `(name, value)` rows as one entry."""
  width = max(len(name) for name, _ in rows)
  lines = [title] + [f'  {name:<{width}}  {value}' for name, value in rows]
  show('%s', '\n'.join(lines))


def describe_devices(count: int) -> str:
  """'8 x CPU, 1 process', '64 x TPU v4, 16 processes'."""
  device = jax.devices()[0]
  kind = 'CPU' if device.platform == 'cpu' else device.device_kind
  processes = jax.process_count()
  return (f'{count} x {kind}, {processes} process'
          f'{"es" if processes > 1 else ""}')


def duration(seconds: float) -> str:
  """'41 s', '22 min 31 s', '3 h 05 min'."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds} s'
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f'{minutes} min {seconds:02d} s'
  hours, minutes = divmod(minutes, 60)
  return f'{hours} h {minutes:02d} min'


def elapsed() -> float:
  """Seconds since `setup`."""
  return time.time() - _started


class Progress:
  """The ETA of a loop at its rate since `start` (after the compiling unit)."""

  def __init__(self, total: int):
    self.total = total
    self._origin: tuple[int, float] | None = None

  @property
  def started(self) -> bool:
    return self._origin is not None

  def start(self, done: int) -> None:
    """Counts the rate from now, with `done` units done."""
    self._origin = (done, time.time())

  def eta(self, done: int) -> str:
    """The time the remaining units take at the rate so far ('?' before)."""
    if self._origin is None or done <= self._origin[0]:
      return '?'
    first_done, since = self._origin
    rate = (time.time() - since) / (done - first_done)
    return duration(rate * (self.total - done))
