"""The user documentation stays true to the code.

README.md, FAQ.md and IAM_SSM_Setup.md are checked for:

- ``sm-*`` commands that are neither a script in the package nor a console entry in setup.py;
- command lines (in code blocks and inline code) that the command's real parser refuses;
- ``from sagemaker_ssh_helper... import X`` and ``X.attr(`` / ``wrapper.method(`` that do not
  exist, and ``python -m sagemaker_ssh_helper.x`` modules that are missing;
- contract environment variables the code never reads;
- relative links to missing files or headings;
- command forms without a test: every form shown must be listed in ``COVERAGE`` with the test
  that runs it, and that test must exist.

Fast: nothing here starts a sandbox, a container or a network call.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagemaker_ssh_helper import connect, sm_local, sm_ssh
from sagemaker_ssh_helper.errors import UsageError
from sagemaker_ssh_helper.options import leading

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sagemaker_ssh_helper"
DOCS = ("README.md", "FAQ.md", "IAM_SSM_Setup.md")

# Each command form the documents show -> the test(s) that run it ("file.py::test_name").
# A form is the program, its subcommand (for sm-ssh targets also the resource kind) and the
# options used, in order (see ``form``). scripts/demo is run by the journey test.
E2E = "test_client_sandbox_e2e.py::"
LIST = E2E + "test_list_shows_the_running_jobs_online"
CONNECT = E2E + "test_connect_returns_the_commands_output_and_exit_code"
FORWARD = E2E + "test_local_and_remote_forwarding_carry_data_both_ways"
NODES = E2E + "test_each_node_of_a_two_node_job"
CONFIG = E2E + "test_plain_ssh_through_the_generated_config"
IDE = E2E + "test_proxy_commands_for_ides"
KIND_SCRIPT = E2E + "test_sm_local_ssh_training_connect_run_command_and_stop_waiting"
RELEASE = "test_sandbox_journey_e2e.py::test_two_node_job_registers_one_instance_per_node"
STOP_WAITING = E2E + "test_stop_waiting_and_pkill_sm_wait_release_the_nodes_and_the_job_completes"
SANDBOX_DOWN = "test_sandbox_infra_e2e.py::test_down_leaves_no_processes_mounts_or_host_files"
DEREGISTER = "test_admin_deregister.py::test_preapproved_removes_only_stale_ssh_helper_instances"
CONFIGURE = "test_client_configure.py::"
QUICK = E2E + "test_quick_setup_block_with_ssh_and_paramiko_on_two_jobs"
JB = "test_studio_e2e.py::test_jb_license_server_maps_the_host_in_the_app_and_reaches_the_laptop"
COVERAGE: dict[str, tuple[str, ...]] = {
    "sm-ssh --version": ("test_seed_clients.py::test_version_flag",),
    "sm-ssh -v": ("test_seed_clients.py::test_version_flag",),
    "sm-ssh list [training]": (LIST,),
    "sm-ssh list [training] --output": (LIST,),
    "sm-ssh connect [training]": (CONNECT,),
    "sm-ssh connect [training] --": (CONNECT, RELEASE),
    "sm-ssh connect [training] -L": (FORWARD,),
    "sm-ssh connect [training] -N -L": (FORWARD,),
    "sm-ssh tunnel -L -L": (
        E2E + "test_a_tunnel_comes_back_after_drops_and_ctrl_c_leaves_nothing",),
    "sm-ssh connect [training] -N --keep-alive -L": (
        E2E + "test_a_tunnel_that_cannot_come_back_gives_up_after_wait",),
    "sm-ssh connect [training] -R": (FORWARD,),
    "sm-ssh connect [training] -R --": (FORWARD,),
    # -A is passed to ssh untouched (agent forwarding itself needs an agent on the laptop).
    "sm-ssh connect [training] -A": ("test_client_unit.py::test_ssh_args_split_like_ssh",),
    "sm-ssh connect [training] --node": (NODES,),
    "sm-ssh connect [training] --index": (NODES,),
    "sm-ssh connect [training] --instance": (
        "test_sandbox_iam_e2e.py::test_forged_tags_and_tag_changes_fail",),
    # Processing jobs: the same resolve/key/ssh path, driven through SSMProxy in the sandbox.
    "sm-ssh connect [processing]": ("test_wrapper_e2e.py::test_processor_wrapper_journey",),
    # Endpoints and batch transform jobs deployed with the SDK in the sandbox.
    "sm-ssh connect [inference]": (
        "test_sandbox_endpoints_e2e.py::"
        "test_connect_to_the_endpoint_runs_in_the_container_that_loaded_the_model",),
    "sm-ssh connect [inference] -N -L": (
        "test_sandbox_endpoints_e2e.py::test_port_8080_of_the_model_server_through_the_tunnel",),
    "sm-ssh connect [transform]": (
        "test_sandbox_endpoints_e2e.py::"
        "test_transform_job_is_held_for_ssh_then_released_and_completes",),
    "sm-ssh start-proxy [training] --port": (
        CONFIG, "test_client_e2e.py::test_ssh_through_the_generated_config"),
    "sm-ssh stop-waiting": (STOP_WAITING,),
    "sm-ssh shell": (
        "test_native_e2e.py::test_remote_debugging_without_ssh_helper_gets_the_plain_shell",),
    "sm-ssh exec --": (E2E + "test_exec_runs_on_every_node_with_prefixed_lines_and_json",),
    "sm-ssh exec --node --": (E2E + "test_exec_runs_on_every_node_with_prefixed_lines_and_json",),
    "sm-ssh exec --output --": (
        E2E + "test_exec_runs_on_every_node_with_prefixed_lines_and_json",),
    "sm-ssh doctor": ("test_client_doctor.py::test_a_good_setup_passes_every_check",),
    "sm-ssh doctor [training]": (
        E2E + "test_doctor_explains_why_a_job_is_or_is_not_connectable",),
    "sm-ssh doctor --output": ("test_client_doctor.py::test_a_good_setup_passes_every_check",),
    "sm-ssh config": (
        CONFIG, "test_client_unit.py::test_config_is_idempotent_and_keeps_the_users_file"),
    "sm-ssh cp --": (E2E + "test_cp_takes_what_follows_double_dash_as_file_names",),
    "sm-ssh sandbox up": (SANDBOX_DOWN,),
    "sm-ssh sandbox up --no-iam": (
        "test_sandbox_infra_e2e.py::test_down_after_the_daemon_crashed",),
    "sm-ssh sandbox env": ("test_sandbox_infra.py::test_cli_without_a_running_sandbox",),
    "sm-ssh sandbox status": (
        "test_sandbox_infra_e2e.py::test_status_lists_services_jobs_and_containers",),
    "sm-ssh sandbox down": (SANDBOX_DOWN,),
    "sm-ssh sandbox demo": (
        "test_sandbox_journey_e2e.py::test_demo_command_runs_the_whole_journey",),
    # Studio apps and notebook instances (set up with sm-ssh-ide in the sandbox).
    "sm-ssh list [studio]": ("test_studio_e2e.py::test_list_studio_shows_the_app_online",),
    "sm-ssh connect [studio]": ("test_studio_e2e.py::test_connect_as_sagemaker_user",),
    # Both skip where jupyter_server / TigerVNC and noVNC are not installed.
    "sm-ssh connect [studio] -N -L": (
        "test_studio_e2e.py::test_jupyter_server_reachable_through_local_forwarding",
        "test_studio_e2e.py::test_server_lc_config_serves_web_vnc"),
    "sm-ssh connect [notebook]": ("test_studio_e2e.py::test_notebook_instance_connect",),
    "sm-ssh-ide status": ("test_studio_e2e.py::test_ide_status_after_setup",),
    "sm-local-start-ssh": (IDE,),
    "sm-local-start-ssh -p": (IDE,),
    "sm-local-start-ssh --proxy-setup-only": (IDE,),
    "sm-connect-ssh-proxy": (IDE,),
    "sm-local-ssh-training connect": (KIND_SCRIPT, QUICK),
    "sm-local-ssh-training connect --local-port": (KIND_SCRIPT, QUICK),
    "sm-local-ssh-training run-command": (KIND_SCRIPT,),
    "sm-local-ssh-training stop-waiting": (KIND_SCRIPT,),
    "sm-local-ssh-training proxy-host": (IDE,),
    # Offline: a local mirror of AWS's folders with packages signed by a throwaway key.
    "sm-local-configure": ("test_client_scripts.py::test_configure_offline_download_is_one_line",
                           "test_client_scripts.py::test_official_plugin_packages",
                           CONFIGURE + "test_awscli_v2_installed_after_verification_unless_told"
                           "_not_to"),
    "sm-local-configure --no-awscli": (
        CONFIGURE + "test_plugin_installed_only_after_its_signature_verifies",
        CONFIGURE + "test_tampered_plugin_is_refused_and_nothing_installed"),
    "sm-ssh config --inline": (E2E + "test_fabric_connection_after_sm_ssh_config_inline",
                               "test_client_sshconfig.py::"
                               "test_inline_blocks_for_paramiko_and_back_to_include"),
    "sm-ssh stage-wheel": ("test_studio_e2e.py::"
                           "test_lifecycle_config_installs_the_staged_wheel_and_refuses_upstream",),
    # sm-ssh cp both ways, through S3 and over scp, against a job held after its crash.
    "sm-ssh cp": ("test_wrapper_e2e.py::test_crashed_job_is_held_for_a_post_mortem",),
    "sm-ssh cp --s3-threshold": (
        "test_wrapper_e2e.py::test_crashed_job_is_held_for_a_post_mortem",),
    "sm-ssh sync": ("test_wrapper_e2e.py::test_crashed_job_is_held_for_a_post_mortem",),
    "sm-local-ssh-ide <app>": (JB,),
    "sm-local-ssh-ide connect": (JB,),
    "sm-local-ssh-training connect-job": (
        "test_client_scripts.py::test_earlier_spellings_of_the_local_commands",),
    "sm-local-start-ssh -L -N": (QUICK,),
    "sm-ssh-ide set-jb-license-server": (JB,),
    "sm-local-configure --check": (
        "test_client_scripts.py::test_configure_detects_the_tools",
        "test_client_scripts.py::test_configure_check_names_what_is_missing"),
    "sm-wait stop": (RELEASE, "test_container_wait.py::test_script_zero_timeout_list_and_stop"),
    "sm-wait list": ("test_container_wait.py::test_script_zero_timeout_list_and_stop",),
    "sm-wait <seconds>": (
        "test_container_wait.py::test_times_out_with_progress_every_ten_seconds",),
    "sm-setup-ssh configure": (
        "test_container_setup.py::test_configure_writes_a_config_sshd_accepts_once",),
    "sm-ssh-deregister-instances --delete-older-than-n-days --dry-run": (
        "test_admin_deregister.py::test_dry_run_lists_and_changes_nothing",),
    "sm-ssh-deregister-instances --delete-older-than-n-days": (
        "test_admin_deregister.py::test_asks_on_a_terminal",),
    "sm-ssh-deregister-instances --delete-older-than-n-days --preapproving-deregistration": (
        DEREGISTER,),
    "sm-ssh-deregister-instances --region --delete-older-than-n-days "
    "--preapproving-deregistration": (DEREGISTER,),
}

# Names that look like commands but are files or directories the documents mention.
NOT_COMMANDS = {"sm-ssh-known_hosts", "sm-wait-stopped", "sm-ssh-sandbox"}
# Contract variables (docs/DESIGN.md section 2) and the other settings the documents may name.
ENV_VAR_RE = re.compile(r"\b(START_SSH|SSH_[A-Z][A-Z_]*[A-Z]|SM_SSH_[A-Z_]*[A-Z])\b")
COMMAND_RE = re.compile(r"(?<![\w/.~-])(sm-[a-z0-9][a-z0-9_-]*[a-z0-9])(?![\w.]*/)")
GENERAL_OPTIONS = ("-v", "--verbose", "--profile", "--region")


# -- reading the documents ---------------------------------------------------------------------
def doc_text(name: str) -> str:
    path = ROOT / name
    assert path.exists(), f"{name} is missing"
    return path.read_text()


def code_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(language, body) of each fenced block."""
    for match in re.finditer(r"^```([\w-]*)\n(.*?)^```", text, re.M | re.S):
        yield match.group(1).lower(), match.group(2)


