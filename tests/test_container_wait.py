"""sm-wait: the wait loop (with a fake clock) and the real script in a private container."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FakeClock
from test_container_support import Container, namespaces_available

from sagemaker_ssh_helper import wait
from sagemaker_ssh_helper.env import ProcessInfo

needs_namespaces = pytest.mark.skipif(not namespaces_available(),
                                      reason="needs root and Linux namespaces")


def run_wait(seconds: float, stop_file: Path, clock: FakeClock, on_sleep=None) -> tuple:
    lines: list[str] = []

    def sleep(s: float) -> None:
        clock.sleep(s)
        if on_sleep:
            on_sleep(clock.now)

    result = wait.wait(seconds, stop_file, clock=clock, sleep=sleep,
                       status=lambda: "SSM agent not started yet", out=lines.append)
    return result, lines


def test_times_out_with_progress_every_ten_seconds(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    result, lines = run_wait(25, tmp_path / "stopped", clock)
    assert result == "timeout"
    assert clock.now == 1025.0
    assert lines == [
        "sm-wait: 25 s left; SSM agent not started yet; run `sm-wait stop` to continue now",
        "sm-wait: 15 s left; SSM agent not started yet; run `sm-wait stop` to continue now",
        "sm-wait: 5 s left; SSM agent not started yet; run `sm-wait stop` to continue now",
        "sm-wait: waited 25 s, continuing",
    ]
    assert max(clock.sleeps) <= wait.POLL_INTERVAL


def test_stops_when_the_file_appears(tmp_path: Path) -> None:
    clock, stop_file = FakeClock(1000.0), tmp_path / "stopped"

    def touch_after_12_s(now: float) -> None:
        if now >= 1012:
            stop_file.touch()

    result, lines = run_wait(600, stop_file, clock, touch_after_12_s)
    assert result == "stopped"
    assert clock.now == 1012.0
    assert lines[-1] == f"sm-wait: {stop_file} exists, continuing"
    assert len(lines) == 3  # progress at 0 s and 10 s


def test_a_failed_setup_releases_the_job_after_a_short_grace(tmp_path: Path) -> None:
    clock, failed = FakeClock(1000.0), tmp_path / "setup-failed"
    lines: list[str] = []

    def sleep(s: float) -> None:
        clock.sleep(s)
        if clock.now >= 1012:
            failed.write_text("sm-init-ssm: access denied for ssm:CreateActivation\n")

    result = wait.wait(600, tmp_path / "stopped", clock=clock, sleep=sleep,
                       status=lambda: "SSM agent not started yet", out=lines.append,
                       failure=lambda: wait.setup_failure(failed))
    assert result == "failed"
    assert clock.now == 1012.0 + wait.FAILED_GRACE
    assert lines[-2:] == [
        "sm-wait: SSH setup failed: sm-init-ssm: access denied for ssm:CreateActivation; "
        f"nobody can connect, so the job continues in {wait.FAILED_GRACE:.0f} s",
        "sm-wait: SSH setup failed, continuing"]
    assert len(lines) == 4  # progress at 0 s and 10 s, then the failure
    assert max(clock.sleeps) <= wait.POLL_INTERVAL and min(clock.sleeps) > 0


def test_zero_returns_at_once(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    assert run_wait(0, tmp_path / "stopped", clock) == ("timeout", [])
    assert clock.sleeps == []


def test_an_existing_stop_file_releases_at_once(tmp_path: Path) -> None:
    stop_file = tmp_path / "stopped"
    stop_file.touch()
    result, _ = run_wait(600, stop_file, FakeClock(1000.0))
    assert result == "stopped"


def test_waited_seconds_parses_only_sm_wait_command_lines() -> None:
    assert wait._waited_seconds(["python3", "-m", "sagemaker_ssh_helper.wait", "600"]) == 600
    assert wait._waited_seconds(["python3", "-m", "sagemaker_ssh_helper.wait", "list"]) is None
    assert wait._waited_seconds(["bash", "/x/sm-wait", "600"]) is None


def test_waiters_reports_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    def processes() -> Iterator[ProcessInfo]:
        yield ProcessInfo(42, "python3", ["python3", "-m", "sagemaker_ssh_helper.wait", "600"],
                          5000.0)
        yield ProcessInfo(43, "bash", ["bash", "sm-wait", "600"], 5000.0)

    monkeypatch.setattr(wait, "iter_processes", processes)
    assert wait.waiters(now=lambda: 5100.0) == [wait.Waiter(42, 600, 500.0)]


@pytest.fixture
def container() -> Iterator[Container]:
    c = Container.create()
    yield c
    c.remove()


@needs_namespaces
def test_script_usage_errors(container: Container) -> None:
    proc = container.run(r'''
for args in "" "abc" "-5" "1 2"; do
  # shellcheck disable=SC2086
  bash "$PKG/sm-wait" $args 2>>"$R/err" && echo "rc=0" || echo "rc=$?"
done
bash "$PKG/sm-wait" --help
''')
    assert proc.stdout.splitlines() == ["rc=2"] * 4 + ["usage: sm-wait <seconds>|stop|list"]
    errors = (container.root / "err").read_text().splitlines()
    assert errors == [
        "sm-wait: expected one argument; usage: sm-wait <seconds>|stop|list",
        "sm-wait: 'abc' is not a whole number of seconds; usage: sm-wait <seconds>|stop|list",
        "sm-wait: '-5' is not a whole number of seconds; usage: sm-wait <seconds>|stop|list",
        "sm-wait: expected one argument; usage: sm-wait <seconds>|stop|list",
    ]


@needs_namespaces
def test_script_zero_timeout_list_and_stop(container: Container) -> None:
    proc = container.run(r'''
bash "$PKG/sm-wait" 0 && echo "zero: rc=$? output=[$(bash "$PKG/sm-wait" 0)]"
bash "$PKG/sm-wait" 1 >"$R/short"
bash "$PKG/sm-wait" list >"$R/list-empty"
bash "$PKG/sm-wait" 600 >"$R/w1" & w1=$!
bash "$PKG/sm-wait" 300 >"$R/w2" & w2=$!
wait_for 30 grep -q "s left" "$R/w1"
wait_for 30 grep -q "s left" "$R/w2"
bash "$PKG/sm-wait" list >"$R/list"
bash "$PKG/sm-wait" stop >"$R/stop"
wait "$w1" && wait "$w2" && echo "both released"
bash "$PKG/sm-wait" list >"$R/list-after"
''')
    assert proc.returncode == 0, container.report(proc)
    assert proc.stdout.splitlines() == ["zero: rc=0 output=[]", "both released"]

    def read(name: str) -> str:
        return (container.root / name).read_text()

    assert read("short").splitlines()[-1] == "sm-wait: waited 1 s, continuing"
    assert read("list-empty") == "no sm-wait is waiting\n"
    listed = read("list").splitlines()
    assert len(listed) == 2  # in PID order, which the two background starts may swap
    matches = [re.fullmatch(r"PID \d+: \d+ s left of (\d+) s", line) for line in listed]
    assert sorted(int(m.group(1)) for m in matches if m) == [300, 600], listed
    assert read("w1").splitlines()[0] == \
        "sm-wait: 600 s left; SSM agent not started yet; run `sm-wait stop` to continue now"
    assert read("w1").splitlines()[-1] == "sm-wait: /tmp/sm-wait-stopped exists, continuing"
    assert read("stop") == \
        "sm-wait: created /tmp/sm-wait-stopped; waiting sm-wait processes will continue\n"
    assert read("list-after") == \
        "no sm-wait is waiting\nstop requested: /tmp/sm-wait-stopped exists\n"
    assert (container.root / "tmp" / "sm-wait-stopped").exists()


@needs_namespaces
def test_pkill_sm_wait_releases_the_job_and_ps_shows_it(container: Container) -> None:
    """The seed's ways to find and end the waiting loop: `ps` shows an sm-wait process, and
    `pkill sm-wait` (from another shell in the container) lets the entry point continue."""
    proc = container.run(r'''
{ bash "$PKG/sm-wait" 600 >"$R/w"; echo "rc=$?" >"$R/rc"; } & holder=$!
wait_for 30 grep -q "s left" "$R/w"
ps -e -o comm= >"$R/ps-comm"
ps xfaww >"$R/ps-args"
pkill sm-wait
wait "$holder"
''')
    assert proc.returncode == 0, container.report(proc)
    assert (container.root / "rc").read_text() == "rc=0\n"
    assert "sm-wait" in (container.root / "ps-comm").read_text().split()
    assert "sm-wait 600" in (container.root / "ps-args").read_text()
    assert (container.root / "w").read_text().splitlines()[-1] == \
        "sm-wait: stopped by a signal (e.g. `pkill sm-wait`), continuing"


def test_stop_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    stop_file = tmp_path / "sm-wait-stopped"
    stop_file.symlink_to(tmp_path / "missing-dir" / "target")  # dangling: stop used to crash
    wait.stop(stop_file)
    assert stop_file.is_file() and not stop_file.is_symlink()
    assert not (tmp_path / "missing-dir").exists()
    root_file = tmp_path / "root-file"
    root_file.write_text("keep\n")
    stop_file.unlink()
    stop_file.symlink_to(root_file)  # a link to a file root owns: neither followed nor changed
    wait.stop(stop_file)
    assert stop_file.is_file() and not stop_file.is_symlink()
    assert root_file.read_text() == "keep\n"
    wait.stop(stop_file)  # already requested: nothing to do


def test_a_dangling_stop_link_still_releases_the_wait(tmp_path: Path) -> None:
    stop_file = tmp_path / "sm-wait-stopped"
    stop_file.symlink_to(tmp_path / "nowhere")
    clock = FakeClock()
    assert wait.wait(30, stop_file, clock=clock, sleep=clock.sleep, status=lambda: "",
                     out=lambda line: None) == "stopped"
