"""The terminal's pieces: which records reach it, durations, the ETA.
(The whole terminal of a run: tests/test_main.py.)"""

import logging
import os

import pytest

from smog_jax import console


def _record(level, pathname='/x/smog_jax/trainer.py', **extra):
  record = logging.LogRecord('absl', level, pathname, 1, 'message', (), None)
  record.__dict__.update(extra)
  return record


ORBAX_FILE = os.path.join(os.sep, 'site-packages', 'orbax', 'checkpoint',
                          'checkpoint_manager.py')


@pytest.mark.parametrize('record, shown', [
    (_record(logging.INFO), False),
    (_record(logging.INFO, smog_console=True), True),
    (_record(logging.INFO, smog_console=False), False),  # Not process 0.
    (_record(logging.WARNING), True),
    (_record(logging.ERROR), True),
    (_record(logging.INFO, pathname=ORBAX_FILE), False),
    (_record(logging.WARNING, pathname=ORBAX_FILE), False),
    (_record(logging.ERROR, pathname=ORBAX_FILE), True),
])
def test_which_records_reach_the_terminal(record, shown):
  assert console._is_terminal_line(record) is shown


def test_terminal_entries_are_time_stamped_and_rows_indented():
  record = _record(logging.WARNING)
  record.msg = 'title\n  row  value'
  text = console._TerminalFormatter().format(record)
  first, second = text.split('\n')
  assert first[8:] == '  WARNING: title' and first[2] == first[5] == ':'
  assert second == ' ' * 10 + '  row  value'


@pytest.mark.parametrize('seconds, text', [
    (0.4, '0 s'), (41, '41 s'), (59.6, '1 min 00 s'), (1351, '22 min 31 s'),
    (3600, '1 h 00 min'), (11_100, '3 h 05 min')])
def test_durations(seconds, text):
  assert console.duration(seconds) == text


def test_the_eta_counts_from_the_start_at_the_rate_since(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(console.time, 'time', lambda: now[0])
  progress = console.Progress(total=1000)
  assert progress.eta(10) == '?' and not progress.started
  progress.start(10)  # After the compiling step: 10 done at t=100.
  assert progress.eta(10) == '?'
  now[0] = 130.0  # 30 s for 60 units: 0.5 s a unit, 930 to go.
  assert progress.eta(70) == '7 min 45 s'