def inline_code(text: str) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.findall(r"`([^`\n]+)`", prose)


def shell_lines(text: str) -> list[str]:
    """Lines of shell-ish code (blocks not in Python/JSON, plus inline code spans), with
    backslash continuations joined."""
    lines: list[str] = []
    for lang, body in code_blocks(text):
        if lang in ("python", "py", "json") or "\u2500" in body:  # code, or a box diagram
            continue
        lines += body.replace("\\\n", " ").splitlines()
    # A bare name in inline code (`sm-ssh`) names the command; one with arguments is a command,
    # unless it only names subcommands (`sm-ssh list / connect`), see ``is_reference``.
    return lines + [span for span in inline_code(text) if " " in span.strip()
                    and not is_reference(span)]


def subcommands(program: str) -> set[str]:
    """The subcommand words ``program`` accepts (empty if it has none)."""
    if program == "sm-ssh":
        return set(_choices(sm_ssh.build_parser())) | {"up", "env", "status", "down", "demo"}
    if program.startswith("sm-local-ssh-") and program[len("sm-local-ssh-"):] in sm_local.SCRIPTS:
        return set(_choices(sm_local.build_kind_parser(program, program[len("sm-local-ssh-"):])))
    if program == "sm-ssh-ide":
        return ide_subcommands()
    return {"sm-wait": {"stop", "list"},
            "sm-setup-ssh": {"configure", "start-ssh", "start-sshd"}}.get(
        program, set())


