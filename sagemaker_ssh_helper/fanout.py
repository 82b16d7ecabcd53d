"""``sm-ssh exec``: run one command on every node of a multi-node resource at once.

Each node goes through the same steps as ``sm-ssh connect`` (``connect.py``): the resource's
nodes are looked up once and only those its log names are taken (``verify``); then, per node,
the key push (``SendCommand``), the session (``StartSession``) and ``ssh`` with the command,
its stdout and stderr captured line by line. At most ``parallel`` nodes are worked on at the
same time, and the calls that open a node (``SendCommand``, ``StartSession``) are paced, each
operation by its own shared :class:`Pacer`, so a 64-node job does not trip SSM's per-account
request rates;
throttling that still happens is retried by botocore's standard mode (``aws.client_config``).

Output: each line prefixed with its node (``algo-2 | ...``, stdout to stdout, stderr to
stderr, as they arrive), or with ``--output json`` one document at the end: per node the
instance, exit code, stdout, stderr, seconds and the error (if the node could not be reached).
The exit code is 0 when every node's command exited 0, else the highest exit code of a node
(ssh's 255 for a node that could not be reached, or the error's own code).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, TypeVar

from sagemaker_ssh_helper import connect, fqdn
from sagemaker_ssh_helper.errors import SSHHelperError, UsageError

if TYPE_CHECKING:
    from sagemaker_ssh_helper.manager import ManagedInstance

logger = logging.getLogger(__name__)
_Node = TypeVar("_Node", "ManagedInstance", "NativeNode")  # a hybrid or a native node

DEFAULT_PARALLEL = 8  # nodes worked on at the same time
# Calls per second of each operation that opens a node (SendCommand, StartSession), across
# all threads: SSM throttles each operation per account and region.
DEFAULT_RATE = 3.0
NOT_REACHED = 255  # the exit code of a node that could not be reached, as ssh reports it


class Pacer:
    """At most ``rate`` calls per second across threads (the first ``burst`` go at once).

    A token bucket: :meth:`wait` blocks until the next call may be made. Clock and sleep are
    injectable."""

    def __init__(self, rate: float, burst: int = 1,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.interval = 1.0 / rate
        self.burst = max(1, burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = clock() - (self.burst - 1) * self.interval

    def wait(self) -> float:
        """Block until a call may be made; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            earliest = now - (self.burst - 1) * self.interval
            at = max(self._next, earliest)
            self._next = at + self.interval
            delay = max(0.0, at - now)
        if delay:
            self._sleep(delay)
        return delay


@dataclass
class NodeResult:
    """What happened on one node (``--output json`` prints a list of these)."""

    node: str
    instance_id: str
    exit_code: int = NOT_REACHED
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.error is None


@dataclass
class Plan:
    """The nodes to run on and how."""

    target_text: str
    name: str  # the FQDN (or instance ID) the key is made for
    user: str
    instances: list[ManagedInstance] | list[NativeNode]
    command: list[str]
    ssh_options: list[str] = field(default_factory=list)
    # the native transport: the job (or endpoint) whose SageMaker targets the nodes are
    native: Any = None
    target: fqdn.Target | None = None


@dataclass(frozen=True)
class NativeNode:
    """A node of a native job: SageMaker's SSM target for one host."""

    instance_id: str
    computer_name: str

    @property
    def label(self) -> str:
        return f"{self.computer_name} ({self.instance_id})"


def parse_nodes(values: Sequence[str] | None) -> list[str]:
    """``--node algo-1,algo-3 --node algo-5`` as a list, in the order given, without repeats."""
    nodes: list[str] = []
    for value in values or ():
        for name in value.split(","):
            name = name.strip()
            if not name:
                raise UsageError(f"--node {value!r}: expected node names such as algo-2 "
                                 "(comma-separated or repeated)")
            if name not in nodes:
                nodes.append(name)
    return nodes


def select(instances: Sequence[_Node], nodes: Sequence[str], target_text: str
           ) -> list[_Node]:
    """The instances ``nodes`` name (host name or instance ID), in node order; every online
    instance if ``nodes`` is empty. A name that is not an online node is a usage error that
    lists the nodes there are."""
    if not nodes:
        return list(instances)
    picked, missing = [], []
    for name in nodes:
        found = [i for i in instances if name in (i.computer_name, i.instance_id)]
        if found:
            if found[0] not in picked:
                picked.append(found[0])
        else:
            missing.append(name)
    if missing:
        raise UsageError(f"{target_text} has no online node {', '.join(missing)}: its online "
                         "nodes are " + ", ".join(i.label for i in instances))
    return sorted(picked, key=lambda i: connect._natural(i.computer_name or i.instance_id))


