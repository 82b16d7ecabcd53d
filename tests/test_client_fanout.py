"""``sm-ssh exec`` pieces that need no AWS: pacing of the calls that open nodes, ``--node``
parsing and selection, the exit code and the summary line. The fan-out itself runs against
real job containers in test_client_sandbox_e2e.py."""
from __future__ import annotations

import threading

import pytest
from conftest import FakeClock

from sagemaker_ssh_helper import fanout, sm_ssh
from sagemaker_ssh_helper.errors import UsageError
from sagemaker_ssh_helper.manager import ManagedInstance


def instance(node: str, number: int) -> ManagedInstance:
    return ManagedInstance.from_info({"InstanceId": f"mi-{number:017x}", "ComputerName": node,
                                      "PingStatus": "Online"})


def test_the_pacer_spaces_calls_by_the_rate_after_the_burst() -> None:
    clock = FakeClock(100.0)
    pacer = fanout.Pacer(4.0, burst=2, clock=clock, sleep=clock.sleep)
    waited = [pacer.wait() for _ in range(5)]
    assert waited == [0.0, 0.0, 0.25, 0.25, 0.25]
    clock.now += 10  # idle time refills at most `burst` calls
    assert [pacer.wait() for _ in range(3)] == [0.0, 0.0, 0.25]


def test_the_pacer_is_shared_by_threads() -> None:
    clock = FakeClock(0.0)
    lock = threading.Lock()

    def sleep(seconds: float) -> None:  # record, do not advance: the slots are what counts
        with lock:
            clock.sleeps.append(seconds)

    pacer = fanout.Pacer(10.0, burst=1, clock=clock, sleep=sleep)
    threads = [threading.Thread(target=pacer.wait) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(round(s, 6) for s in clock.sleeps) == [round(0.1 * i, 6) for i in range(1, 8)]
    with pytest.raises(ValueError):
        fanout.Pacer(0)


def test_nodes_are_parsed_from_commas_and_repeats() -> None:
    assert fanout.parse_nodes(["algo-1,algo-3", "algo-2", "algo-1"]) == \
        ["algo-1", "algo-3", "algo-2"]
    assert fanout.parse_nodes(None) == []
    with pytest.raises(UsageError, match="expected node names"):
        fanout.parse_nodes(["algo-1,,algo-2"])


def test_selection_keeps_node_order_and_names_the_missing() -> None:
    nodes = [instance(f"algo-{i}", i) for i in (1, 2, 10, 3)]
    assert fanout.select(nodes, [], "j.training.sagemaker") == nodes
    picked = fanout.select(nodes, ["algo-10", "algo-2", nodes[0].instance_id],
                           "j.training.sagemaker")
    assert [i.computer_name for i in picked] == ["algo-1", "algo-2", "algo-10"]
    with pytest.raises(UsageError) as raised:
        fanout.select(nodes, ["algo-2", "algo-9", "algo-7"], "j.training.sagemaker")
    assert str(raised.value).startswith("j.training.sagemaker has no online node algo-9, "
                                        "algo-7: its online nodes are algo-1 (mi-")


def test_exit_code_and_summary_name_the_failed_nodes() -> None:
    ok = fanout.NodeResult("algo-1", "mi-1", exit_code=0)
    assert fanout.exit_code([ok]) == 0 and fanout.summary([ok]) is None
    failed = fanout.NodeResult("algo-2", "mi-2", exit_code=7)
    lost = fanout.NodeResult("algo-3", "mi-3", exit_code=4, error="access denied")
    assert fanout.exit_code([ok, failed, lost]) == 7
    assert fanout.summary([ok, failed, lost]) == \
        "2 of 3 node(s) failed: algo-2 (exit 7), algo-3 (unreachable 4)"


@pytest.mark.parametrize("argv, needle", [
    (["exec", "j.training.sagemaker", "--parallel", "0", "--", "true"], "--parallel"),
    (["exec", "j.training.sagemaker", "--rate", "0", "--", "true"], "calls per second > 0"),
    (["exec", "j.training.sagemaker", "--output", "yaml", "--", "true"], "invalid choice"),
    (["list", "--", "true"], "only apply to connect"),
])
def test_exec_usage_errors_are_one_line(argv: list, needle: str,
                                        capsys: pytest.CaptureFixture) -> None:
    assert sm_ssh.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


def test_exec_without_a_command_says_how(capsys: pytest.CaptureFixture) -> None:
    assert sm_ssh.main(["--region", "us-east-1", "exec", "j.training.sagemaker"]) == 2
    assert "exec needs a command: sm-ssh exec <name>.<kind>.sagemaker -- <command>" in \
        capsys.readouterr().err


def test_ctrl_c_ends_a_nodes_key_push_polling_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    from types import SimpleNamespace

    from sagemaker_ssh_helper import keys

    def authorize(*args: object, sleep: object = time.sleep, **kwargs: object) -> object:
        for _ in range(600):  # keys.run_shell_command's polling, up to a minute
            sleep(0.1)  # type: ignore[operator]
        raise AssertionError("polled to the end")

    monkeypatch.setattr(keys, "authorize", authorize)
    stop = threading.Event()
    ctx = SimpleNamespace(manager=lambda: SimpleNamespace(ssm=None), session=None, profile=None)
    the_plan = SimpleNamespace(name="job.training.sagemaker", user="root", native=None)
    pacers = {op: fanout.Pacer(1000.0) for op in ("SendCommand", "StartSession")}
    printer = fanout.Printer(8, quiet=True)
    results: list = []
    worker = threading.Thread(target=lambda: results.append(fanout.run_node(
        ctx, the_plan, instance("algo-1", 1), pacers, printer, False, stop)))  # type: ignore
    worker.start()
    time.sleep(0.3)
    began = time.monotonic()
    stop.set()
    worker.join(10)
    assert time.monotonic() - began < 2
    assert results and results[0].exit_code == 130
