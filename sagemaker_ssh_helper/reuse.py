"""``sm-ssh connect`` at the speed of an open connection: a shared OpenSSH master per target,
optimistic key pushes, and resolutions kept for a few seconds.

The first command to a target resolves it (and verifies the instance, ``verify``), pushes the
key unless this key went to this instance before (``keys.authorized_before``), starts the SSM
session and a master ssh (``ControlMaster``) in the background, then runs the command through
it. The master stays ``SM_SSH_REUSE`` seconds (default 300) after its last session, so the next
command to the same target skips resolution, key push, StartSession and the SSH handshake: it
costs one local socket round trip (``mux.probe``) and one multiplexed session.

What a master is for ("route", one JSON file per target under ``~/.ssh/sm-ssh/routes``) is
keyed by the target as typed (name, ``--index``/``--node``/``--instance``), the AWS identity
(profile, region, endpoints, access key) and what ssh authenticates with, as ``ssh -G`` sees
it (user, port, identity files, known-hosts file, host-key checking): another key, user or
known-hosts file never rides on this master. The master's socket name also hashes the managed
instance it was verified for, so a master is bound to that instance; a new instance under the
same name gets a master of its own, and the old one is closed once resolution sees the change
or the resource has ended.

A route also serves as a resolution cache for ``RESOLVED_FOR`` seconds when no master is
alive (reuse off, a master that just ended): if the instance is gone by then, the session
cannot start and the target is resolved again.

Not shared: sessions with forwarding (``-L``/``-R``/``-D``), ``-N``, ``-f``, ``-W``, ``-J``
or the user's own ProxyCommand or ControlMaster options. Forwards requested through a master
belong to the master (they would outlive the command, and ssh ignores ExitOnForwardFailure for
them), so such sessions get a connection of their own, as before.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sagemaker_ssh_helper import keys, mux
from sagemaker_ssh_helper.connect import (
    SSH_FAILED,
    Choice,
    Context,
    Prepared,
    authorize,
    destination,
    explain_failure,
    prepare,
    run_logged,
)
from sagemaker_ssh_helper.errors import ResolutionError, SSHHelperError
from sagemaker_ssh_helper.sshrun import SSH_FLAGS_WITH_VALUE, SshPlan

logger = logging.getLogger(__name__)

RESOLVED_FOR = 20.0     # seconds a resolution is used again without a live master
ROUTE_DAYS = 2          # route files older than this are removed
MASTER_TIMEOUT = 180.0  # seconds for a master to connect (the session and the handshake)
# Options of the user's that rule out sharing (lower-case -o keys) ...
_SOLO_KEYS = {"controlmaster", "controlpath", "controlpersist", "proxycommand", "proxyjump",
              "forkafterauthentication", "stdioforward", "localforward", "remoteforward",
              "dynamicforward", "tunnel", "tunneldevice", "sessiontype"}
_SOLO_FLAGS = set("fNWJMSOwLRD")
# ... and those that only concern a session (kept off the master: ssh -N refuses some).
_SESSION_KEYS = {"remotecommand", "requesttty", "stdinnull", "forwardagent", "forwardx11",
                 "forwardx11trusted", "setenv", "sendenv", "loglevel", "escapechar",
                 "localcommand", "permitlocalcommand"}
_SESSION_FLAGS = set("tTnsAaXxYyqvEe")


def _options(user_options: Sequence[str]) -> list[tuple[str, str | None]]:
    """The user's ssh options as (flag, value) pairs: ``-o`` values are ``key=value``."""
    out: list[tuple[str, str | None]] = []
    items = list(user_options)
    while items:
        item = items.pop(0)
        if not item.startswith("-") or item == "-":
            continue
        for at, flag in enumerate(item[1:], start=1):
            if flag in SSH_FLAGS_WITH_VALUE:
                value = item[at + 1:] or (items.pop(0) if items else "")
                out.append((flag, value))
                break
            out.append((flag, None))
    return out


def _key(option_value: str) -> str:
    return option_value.strip().replace("=", " ", 1).split(" ", 1)[0].lower()