def plan(ctx: connect.Context, target_text: str, nodes: Sequence[str], command: list[str],
         wait: float) -> Plan:
    """Resolve ``target_text`` to its online nodes (those its log names) and pick ``nodes``."""
    if not command:
        raise UsageError("exec needs a command: sm-ssh exec <name>.<kind>.sagemaker -- <command>")
    if connect.is_instance_id(target_text):
        connect.check_instance_id(target_text)
        name, user = target_text, "root"
    else:
        target = fqdn.parse_resource(target_text)
        name, user = target.fqdn.lower(), connect.user_for(target)
        job = connect._native_job(ctx, target)
        if job is not None:
            hosts = _native_nodes(ctx, target, job, wait)
            return Plan(target_text, name, user, select(hosts, nodes, target_text), command,
                        native=job, target=target)
    everyone = connect.release_targets(ctx, target_text, connect.Choice(wait=wait))
    return Plan(target_text, name, user, select(everyone, nodes, target_text), command)


def _native_nodes(ctx: connect.Context, target: fqdn.Target, job: Any,
                  wait: float) -> list[NativeNode]:
    """The SSH nodes of a native job or endpoint, once SageMaker serves them."""
    from sagemaker_ssh_helper import native, transport

    if isinstance(job, native.Endpoint):
        endpoint = native.wait_endpoint(ctx, target, job, wait)
        return [NativeNode(endpoint.target_of(n), n) for n in endpoint.node_names]
    job = native.wait_training(ctx, target, job, wait)
    return [NativeNode(transport.training_target(job.name, h), h) for h in job.ssh_hosts]


def _label(inst: ManagedInstance | NativeNode) -> str:
    return str(inst.computer_name or inst.instance_id)


class Printer:
    """Writes node-prefixed lines to stdout/stderr from many threads, one whole line at a time
    (or nothing, for ``--output json``)."""

    def __init__(self, width: int, quiet: bool) -> None:
        self.width = width
        self.quiet = quiet
        self._lock = threading.Lock()

    def line(self, node: str, text: str, out: IO[str]) -> None:
        if self.quiet:
            return
        with self._lock:
            out.write(f"{node.ljust(self.width)} | {text}")
            if not text.endswith("\n"):
                out.write("\n")
            out.flush()


def _pump(stream: IO[bytes], node: str, sink: list[str], printer: Printer,
          out: Callable[[], IO[str]]) -> None:
    for raw in iter(stream.readline, b""):
        text = raw.decode(errors="replace")
        sink.append(text)
        printer.line(node, text, out())
    stream.close()


class Cancelled(SSHHelperError):
    """The command was interrupted before this node was reached."""


def run_node(ctx: connect.Context, the_plan: Plan, inst: ManagedInstance | NativeNode,
             pacers: dict[str, Pacer], printer: Printer, several: bool,
             stop: threading.Event) -> NodeResult:
    """Key push, session and ssh for one node; every failure is kept in the result."""
    from sagemaker_ssh_helper import keys, session

    node = _label(inst)
    result = NodeResult(node, inst.instance_id)
    began = time.monotonic()

    def paced(operation: str) -> None:
        pacers[operation].wait()
        if stop.is_set():
            raise Cancelled("interrupted before this node was reached", 130)

    def pause(seconds: float) -> None:  # keys.authorize's polling ends at Ctrl-C
        if stop.wait(seconds):
            raise Cancelled("interrupted while the key was pushed", 130)

    try:
        if the_plan.native is not None:  # keys through S3: SageMaker's targets take no command
            from sagemaker_ssh_helper import native

            assert the_plan.target is not None
            prepared = native.prepare(ctx, the_plan.target, the_plan.native,
                                      connect.Choice(node=inst.computer_name), for_proxy=False)
        else:
            alias = f"{inst.instance_id}.{the_plan.name}" if several else the_plan.name
            paced("SendCommand")
            auth = keys.authorize(ctx.manager().ssm, ctx.session, inst.instance_id,
                                  the_plan.name, alias, sleep=pause)
            prepared = connect.Prepared(inst.instance_id, the_plan.name, the_plan.user, auth)
        paced("StartSession")
        ssm = ctx.manager().ssm
        started = session.open_session(ssm, prepared.instance_id, 22, ctx.profile)
        _run_ssh(ctx, the_plan, prepared, started, result, printer)
    except SSHHelperError as e:
        result.error, result.exit_code = " ".join(str(e).split()), e.exit_code
    except Exception as e:  # an AWS error or the unexpected: reported per node, others go on
        logger.debug("%s failed", node, exc_info=True)
        from sagemaker_ssh_helper import aws

        explained = aws.explain(e, "an AWS call")
        result.error = " ".join(str(explained).split())
        result.exit_code = explained.exit_code if isinstance(explained, SSHHelperError) else 1
    result.seconds = round(time.monotonic() - began, 3)
    if result.error:
        printer.line(node, f"sm-ssh: {result.error}", sys.stderr)
    return result


