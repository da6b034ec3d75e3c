"""The TPU-pod and SLURM launchers: syntax, dry runs, and what they execute.

gcloud, srun and scontrol are replaced by stubs on PATH that record their
arguments, so the tests check that a real run executes exactly the commands
its --dry-run prints.
"""

import os
import shlex
import signal
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, 'launch', 'tpu_pod.sh')
SLURM = os.path.join(REPO, 'launch', 'slurm_gpu.sbatch')
TPU_ARGS = ['--name', 'smog', '--zone', 'us-central2-b', '--accelerator',
            'v4-32', '--workdir', 'gs://bucket/runs/r50', '--repo',
            'https://example.org/smog_jax.git', '--ref', 'v1',
            '--', '--config.total_steps=100', '--config.seed=3']


def _pinned_jax():
  with open(os.path.join(REPO, 'requirements.txt')) as f:
    return next(l.split('==')[1].strip() for l in f if l.startswith('jax=='))


def _stub(bin_dir, name, body):
  path = os.path.join(bin_dir, name)
  with open(path, 'w') as f:
    f.write('#!/usr/bin/env bash\n' + body)
  os.chmod(path, 0o755)


@pytest.fixture
def stubs(tmp_path):
  """A PATH whose gcloud/srun/scontrol record one call per line (NUL-split
  arguments) in tmp_path/<name>.calls."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  record = ('printf "%s\\0" "$(basename "$0")" "$@" >> "$RECORD/$(basename '
            '"$0").calls"; printf "\\n" >> "$RECORD/$(basename "$0").calls"\n')
  # describe fails unless TPU_EXISTS=1: the VM has to be created.
  _stub(str(bin_dir), 'gcloud', record +
        'if [ "$4" = describe ] && [ "${TPU_EXISTS:-0}" != 1 ]; then\n'
        '  exit 1\n'
        'fi\n')
  # The trap is set before the call is recorded: the tests signal the job
  # as soon as they see the call.
  _stub(str(bin_dir), 'srun',
        'trap \'echo TERM >> "$RECORD/srun.signals"; exit 0\' TERM\n' +
        record +
        'exit_code=${SRUN_EXIT:-0}\n'
        'if [ "${SRUN_BLOCK:-0}" = 1 ]; then\n'
        '  while true; do sleep 0.05; done\n'
        'fi\n'
        'exit "$exit_code"\n')
  _stub(str(bin_dir), 'scontrol', record)
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}',
             RECORD=str(tmp_path), SMOG_LOG_DIR=str(tmp_path / 'logs'))
  return tmp_path, env


def _calls(tmp_path, name):
  """The recorded calls of stub `name`: one argv list per call."""
  path = tmp_path / f'{name}.calls'
  if not path.exists():
    return []
  return [rec.split('\0') for rec in path.read_text().split('\0\n') if rec]


def _printed_commands(stdout, program):
  return [shlex.split(line) for line in stdout.splitlines()
          if line.startswith(program + ' ')]


@pytest.mark.parametrize('script', [TPU, SLURM, os.path.join(
    REPO, 'launch', 'local_multiprocess.sh')])
def test_scripts_parse(script):
  subprocess.run(['bash', '-n', script], check=True)


def test_tpu_dry_run_prints_the_plan_and_runs_nothing(stubs):
  tmp_path, env = stubs
  out = subprocess.run(['bash', TPU, '--dry-run', *TPU_ARGS], env=env,
                       check=True, capture_output=True, text=True).stdout
  assert _calls(tmp_path, 'gcloud') == []
  cmds = _printed_commands(out, 'gcloud')
  tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  assert cmds[0] == tpu + ['describe', 'smog', '--zone=us-central2-b',
                           '--format=value(state)']
  assert cmds[1] == tpu + ['create', 'smog', '--zone=us-central2-b',
                           '--accelerator-type=v4-32',
                           '--version=tpu-ubuntu2204-base']
  ssh = [c for c in cmds if c[4] == 'ssh']
  assert len(ssh) == 3
  for c in ssh:
    assert c[:8] == tpu + ['ssh', 'smog', '--zone=us-central2-b',
                           '--worker=all']
    assert c[8] == '--command'
  clone, install, train = (c[9] for c in ssh)
  assert ('git clone --depth 1 --branch v1 https://example.org/smog_jax.git'
          in clone)
  # The run-time set at the pinned versions, no test packages.
  assert 'pip install -q -c requirements.txt -e . &&' in install
  assert f'pip install -q "jax[tpu]=={_pinned_jax()}"' in install
  assert ('python3 -m smog_jax.main --config configs/imagenet_resnet50.py '
          '--workdir gs://bucket/runs/r50 --config.total_steps=100 '
          '--config.seed=3 2>&1 | tee ~/smog_logs/$(hostname).log') in train


def test_tpu_run_executes_exactly_the_dry_run(stubs):
  tmp_path, env = stubs
  dry = subprocess.run(['bash', TPU, '--dry-run', *TPU_ARGS], env=env,
                       check=True, capture_output=True, text=True).stdout
  subprocess.run(['bash', TPU, *TPU_ARGS], env=env, check=True,
                 capture_output=True, text=True)
  assert _calls(tmp_path, 'gcloud') == _printed_commands(dry, 'gcloud')


def test_tpu_run_reuses_an_existing_vm(stubs):
  tmp_path, env = stubs
  env['TPU_EXISTS'] = '1'
  out = subprocess.run(['bash', TPU, *TPU_ARGS], env=env, check=True,
                       capture_output=True, text=True).stdout
  assert 'smog exists: reusing it.' in out
  assert [c[4] for c in _calls(tmp_path, 'gcloud')] == [
      'describe', 'ssh', 'ssh', 'ssh']


def test_tpu_refuses_a_local_workdir(stubs):
  _, env = stubs
  args = [a if a != 'gs://bucket/runs/r50' else '/tmp/run' for a in TPU_ARGS]
  proc = subprocess.run(['bash', TPU, '--dry-run', *args], env=env,
                        capture_output=True, text=True)
  assert proc.returncode == 2
  assert '--workdir must be a gs:// path' in proc.stderr


def test_slurm_dry_run_prints_the_srun_line(stubs):
  tmp_path, env = stubs
  out = subprocess.run(
      ['bash', SLURM, '--dry-run', '/shared/runs/r50', '--config',
       'configs/imagenet_resnet50.py', '--config.total_steps=10'],
      env=env, check=True, capture_output=True, text=True).stdout
  assert _calls(tmp_path, 'srun') == []
  (srun,) = _printed_commands(out, 'srun')
  assert srun == [
      'srun', '--kill-on-bad-exit=1', '--open-mode=append',
      f'--output={tmp_path}/logs/%x-%j-task%t.log', 'python3', '-m',
      'smog_jax.main', '--workdir', '/shared/runs/r50', '--config',
      'configs/imagenet_resnet50.py', '--config.total_steps=10']
  assert 'scontrol requeue' in out


def test_slurm_job_runs_the_printed_srun(stubs):
  tmp_path, env = stubs
  out = subprocess.run(['bash', SLURM, '/w', '--config.seed=1'], env=env,
                       check=True, capture_output=True, text=True).stdout
  assert _calls(tmp_path, 'srun') == _printed_commands(out, 'srun')
  assert _calls(tmp_path, 'scontrol') == []


def test_slurm_failure_is_the_jobs_failure(stubs):
  _, env = stubs
  env['SRUN_EXIT'] = '3'
  proc = subprocess.run(['bash', SLURM, '/w'], env=env, capture_output=True)
  assert proc.returncode == 3


def _start_job_with_running_tasks(tmp_path, env):
  """Starts the batch script of job 4242; returns once its srun runs."""
  env.update(SRUN_BLOCK='1', SLURM_JOB_ID='4242')
  proc = subprocess.Popen(['bash', SLURM, '/w'], env=env,
                          stdout=subprocess.PIPE, text=True)
  deadline = time.time() + 30
  while not _calls(tmp_path, 'srun'):
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.05)
  return proc


def test_slurm_time_limit_signal_checkpoints_then_requeues(stubs):
  tmp_path, env = stubs
  proc = _start_job_with_running_tasks(tmp_path, env)
  proc.send_signal(signal.SIGUSR1)
  out, _ = proc.communicate(timeout=30)
  assert proc.returncode == 0, out
  # The tasks got SIGTERM (checkpoint and exit) before the requeue.
  assert (tmp_path / 'srun.signals').read_text() == 'TERM\n'
  assert _calls(tmp_path, 'scontrol') == [['scontrol', 'requeue', '4242']]


def test_slurm_preemption_waits_for_the_tasks(stubs):
  tmp_path, env = stubs
  proc = _start_job_with_running_tasks(tmp_path, env)
  srun_pid = int(subprocess.check_output(
      ['pgrep', '-P', str(proc.pid), '-f', 'srun']).split()[0])
  proc.send_signal(signal.SIGTERM)
  time.sleep(0.5)
  assert proc.poll() is None  # still waiting for the checkpointing tasks
  os.kill(srun_pid, signal.SIGTERM)  # SLURM signals the tasks directly
  out, _ = proc.communicate(timeout=30)
  assert proc.returncode == 143, out
  assert _calls(tmp_path, 'scontrol') == []  # SLURM requeues, not the job