def _choices(parser: argparse.ArgumentParser) -> list[str]:
    return [c for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for c in a.choices]


def is_reference(span: str) -> bool:
    """`sm-ssh connect`, `sm-ssh list / connect`, `sm-ssh sandbox up|env`: names of
    subcommands rather than a command line (checked to exist, not parsed)."""
    words = span.split()
    if not words or words[0] not in programs():
        return False
    rest = [w for part in words[1:] for w in re.split(r"[/|]", part) if w]
    valid = subcommands(words[0])
    # Anything else (a target, an option, an unknown word) makes it a command line to parse.
    return bool(rest) and set(rest) <= valid


def python_code(text: str) -> str:
    """Python blocks, plus inline code that reads like Python (a call or an import)."""
    blocks = [body for lang, body in code_blocks(text) if lang in ("python", "py")]
    spans = [s for s in inline_code(text) if "(" in s or s.startswith(("from ", "import "))]
    return "\n\n\n".join(blocks + spans)


def programs() -> set[str]:
    scripts = {p.name for p in PACKAGE.glob("sm-*") if p.is_file()}
    entries = set(re.findall(r'"(sm-[\w-]+)\s*=', (ROOT / "setup.py").read_text()))
    return scripts | entries


def command_lines(text: str) -> Iterator[list[str]]:
    """argv of every use of one of our programs in the shell-ish code of ``text``."""
    known = programs()
    for line in shell_lines(text):
        for match in COMMAND_RE.finditer(line):
            if match.group(1) not in known:
                continue
            if line[:match.start()].rstrip().endswith(("pkill", "pgrep")):  # a process name
                continue
            rest = line[match.start():]
            rest = re.split(r"\s+#|\s\||\s&&|\s;|\)", rest, maxsplit=1)[0]
            # ssh_config tokens, as ssh would expand them
            rest = rest.replace("%p", "22").replace("%h", "job.training.sagemaker") \
                .replace("%n", "job.training.sagemaker")
            try:
                argv = shlex.split(rest)
            except ValueError:
                argv = rest.split()
            yield argv