def _run_ssh(ctx: connect.Context, the_plan: Plan, prepared: connect.Prepared, started: Any,
             result: NodeResult, printer: Printer) -> None:
    from sagemaker_ssh_helper import proxy, session

    env = dict(os.environ, **{session.RESPONSE_ENV: started.response_env})
    out: list[str] = []
    err: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sm-ssh-exec-") as tmp:
        log = Path(tmp) / "ssh.log"
        argv = connect.ssh_argv(ctx, prepared, ["-T", "-o", "BatchMode=yes",
                                                *the_plan.ssh_options],
                                the_plan.command, log, proxy.shell_command(started.plugin_argv))
        logger.debug("running %s", argv)
        try:
            child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except BaseException:
            session.terminate_session(ctx.manager().ssm, started.session_id)
            raise
        assert child.stdout is not None and child.stderr is not None
        pumps = [threading.Thread(target=_pump, args=(child.stdout, result.node, out, printer,
                                                      lambda: sys.stdout), daemon=True),
                 threading.Thread(target=_pump, args=(child.stderr, result.node, err, printer,
                                                      lambda: sys.stderr), daemon=True)]
        for pump in pumps:
            pump.start()
        try:
            code = child.wait()
        except BaseException:
            child.terminate()
            child.wait()
            raise
        finally:
            for pump in pumps:
                pump.join()
        result.exit_code = 128 - code if code < 0 else code
        result.stdout, result.stderr = "".join(out), "".join(err)
        if result.exit_code == connect.SSH_FAILED:
            session.terminate_session(ctx.manager().ssm, started.session_id)
            text = log.read_text(errors="replace") if log.exists() else ""
            if text.strip():
                result.error = " ".join(str(connect.explain_failure(text, prepared)).split())


def run(ctx: connect.Context, the_plan: Plan, parallel: int = DEFAULT_PARALLEL,
        rate: float = DEFAULT_RATE, as_json: bool = False) -> list[NodeResult]:
    """Run the plan's command on its nodes, ``parallel`` at a time; results in node order."""
    from sagemaker_ssh_helper import keys, proxy, session

    session.find_plugin()
    proxy.find_ssh()
    keys.ensure_key(keys.key_path(the_plan.name), comment=f"sm-ssh {the_plan.name}")
    instances = the_plan.instances
    width = max(len(_label(i)) for i in instances)
    printer = Printer(width, quiet=as_json)
    # SSM throttles each operation on its own: one bucket per operation that opens a node
    # (no burst: the calls are spaced by 1/rate from the first, whatever bucket SSM keeps)
    pacers = {op: Pacer(rate) for op in ("SendCommand", "StartSession")}
    several = len(instances) > 1
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, min(parallel, len(instances))),
                              thread_name_prefix="sm-ssh-exec")
    try:
        futures = [pool.submit(run_node, ctx, the_plan, inst, pacers, printer, several, stop)
                   for inst in instances]
        return [f.result() for f in futures]
    except BaseException:  # Ctrl-C reached ssh (same process group); start no other node
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


def exit_code(results: Sequence[NodeResult]) -> int:
    """0 if every node succeeded, else the highest exit code of a node."""
    failed = [r.exit_code if r.exit_code else 1 for r in results if not r.ok]
    return max(failed, default=0)


def summary(results: Sequence[NodeResult]) -> str | None:
    """One line naming the nodes that failed (None if none did)."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return None
    return (f"{len(failed)} of {len(results)} node(s) failed: "
            + ", ".join(f"{r.node} ({'unreachable' if r.error else 'exit'} {r.exit_code})"
                        for r in failed))


def render_json(results: Sequence[NodeResult]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)
