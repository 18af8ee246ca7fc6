"""One run per output folder: the lock in --out/.lock (tfp_glow.cli.run_lock)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tfp_glow import cli
from tfp_glow.cli import run_lock


def _lock(out, pid, host=None):
  (out / run_lock.LOCK_NAME).write_text(json.dumps(dict(pid=pid, host=host or socket.gethostname())))


@pytest.fixture
def other_process():
  """A live process that is not this one (its pid holds a lock in the tests)."""
  proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  yield proc
  proc.kill()
  proc.wait()


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def test_a_live_lock_stops_a_second_run_naming_the_process(tmp_path, other_process):
  _lock(tmp_path, other_process.pid)
  with pytest.raises(run_lock.RunLocked, match=f'in use by process {other_process.pid} on this host'):
    run_lock.acquire(str(tmp_path))
  assert json.loads((tmp_path / '.lock').read_text())['pid'] == other_process.pid  # untouched


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_note(tmp_path):
  dead = _dead_pid()
  _lock(tmp_path, dead)
  note = run_lock.acquire(str(tmp_path))
  assert note and f'process {dead}' in note and 'no longer running' in note
  holder = json.loads((tmp_path / '.lock').read_text())
  assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
  run_lock.release(str(tmp_path))
  assert not (tmp_path / '.lock').exists()


def test_a_lock_from_another_host_is_respected(tmp_path):
  _lock(tmp_path, 1, host='elsewhere.example')
  with pytest.raises(run_lock.RunLocked, match='host elsewhere.example.*delete'):
    run_lock.acquire(str(tmp_path))


def test_held_releases_and_non_chief_workers_share_the_chiefs_lock(tmp_path, other_process):
  with run_lock.held(str(tmp_path)):
    assert json.loads((tmp_path / '.lock').read_text())['pid'] == os.getpid()
    with pytest.raises(run_lock.RunLocked):
      run_lock.acquire(str(tmp_path))  # the same process twice: refused too
  assert not (tmp_path / '.lock').exists()
  _lock(tmp_path, other_process.pid)  # the chief's lock
  with run_lock.held(str(tmp_path), enabled=False) as note:  # a non-chief worker takes none
    assert note is None
  assert json.loads((tmp_path / '.lock').read_text())['pid'] == other_process.pid


def test_train_on_a_locked_out_exits_2_before_any_work(tmp_path, other_process, capsys):
  out = tmp_path / 'run'
  out.mkdir()
  _lock(out, other_process.pid)
  assert cli.main(['train', '--epochs', '1', '--out', str(out)]) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and f'process {other_process.pid}' in err, err
  assert sorted(p.name for p in out.iterdir()) == ['.lock']  # nothing loaded, built or written