def form(argv: list[str]) -> str:
    """``sm-ssh connect [training] -L``: the program, its subcommand (for sm-ssh targets also
    the resource kind), then the options in order (values and positional arguments left out;
    ``--`` kept; nothing after ``--``)."""
    program, args = argv[0], argv[1:]
    head = [program]
    subcommand_programs = ("sm-ssh", "sm-wait", "sm-setup-ssh", "sm-ssh-ide")
    if "--" in args:
        args = args[:args.index("--") + 1]
    options = [a.split("=")[0] for a in args if a.startswith("-")]
    if program in subcommand_programs or program.startswith("sm-local-ssh-"):
        values = _option_values(args)
        words = [a for a in args if not a.startswith("-") and a not in values]
        if words:
            head.append("<seconds>" if program == "sm-wait" and words[0].isdigit()
                        else words[0])
        if program == "sm-ssh" and words[:1] == ["sandbox"] and len(words) > 1:
            head.append(words[1])
        if program == "sm-ssh" and words[:1] in (["connect"], ["list"], ["start-proxy"],
                                                  ["doctor"]) and \
                (words[:1] != ["doctor"] or len(words) > 1):
            target = words[1] if len(words) > 1 else "sagemaker"
            kind = re.search(r"(?:^|\.)(\w+)\.sagemaker$", target)
            head.append(f"[{kind.group(1) if kind else 'all'}]")
    return " ".join(head + options)


