"""``python -m sagemaker_ssh_helper.postmortem -- COMMAND``: signals as a job's entry point (a job
stop's SIGTERM reaches the command; SIGTERM ends the post-mortem hold), without a container.
The hold in real jobs is in test_wrapper_e2e.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import REPO_ROOT

_FAKES = """
import sys
from sagemaker_ssh_helper import bootstrap, postmortem, wait
bootstrap.setup_and_start_ssh = lambda *a, **k: None
bootstrap.started_here = lambda: True
bootstrap.deregister_at_exit = lambda: None
wait.setup_failure = lambda: None
postmortem.where_to_connect = lambda environ=None: []
"""


def _start(tmp_path: Path, body: str) -> subprocess.Popen:
    script = textwrap.dedent(_FAKES) + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.05)


def _kill_leftover(pid_file: Path) -> None:
    try:
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass


def test_a_job_stop_reaches_the_command_and_is_not_held(tmp_path: Path) -> None:
    command = ('trap "echo term > got; exit 7" TERM; echo $$ > ready; '
               'while :; do sleep 0.1; done')
    proc = _start(tmp_path, f"""
        postmortem.hold = lambda *a, **k: print("HOLD") or "held"
        sys.exit(postmortem.run_command(["sh", "-c", {command!r}],
                                        {{"SSH_KEEP_ALIVE_ON_FAILURE_SECONDS": "600"}}))
    """)
    try:
        _wait_for(tmp_path / "ready", proc)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=15)[0]
        assert (tmp_path / "got").read_text().strip() == "term", out
        assert proc.returncode == 7 and "HOLD" not in out, out
    finally:
        proc.kill()
        _kill_leftover(tmp_path / "ready")


def test_sigterm_ends_the_post_mortem_hold_at_once(tmp_path: Path) -> None:
    proc = _start(tmp_path, """
        bootstrap.sm_wait_command = lambda seconds, env: (
            ["sh", "-c", "echo $$ > ready; exec sleep 600"], dict(env))
        print("RESULT", postmortem.hold(600, "the script failed"), flush=True)
    """)
    try:
        _wait_for(tmp_path / "ready", proc)
        time.sleep(0.2)  # sh has become sleep
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=15)[0]
        assert proc.returncode == 0 and "RESULT held" in out, out
        assert "post-mortem hold over" in out
        assert time.monotonic() - began < 10
    finally:
        proc.kill()
        _kill_leftover(tmp_path / "ready")