def solo_reason(user_options: Sequence[str], plan: SshPlan) -> str | None:
    """Why this ssh run gets a connection of its own, or None when it may share one."""
    if plan.listeners or plan.values("remoteforward"):
        return "forwarding"
    if plan.values("sessiontype") not in ([], ["default"], ["subsystem"]):
        return "no session (-N)"
    if plan.values("forkafterauthentication") == ["yes"] or plan.values("proxyjump"):
        return "-f or -J"
    if plan.values("tunnel") not in ([], ["false"], ["no"]):
        return "a tunnel (-w)"
    for flag, value in _options(user_options):
        if flag in _SOLO_FLAGS or (flag == "o" and _key(value or "") in _SOLO_KEYS):
            return f"the option -{flag}" + (f" {value}" if flag == "o" else "")
    return None


def master_options(user_options: Sequence[str]) -> list[str]:
    """The user's options that concern the connection (given to the master too)."""
    kept: list[str] = []
    for flag, value in _options(user_options):
        if flag in _SESSION_FLAGS or (flag == "o" and _key(value or "") in _SESSION_KEYS):
            continue
        kept += [f"-{flag}"] + ([value] if value is not None else [])
    return kept


# -- routes: what a master is for ----------------------------------------------------------------
@dataclass
class Route:
    instance_id: str
    destination: str
    user: str
    host_key_alias: str
    region: str
    resolved_at: float


def spec_key(ctx: Context, target_text: str, choice: Choice, plan: SshPlan) -> str:
    """What the connection is for, except the instance (see the module docstring)."""
    env = os.environ
    dest = destination(target_text)
    parts = [
        dest, repr((choice.index, choice.node, choice.instance)),
        # our key and known hosts (ssh -G sees the user's options only): per home, too
        str(keys.key_path(dest)), str(keys.known_hosts_path()),
        ctx.profile or env.get("AWS_PROFILE", ""),
        ctx.region or env.get("AWS_REGION", "") or env.get("AWS_DEFAULT_REGION", ""),
        env.get("AWS_ENDPOINT_URL", ""), env.get("AWS_ENDPOINT_URL_SSM", ""),
        env.get("AWS_ACCESS_KEY_ID", ""), env.get("SSH_KEY", ""), str(plan.port),
        *(f"{k}={v}" for k, v in plan.settings
          if k in ("user", "identityfile", "userknownhostsfile", "stricthostkeychecking")),
    ]
    return mux.name(*parts)


def _routes_dir() -> Path:
    return keys.ssh_dir() / "sm-ssh" / "routes"