def _option_values(args: list[str]) -> set[str]:
    """Arguments that are values of a preceding option (``--region R``)."""
    valued = {"--profile", "--region", "--output", "--index", "--node", "--wait", "--port",
              "--instance",
              "--local-port", "--days", "-L", "-R", "-p", "-o", "-l", "-i"}
    values = set()
    for before, item in zip(args, args[1:]):
        if before in valued:
            values.add(item)
    return values


def all_commands() -> Iterator[tuple[str, list[str]]]:
    for name in DOCS:
        for argv in command_lines(doc_text(name)):
            yield name, argv


# -- the checks --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DOCS)
def test_every_sm_command_exists(name: str) -> None:
    known = programs()
    text = doc_text(name)
    unknown = set()
    for match in COMMAND_RE.finditer(text):
        word = match.group(1)
        after = text[match.end():match.end() + 2]
        if after in ("-<", "-{", "-*"):  # a family: sm-local-ssh-<kind>, sm-local-*
            if not any(p.startswith(word + "-") for p in known):
                unknown.add(word + "-*")
            continue
        if word not in known and word not in NOT_COMMANDS:
            unknown.add(word)
    assert not unknown, f"{name} mentions commands that do not exist: {sorted(unknown)}"


def _check_sm_ssh(argv: list[str]) -> None:
    args = argv[1:]
    if sm_ssh.wants_version(args):  # sm-ssh --version, sm-ssh -v
        return
    sandbox = sm_ssh.split_sandbox(args)
    if sandbox is not None:
        from sagemaker_ssh_sandbox import cli

        cli._parser().parse_args(sandbox[1])
        return
    head, command = sm_ssh.split_arguments(args)
    parsed = sm_ssh.build_parser().parse_args(head)
    if parsed.command in ("connect", "tunnel"):
        assert parsed.fqdn, f"{parsed.command} needs a target"
        assert parsed.command == "connect" or not command, "'--' only goes with connect"
        check_ssh_options(parsed.ssh_args)
    elif parsed.command == "exec":
        assert command, "exec runs the command after '--'"
    else:
        assert not command, "'--' only goes with connect"


SSH_FLAGS = set("46AaCfGgKkMNnqsTtVvXxYy") | connect.SSH_FLAGS_WITH_VALUE


def check_ssh_options(args: list[str]) -> None:
    """What follows the target must be options ssh(1) knows (then a command)."""
    options, _, _ = connect.split_connect_args(args, connect.Choice(), (sm_ssh.KEEP_ALIVE,))
    values = {after for before, after in zip(options, options[1:])
              if before[-1:] in connect.SSH_FLAGS_WITH_VALUE and before.startswith("-")}
    for item in options:
        if item in values:
            continue
        letters = item[1:]
        assert not item.startswith("--") and letters, f"ssh has no option {item}"
        for letter in letters:
            assert letter in SSH_FLAGS, f"ssh has no option -{letter}"
            if letter in connect.SSH_FLAGS_WITH_VALUE:
                break  # the rest of the word is the value (-p22)


