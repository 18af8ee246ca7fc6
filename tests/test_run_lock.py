"""One run per output folder: the lock in --out/.lock (tfp_glow.runs.lock: fcntl.flock)."""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from tfp_glow import cli
from tfp_glow.runs import lock


def _lock_file(out, pid, host=None):
  """A lock file as a killed run leaves it: its pid and host written, no process holding the flock."""
  (out / lock.LOCK_NAME).write_text(json.dumps(dict(pid=pid, host=host or socket.gethostname())))


# lock.py alone (standard library only), without importing tfp_glow and TensorFlow: starts in milliseconds.
_IMPORT_LOCK = (
  'import importlib.util as u, sys, time\n'
  f's = u.spec_from_file_location("lock", {lock.__file__!r}); lock = u.module_from_spec(s)\n'
  's.loader.exec_module(lock)\n'
)
# A live run in another process: takes the lock of argv[1], says so, then waits to be killed.
_HOLDER = _IMPORT_LOCK + 'lock.RunLock(sys.argv[1]).acquire(); print("held", flush=True); time.sleep(120)'


@pytest.fixture
def holder(tmp_path):
  """A live process holding the lock of tmp_path."""
  proc = subprocess.Popen([sys.executable, '-c', _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'held'
  yield proc
  proc.kill()
  proc.wait()


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def test_a_live_holder_stops_a_second_run_naming_the_process_and_the_lock_file(tmp_path, holder):
  with pytest.raises(lock.RunLocked) as e:
    lock.RunLock(str(tmp_path)).acquire()
  message = str(e.value)
  assert f'in use by process {holder.pid} on this host' in message, message
  assert str(tmp_path / '.lock') in message and 'delete it by hand only if no process' in message, message
  assert json.loads((tmp_path / '.lock').read_text())['pid'] == holder.pid  # untouched


def test_the_lock_is_free_once_its_holder_is_killed(tmp_path, holder):
  holder.kill()  # SIGKILL: no cleanup; the kernel releases the flock
  holder.wait()
  run = lock.RunLock(str(tmp_path))
  note = run.acquire()
  assert note and f'process {holder.pid}' in note and 'no longer running' in note and '.lock' in note
  run.release()


@pytest.mark.parametrize('pid', ['dead', 1, 'mine'], ids=['dead_pid', 'pid_1', 'own_pid'])
def test_a_stale_lock_file_never_locks_out_pid_reuse(tmp_path, pid):
  """A container restarted after an OOM kill has the same host name, and the new run may have the same
  small pid (pid 1 in a new pid namespace) as the killed one, or a pid that another process now has:
  no process holds the flock, so the lock is taken over."""
  pid = {'dead': _dead_pid(), 'mine': os.getpid()}.get(pid, pid)
  _lock_file(tmp_path, pid)
  run = lock.RunLock(str(tmp_path))
  note = run.acquire()
  assert note and f'process {pid}' in note and 'no longer running' in note
  holder = json.loads((tmp_path / '.lock').read_text())
  assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
  run.release()
  assert not (tmp_path / '.lock').exists()


def test_racing_takeovers_of_a_stale_lock_have_exactly_one_winner(tmp_path):
  for round_ in range(20):
    out = tmp_path / str(round_)
    out.mkdir()
    _lock_file(out, _dead_pid() if round_ == 0 else 1)
    start = threading.Barrier(8)
    won, lost = [], []

    def take(won=won, lost=lost, start=start, out=out):
      run = lock.RunLock(str(out))
      start.wait()
      try:
        run.acquire()
        won.append(run)  # held until the round ends: a later taker must find it in use
      except lock.RunLocked:
        lost.append(run)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert len(won) == 1 and len(lost) == 7, (round_, len(won))
    won[0].release()


def test_racing_processes_have_exactly_one_winner(tmp_path):
  """Two processes started at once on one stale lock: one runs, the other is refused."""
  _lock_file(tmp_path, 1)
  code = _IMPORT_LOCK + (
    'try:\n  lock.RunLock(sys.argv[1]).acquire(); print("won", flush=True); time.sleep(5)\n'
    'except lock.RunLocked:\n  print("lost", flush=True)\n'
  )
  procs = [
    subprocess.Popen([sys.executable, '-c', code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    for _ in range(3)
  ]
  results = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
  assert results == ['lost', 'lost', 'won']


def test_a_lock_from_another_host_on_a_network_file_system_is_respected(tmp_path, monkeypatch):
  """On NFS, flock may not reach the other host: its lock file stands until deleted by hand."""
  monkeypatch.setattr(lock, 'filesystem_type', lambda path: 'nfs4')
  _lock_file(tmp_path, 1, host='elsewhere.example')
  with pytest.raises(lock.RunLocked, match=f'host elsewhere.example.*network file system.*delete {tmp_path}'):
    lock.RunLock(str(tmp_path)).acquire()


def test_a_lock_from_another_host_on_a_local_file_system_is_taken_over(tmp_path):
  """A container restarted under a new host name on the same disk: the kernel's flock decides."""
  assert not lock.is_network(str(tmp_path))
  _lock_file(tmp_path, 1, host='old-container')
  run = lock.RunLock(str(tmp_path))
  assert 'took over' in run.acquire()
  run.release()


def test_held_releases_and_non_chief_workers_share_the_chiefs_lock(tmp_path, holder):
  out = tmp_path / 'mine'
  out.mkdir()
  with lock.held(str(out)):
    assert json.loads((out / '.lock').read_text())['pid'] == os.getpid()
    with pytest.raises(lock.RunLocked, match=f'this process already runs.*{out / ".lock"}'):
      lock.RunLock(str(out)).acquire()  # the same process twice: refused too
  assert not (out / '.lock').exists()
  with lock.held(str(tmp_path), enabled=False) as note:  # a non-chief worker takes none
    assert note is None
  assert json.loads((tmp_path / '.lock').read_text())['pid'] == holder.pid


def test_a_remote_out_has_no_lock_and_says_so(capsys):
  with lock.held('ram://runs/a') as note:
    assert note is None
  err = capsys.readouterr().err
  assert 'ram://runs/a' in err and 'no run lock' in err and 'docs/distributed.md' in err


def test_train_on_a_locked_out_exits_2_before_any_work(tmp_path, holder, capsys):
  assert cli.main(['train', '--epochs', '1', '--out', str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and f'process {holder.pid}' in err, err
  assert str(tmp_path / '.lock') in err, err
  assert sorted(p.name for p in tmp_path.iterdir()) == ['.lock']  # nothing loaded, built or written