def read_route(key: str) -> Route | None:
    try:
        return Route(**json.loads((_routes_dir() / f"{key}.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_route(key: str, route: Route) -> None:
    """Best effort: without it, the next command just resolves again."""
    from sagemaker_ssh_helper import keyfile

    path = _routes_dir() / f"{key}.json"
    try:
        keyfile.ensure_dir(path.parent)
        with keyfile.open_new(path, 0o600) as f:
            json.dump(asdict(route), f)
        for old in path.parent.iterdir():
            if old.stat().st_mtime < time.time() - ROUTE_DAYS * 86400:
                old.unlink()
    except (OSError, SSHHelperError) as e:
        logger.debug("cannot keep the route in %s: %s", path, e)


def forget(key: str, route: Route | None, close: bool = True) -> None:
    """Drop the route (and close its master, if any)."""
    if route is not None and close:
        path = _socket(key, route.instance_id, create=False)
        if path is not None and mux.terminate(path):
            logger.info("closed the shared connection to %s", route.instance_id)
    try:
        (_routes_dir() / f"{key}.json").unlink()
    except OSError:
        pass


def _socket(key: str, instance_id: str, create: bool = True) -> Path | None:
    directory = mux.control_dir(keys.ssh_dir(), create=create)
    return None if directory is None else directory / mux.name(key, instance_id)


def _prepared(route: Route) -> Prepared:
    """What ssh needs for a route's instance, from local files only."""
    auth = keys.Authorized(keys.key_path(route.destination), keys.known_hosts_path(),
                           route.host_key_alias, pushed=False)
    return Prepared(route.instance_id, route.destination, route.user, auth)


# -- the flow ------------------------------------------------------------------------------------
class _Gone(Exception):
    """The session to the chosen instance could not start (it may have been replaced)."""

    def __init__(self, error: SSHHelperError) -> None:
        super().__init__(str(error))
        self.error = error


def run(ctx: Context, target_text: str, choice: Choice, user_options: Sequence[str],
        command: Sequence[str], plan: SshPlan) -> int:
    """Run ssh to ``target_text`` (``sm-ssh connect``); returns the
    remote command's exit code, or raises one explained error."""
    persist = mux.persist_seconds()
    solo = "reuse is off" if persist is None else solo_reason(user_options, plan)
    shared = None if solo is not None else persist
    key = spec_key(ctx, target_text, choice, plan)
    route = read_route(key)
    if route is not None and shared is not None:
        path = _socket(key, route.instance_id)
        if path is not None and mux.probe(path) is not None:
            logger.debug("riding the shared connection %s to %s", path, route.instance_id)
            return _ride(ctx, route, path, user_options, command)
    if solo is not None:
        logger.debug("a connection of its own: %s", solo)
    # the cached resolution serves hybrid instances only: a native target's key is pushed
    # through S3 by its own resolution, never by ``authorize``'s SendCommand
    if (route is not None and route.instance_id.startswith("mi-")
            and time.time() - route.resolved_at < RESOLVED_FOR):
        try:
            return _connect(ctx, _prepared(route), key, route, user_options, command, plan,
                            shared)
        except _Gone as e:
            logger.info("%s: %s; resolving %s again", route.instance_id, e, target_text)
            forget(key, route, close=False)
    prepared = _resolve(ctx, target_text, choice, key, route)
    fresh = Route(prepared.instance_id, prepared.destination, prepared.user,
                  prepared.auth.host_key_alias, ctx.region_name, time.time())
    try:
        return _connect(ctx, prepared, key, fresh, user_options, command, plan, shared)
    except _Gone as e:
        raise e.error from None


def _resolve(ctx: Context, target_text: str, choice: Choice, key: str,
             route: Route | None) -> Prepared:
    """Resolve (and verify) the target; a master for an instance it no longer resolves to
    (a new job or endpoint under the name, a replaced instance, a finished resource) is
    closed."""
    try:
        prepared = prepare(ctx, target_text, choice, optimistic=True)
    except ResolutionError:
        if route is not None:
            forget(key, route)
        raise
    if route is not None and route.instance_id != prepared.instance_id:
        logger.info("%s now resolves to %s (was %s)", target_text, prepared.instance_id,
                    route.instance_id)
        forget(key, route)
    return prepared


def _connect(ctx: Context, prepared: Prepared, key: str, route: Route,
             user_options: Sequence[str], command: Sequence[str], plan: SshPlan,
             persist: int | None) -> int:
    """Start the session and ssh (a master, then the command through it, when ``persist``);
    when the container refuses a key that was not pushed this time, push it and retry once.

    A master is looked for and started under its lock, the session included: a second
    ``sm-ssh connect`` to the same target waits for the first one's master and rides it,
    without a session of its own that would end unused."""
    for attempt in (1, 2):
        path = _socket(key, prepared.instance_id) \
            if persist is not None and not _needs_terminal(prepared) else None
        if path is not None and persist is not None:
            with _master_lock(path):
                if mux.probe(path) is not None:
                    logger.debug("riding the shared connection started meanwhile: %s", path)
                    write_route(key, route)
                    returncode, text = 0, ""
                else:
                    returncode, text = _session_and_ssh(
                        ctx, prepared, key, route, plan.port, attempt,
                        partial(_start_master, prepared, user_options, path, persist),
                        master=True)
            if returncode == 0:
                return _ride(ctx, route, path, user_options, command, prepared)
        else:
            returncode, text = _session_and_ssh(ctx, prepared, key, route, plan.port, attempt,
                                                partial(_run_solo, ctx, prepared,
                                                        user_options, command))
            if returncode != SSH_FAILED or not text.strip():
                return returncode
        # Not pushed this time: the container may have lost the key, its sshd, or be a new
        # one behind the same instance; the push fixes all three (and re-pins host keys).
        if attempt == 1 and not prepared.auth.pushed:
            logger.info("ssh failed without a key push: pushing the key to %s",
                        prepared.instance_id)
            prepared = authorize(ctx, prepared)
            continue
        raise explain_failure(text, prepared)
    raise AssertionError("unreachable")


def _run_solo(ctx: Context, prepared: Prepared, user_options: Sequence[str],
              command: Sequence[str], proxy_cmd: str, env: Any) -> tuple[int, str]:
    """ssh on a connection of its own; its exit code, and its log when it failed to connect
    ("" when the session was used)."""
    from sagemaker_ssh_helper import proxy

    returncode, text, unshown = run_logged(ctx, prepared, user_options, command, env,
                                           proxy_cmd=proxy_cmd,
                                           control=proxy.control_options("none"))
    if returncode != SSH_FAILED or not text.strip():
        sys.stderr.write(unshown)
        return returncode, ""
    return returncode, text


def _session_and_ssh(ctx: Context, prepared: Prepared, key: str, route: Route, port: int,
                     attempt: int, ssh: Any, master: bool = False) -> tuple[int, str]:
    """Start a session to the instance and run ``ssh(proxy_cmd, env)`` through it; the
    session is terminated at once unless ssh used it (a ``master`` that authenticated: exit
    code 0; a command: no log of a failed connection)."""
    from sagemaker_ssh_helper import proxy, session

    ssm = ctx.manager().ssm
    try:
        started = session.open_session(ssm, prepared.instance_id, port, ctx.profile)
    except SSHHelperError as e:
        if attempt == 1:
            raise _Gone(e) from e
        raise
    write_route(key, route)
    env = dict(os.environ, **{session.RESPONSE_ENV: started.response_env})
    used = False  # else (an error, Ctrl-C): free the agent at once
    try:
        returncode, text = ssh(proxy.shell_command(started.plugin_argv), env)
        used = returncode == 0 if master else not text.strip()
        return returncode, text
    finally:
        if not used:
            session.terminate_session(ssm, started.session_id)


def _needs_terminal(prepared: Prepared) -> bool:
    """A key protected by a passphrase that no agent holds: ssh asks for it on the terminal,
    which a master in the background does not have."""
    from sagemaker_ssh_helper import keyfile

    try:
        key = keyfile.read_key(prepared.auth.key_path)
    except SSHHelperError:
        return False
    return key.encrypted and not keyfile.in_agent(key.public)


@contextmanager
def _master_lock(path: Path) -> Iterator[None]:
    """Held while a master for ``path`` is looked for and started (``<socket>.lock``)."""
    from sagemaker_ssh_helper import portable

    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+b") as lock, portable.exclusive(lock):
        yield


def _start_master(prepared: Prepared, user_options: Sequence[str], path: Path, persist: int,
                  proxy_cmd: str, env: Any) -> tuple[int, str]:
    """Start the master in the background (a session of its own: the terminal's Ctrl-C is
    not for it); returns (ssh's exit code: 0 once it is authenticated, its log)."""
    from sagemaker_ssh_helper import proxy

    log = Path(f"{path}.log")
    auth = prepared.auth
    options = proxy.ssh_options(identity_file=auth.key_path, known_hosts=auth.known_hosts,
                                host_key_alias=auth.host_key_alias, user=prepared.user,
                                proxy_cmd=proxy_cmd,
                                control=proxy.control_options("master", path, persist))
    argv = [proxy.find_ssh(), *master_options(user_options), "-N", "-f", "-E", str(log),
            *options, prepared.destination]
    logger.debug("starting the shared connection: %s", argv)
    with open(log, "wb") as err:
        try:
            done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=err, check=False,
                                  timeout=MASTER_TIMEOUT, start_new_session=True)
            returncode = done.returncode
        except subprocess.TimeoutExpired:
            returncode = SSH_FAILED
    return returncode, log.read_text(errors="replace")


def _ride(ctx: Context, route: Route, path: Path, user_options: Sequence[str],
          command: Sequence[str], prepared: Prepared | None = None) -> int:
    """Run the command through the master at ``path``. Should the master end meanwhile,
    ssh connects on its own through a new session to the same instance."""
    from sagemaker_ssh_helper import proxy

    prepared = prepared or _prepared(route)
    proxy_cmd = proxy.proxy_command(route.instance_id, route.region, ctx.profile)
    returncode, text, unshown = run_logged(
        ctx, prepared, user_options, command, proxy_cmd=proxy_cmd,
        control=proxy.control_options("client", path), also_show=Path(f"{path}.log"))
    if returncode == SSH_FAILED and text.strip():
        raise explain_failure(text, prepared)
    sys.stderr.write(unshown)
    return returncode