def _check_local(argv: list[str]) -> None:
    program, args = argv[0], argv[1:]
    if program == "sm-local-configure":
        assert args in ([], ["--check"], ["--no-awscli"]), \
            "sm-local-configure [--check | --no-awscli]"
    elif program == "sm-local-start-ssh":
        opts, rest = leading(args, sm_local.START_SSH_OPTIONS)
        check_ssh_options(rest[1:])
    elif program == "sm-connect-ssh-proxy":
        _, rest = leading(args, sm_local.PROXY_OPTIONS)
        assert len(rest) <= 2, "sm-connect-ssh-proxy takes <target> [port]"
    else:
        kind = program[len("sm-local-ssh-"):]
        head, _ = sm_ssh.split_command(args)
        parser = sm_local.build_kind_parser(program, kind)
        parser.parse_args(sm_local._bare_app(parser, head) if kind == "ide" else head)


def ide_subcommands() -> set[str]:
    """The words of the ``case`` patterns in the sm-ssh-ide script."""
    text = (PACKAGE / "sm-ssh-ide").read_text().replace("\\\n", " ")
    words: set[str] = set()
    for pattern in re.findall(r"^\s*([a-z][a-z| \\-]*)\)", text, re.M):
        words |= {w.strip(" \\") for w in pattern.split("|") if w.strip(" \\")}
    return words


def check_command(argv: list[str]) -> None:
    """Parse ``argv`` with the program's real parser (UsageError/SystemExit if refused)."""
    program, args = argv[0], argv[1:]
    if program == "sm-ssh":
        _check_sm_ssh(argv)
    elif program.startswith("sm-local-") or program == "sm-connect-ssh-proxy":
        _check_local(argv)
    elif program == "sm-ssh-deregister-instances":
        from sagemaker_ssh_helper import deregister_old_instances_from_ssm as dereg

        dereg.build_parser().parse_args(args)
    elif program == "sm-wait":
        assert len(args) == 1 and (args[0] in ("stop", "list") or args[0].isdigit()
                                   or args[0].startswith("<")), "sm-wait <seconds>|stop|list"
    elif program == "sm-ssh-ide":
        assert args and args[0] in ide_subcommands(), f"sm-ssh-ide has no command {args[:1]}"
    elif program == "sm-setup-ssh":
        assert args[:1] in ([], ["configure"], ["start-ssh"]), "sm-setup-ssh [configure|start-ssh]"


@pytest.mark.parametrize("name", DOCS)
def test_every_command_line_parses(name: str) -> None:
    bad = []
    for argv in command_lines(doc_text(name)):
        try:
            check_command(argv)
        except (UsageError, AssertionError, SystemExit) as e:
            bad.append(f"{shlex.join(argv)}: {e}")
    assert not bad, f"{name}: command lines the real parsers refuse:\n" + "\n".join(bad)


def test_every_command_form_is_exercised_by_a_test() -> None:
    missing = sorted({f"{name}: {form(argv)}  ({shlex.join(argv)})"
                      for name, argv in all_commands() if form(argv) not in COVERAGE})
    assert not missing, ("command forms shown in the docs with no test listed in "
                         "tests/test_docs.py COVERAGE:\n" + "\n".join(missing))


def test_the_listed_tests_exist() -> None:
    absent = []
    for tests in COVERAGE.values():
        for ref in tests:
            file, _, test = ref.partition("::")
            source = (ROOT / "tests" / file).read_text() if (ROOT / "tests" / file).exists() else ""
            if not re.search(rf"^def {re.escape(test)}\(", source, re.M):
                absent.append(ref)
    assert not absent, f"COVERAGE names tests that do not exist: {absent}"


def _imports(code: str) -> Iterator[tuple[str, str]]:
    """(module, name) of each ``from sagemaker_ssh_helper... import name`` in ``code``."""
    for piece in code.split("\n\n\n"):
        try:
            tree = ast.parse(piece)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "sagemaker_ssh_helper"):
                for alias in node.names:
                    yield str(node.module), alias.name


@pytest.mark.parametrize("name", DOCS)
def test_python_names_exist(name: str) -> None:
    text = doc_text(name)
    code = python_code(text)
    scope: dict[str, object] = {"sagemaker_ssh_helper": importlib.import_module(
        "sagemaker_ssh_helper")}
    bad = []
    for module, attr in _imports(code):
        mod = importlib.import_module(module)
        if hasattr(mod, attr):
            scope[attr] = getattr(mod, attr)
        elif not hasattr(mod, "__path__") or importlib.util.find_spec(f"{module}.{attr}") is None:
            bad.append(f"from {module} import {attr}")
    # wrapper = SSHEstimatorWrapper.create(...): later wrapper.method( must exist on the class
    for piece in code.split("\n\n\n"):
        local = dict(scope)
        for var, cls in re.findall(r"(\w+)\s*=\s*(\w+)\.(?:create|attach|attach_arn)\(", piece):
            if cls in local:
                local[var] = local[cls]
        for obj, attr in re.findall(r"\b(\w+)\.(\w+)\(", piece):
            if obj in local and not hasattr(local[obj], attr):
                bad.append(f"{obj}.{attr}")
    for module in re.findall(r"python3? -m (sagemaker_ssh_helper[\w.]*)", text):
        if importlib.util.find_spec(module) is None:
            bad.append(f"python -m {module}")
    assert not bad, f"{name} names Python objects that do not exist: {bad}"


@pytest.mark.parametrize("name", ("README.md", "FAQ.md"))
def test_python_blocks_are_valid_python(name: str) -> None:
    for lang, body in code_blocks(doc_text(name)):
        if lang in ("python", "py"):
            ast.parse(body)


def _sources() -> str:
    """Code that reads settings: the package's Python and bash (not the wrappers, which only
    write the contract), the examples and the lifecycle configuration script."""
    files = [p for p in PACKAGE.rglob("*.py") if not p.name.startswith("wrapper")]
    files += [p for p in PACKAGE.glob("sm-*") if p.is_file()]
    files += list((ROOT / "examples").glob("*.py")) + list(ROOT.glob("*.sh"))
    files += list((ROOT / "sagemaker_ssh_sandbox").rglob("*.py"))  # the sandbox's settings
    return "\n".join(p.read_text() for p in files)


@pytest.mark.parametrize("name", DOCS)
def test_environment_variables_are_read_by_the_code(name: str) -> None:
    source = _sources()
    unread = set()
    for var in set(ENV_VAR_RE.findall(doc_text(name))):
        read = (f'"{var}"' in source or f"'{var}'" in source or f"${{{var}" in source
                or re.search(rf"\${var}\b", source) is not None)
        if not read:
            unread.add(var)
    assert not unread, f"{name} documents variables no code reads: {sorted(unread)}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, blanks to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", prose, re.M)}


@pytest.mark.parametrize("name", DOCS)
def test_relative_links_resolve(name: str) -> None:
    text = doc_text(name)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = ROOT / path if path else ROOT / name
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
            broken.append(target)
    assert not broken, f"{name} links to missing files or headings: {broken}"


def test_readme_starts_with_the_two_newcomer_commands() -> None:
    text = doc_text("README.md")
    first_block = next(code_blocks(text))[1].splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == [
        "bash scripts/demo", "bash scripts/test"]
    assert text.index("bash scripts/demo") < text.index("## ")


def _table_names(text: str, heading: str) -> set[str]:
    """The backquoted names in the table that follows ``heading`` in docs/DESIGN.md."""
    section = text[text.index(heading):]
    rows = re.search(r"^\|.*?(?=^[^|\n])", section, re.M | re.S)
    assert rows, f"no table after {heading!r}"
    return set(re.findall(r"`([\w./-]+)`", rows.group(0)))


def test_design_maps_every_module_of_both_packages() -> None:
    """docs/DESIGN.md describes the house as it is: each module of the product is placed in a
    layer (section 1), each module of the sandbox in a part (section 6)."""
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    product = _table_names(text, "## 1. Three sides and a core")
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {"cdk/"}
    assert modules - product == set()
    sandbox_dir = ROOT / "sagemaker_ssh_sandbox"
    sandbox = _table_names(text, "## 6. The offline sandbox")
    parts = {p.name + "/" for p in sandbox_dir.iterdir() if (p / "__init__.py").is_file()}
    for part in sorted(parts - {"sagemaker/pyhook/"}):
        assert part in sandbox, part
    for path in sandbox_dir.rglob("*.py"):
        if path.stem != "__init__" and path.parent.name != "pyhook":
            assert path.stem in sandbox, path.relative_to(ROOT)
    # its links resolve from docs/
    for target in re.findall(r"\]\(([^)\s#]+)", text):
        assert (ROOT / "docs" / target).resolve().exists(), target
