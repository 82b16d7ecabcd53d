"""Every command line and ssh config block of the earlier versions' documents (the seed
documents, in ``shared/seeds/`` beside the repository) is either run by a test here or listed
in FAQ.md's table of commands that do not apply, with the reason.

Each line of the documents' code blocks (Python and Dockerfile blocks aside; a backslash joins
lines) must match one rule of ``RULES``: a test that runs it, a key of the FAQ table, or the
reason it is not a command (sample output, a listing, a comment). A line no rule matches, a
rule no line uses, a test that does not exist or a key missing from the FAQ fails the test.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
E2E = "test_client_sandbox_e2e.py::"
STUDIO = "test_studio_e2e.py::"
QUICK = E2E + "test_quick_setup_block_with_ssh_and_paramiko_on_two_jobs"
CONNECT = E2E + "test_connect_returns_the_commands_output_and_exit_code"
FORWARD = E2E + "test_local_and_remote_forwarding_carry_data_both_ways"
CONFIG = E2E + "test_plain_ssh_through_the_generated_config"
TEMPLATE = "test_client_scripts.py::test_sm_ssh_config_is_the_template"
RELEASE = "test_sandbox_journey_e2e.py::test_two_node_job_registers_one_instance_per_node"
PKILL = E2E + "test_stop_waiting_and_pkill_sm_wait_release_the_nodes_and_the_job_completes"
KIND_SCRIPT = E2E + "test_sm_local_ssh_training_connect_run_command_and_stop_waiting"
METHOD_A = (E2E + "test_aws_ssm_start_session_gives_a_shell_in_the_job",
            "test_sandbox_ssm_session.py::test_aws_cli_start_session_shell_and_ssh_document")
CONFIGURE = ("test_client_configure.py::test_awscli_v2_installed_after_verification_unless_told"
             "_not_to",)
JB = STUDIO + "test_jb_license_server_maps_the_host_in_the_app_and_reaches_the_laptop"
LCC = STUDIO + "test_lifecycle_config_installs_the_staged_wheel_and_refuses_upstream"
OUTPUT = "output"

# (regex on the whole line, verdict): a tuple of tests, "faq:<key>" or "output:<reason>".
RULES: list[tuple[str, object]] = [
    # -- installing and configuring the laptop
    (r"^(\$ |# )?pip install sagemaker-ssh-helper$", "faq:`pip install sagemaker-ssh-helper`"),
    (r"^pip install \./sagemaker-ssh-helper-VERSION/$",
     "faq:`pip install ./sagemaker-ssh-helper-VERSION/`"),
    (r"^sm-local-configure$", CONFIGURE),
    (r"^aws configure( list \| grep region)?$", "faq:`aws configure`"),
    (r"^aws s3 ls$|^export AWS_DEFAULT_REGION=eu-west-1$", "faq:`aws configure`"),
    # -- Method A: Session Manager shells, and the SSH document through the AWS CLI
    (r"^aws ssm start-session --target mi-[0-9a-f]+$", METHOD_A),
    (r"^aws ssm start-session --target mi-[0-9a-f]+ --document-name AWS-StartSSHSession "
     r"--parameters portNumber=22$", METHOD_A[1:]),
    # -- the sm-local-* scripts, the shared key and fixed ports
    (r"^sm-local-ssh-training connect \S+$", (QUICK, KIND_SCRIPT)),
    (r"^sm-local-ssh-training stop-waiting$", (KIND_SCRIPT,)),
    (r"^sm-local-ssh-ide <<kernel_gateway_app_name>>$", (JB,)),
    (r"^ssh -i ~/\.ssh/sagemaker-ssh-gw -p 1[01]022 root@localhost$", (QUICK,)),
    (r'^sm-local-start-ssh "\$INSTANCE_ID" -R localhost:12345:localhost:12345 '
     r"-L localhost:8787:localhost:8787 -L localhost:11022:localhost:22$", (QUICK,)),
    (r"^cat <<EOF >> ~/\.ssh/config$|^EOF$|^Host sagemaker-training$", (QUICK,)),
    # -- sm-ssh and plain ssh through ~/.ssh/config
    (r"^sm-ssh list( sagemaker)?$", (E2E + "test_list_shows_the_running_jobs_online",)),
    (r"^sm-ssh list studio\.sagemaker$", (STUDIO + "test_list_studio_shows_the_app_online",)),
    (r"^sm-ssh connect \S+\.training\.sagemaker$", (CONNECT,)),
    (r"^sm-ssh connect \S+\.training\.sagemaker -A -L 8501:localhost:8501$",
     (FORWARD, "test_client_unit.py::test_ssh_args_split_like_ssh")),
    (r"^sm-ssh connect fqdn\.sagemaker$", (CONNECT,)),
    (r"^sm-ssh connect app_name\.app_space_name\.domain_id\.studio\.sagemaker$",
     (STUDIO + "test_connect_as_sagemaker_user",)),
    (r"^sm-ssh connect default\.studio\.sagemaker$", (STUDIO + "test_connect_by_app_name_only",)),
    (r"^sm-ssh \[-h\] \[-v\]", "faq:sm-ssh [-h] [-v] {list,start-proxy,connect}"),
    (r"^Host \*\.studio\.sagemaker$|^Host \*\.\*\.sagemaker$", (TEMPLATE, CONFIG)),
    (r"^ssh \S+\.training\.sagemaker$", (CONFIG,)),
    (r"^ssh root@\S+\.training\.sagemaker sm-wait stop$", (CONFIG, RELEASE)),
    (r"^ssh -A -L localhost:8080:localhost:8080 \S+\.training\.sagemaker$", (CONFIG, FORWARD)),
    (r"^ssh -R localhost:12345:localhost:12345 root@\S+\.training\.sagemaker$", (FORWARD,)),
    (r"^ssh -L localhost:8889:localhost:8889 root@\S+\.studio\.sagemaker$",
     (STUDIO + "test_jupyter_server_reachable_through_local_forwarding",)),
    (r"^ssh -L localhost:5901:localhost:5901 -R localhost:443:\S+:443 root@\S+\.studio\.sagemaker$",
     (STUDIO + "test_vnc_answers_rfb_through_the_tunnel", JB)),
    (r"^ssh -L localhost:5901:localhost:5901 -L localhost:8787:localhost:8787 "
     r"\S+studio\.sagemaker$",
     (STUDIO + "test_vnc_answers_rfb_through_the_tunnel",)),
    (r"^ssh -L localhost:10022:localhost:22 fqdn$",
     "faq:`ssh -L localhost:10022:localhost:22 fqdn`"),
    (r"^(% )?ssh-add$", "faq:`ssh-add`"),
    (r"^ssh -A connect ", "faq:`ssh -A connect sagemaker-data-science-ml-m5-large-"),
    (r"^AWS_PROFILE=<<profile_name>> sm-ssh connect ", "faq:`AWS_PROFILE=<<profile_name>> sm-ssh"),
    (r"^AWS_REGION=eu-west-2 AWS_DEFAULT_REGION=eu-west-2 sm-ssh connect ",
     "faq:`AWS_REGION=eu-west-2 AWS_DEFAULT_REGION=eu-west-2 sm-ssh"),
    (r"^export SSH_AUTHORIZED_KEYS_PATH=", "faq:`export SSH_AUTHORIZED_KEYS_PATH="),
    # -- in the container
    (r"^sm-wait stop$|^pkill sm-wait$", (RELEASE, PKILL)),
    (r"^ps xfa \| grep sshd$|^tail /var/log/amazon/ssm/\*\.log && date$|^find / -name",
     "faq:`ps xfa \\| grep sshd`"),
    (r"^setfacl |^su sagemaker-user$|^cd \$HOME$|^git clone (\.\.\.|git@)",
     "faq:`setfacl -m sagemaker-user:x"),
    (r"^start_ssh_ide$|^LOCAL_USER_ID=", "faq:`start_ssh_ide`"),
    (r"^(\$ )?(cvt|xrandr) ", "faq:`cvt 1920 970 60`"),
    # -- Studio: the notebook installed with the package
    (r"^SM_SSH_PREFIX=`python -c 'import sys; print\(sys\.prefix\);'`$|^echo \$SM_SSH_PREFIX$|"
     r"^cp \$SM_SSH_PREFIX/sm_ssh/SageMaker_SSH_IDE\.ipynb ~/user-default-efs/$", (LCC,)),
    # -- the IDE and the Mac
    (r"^tail -f ~/Library/Logs/|^sudo bash -c \"echo '/Users/",
     "faq:`tail -f ~/Library/Logs/JetBrains/PyCharm2024.1/idea.log`"),
    # -- CDK (synthesized by the CDK tests; deploying needs an account)
    (r'^APP="python -m sagemaker_ssh_helper\.cdk\.low_gpu_lambda_app"$|^AWS_REGION=\$REGION cdk ',
     "faq:`cdk -a \"$APP\" deploy Low-GPU-Lambda-Stack`"),
    # -- the quick-setup guide's third-party account setup
    (r"^git clone https://github\.com/Chen188/|^cd ssh-helper-quickstart && |^bash one-click-setup",
     "faq:`git clone https://github.com/Chen188/ssh-helper-quickstart`"),
    # -- not commands: sample output, listings, comments, placeholders
    (r"^An error occurred \(|^Successfully registered the instance|^Connection closed by |"
     r"^region +eu-west-1 |^Identity added: |^Certificate added: |^\d{4}-\d\d-\d\d \d\d:|"
     r"^Modeline ", "output:sample output or a log line"),
    (r"^#|^\.\.\.$", "output:a comment or an ellipsis"),
    (r"^\./|^(setup\.py|log\.py|__init\.py__|train\.py|sagemaker_ssh_helper/)$",
     "output:a listing of the unpacked project"),
]
SSH_CONFIG_KEYS = ("HostName", "IdentityFile", "Port", "User", "PasswordAuthentication",
                   "ConnectTimeout", "ServerAliveInterval", "ServerAliveCountMax",
                   "ProxyCommand")


def seeds_dir() -> Path | None:
    for parent in ROOT.parents:
        candidate = parent / "shared" / "seeds"
        if candidate.is_dir():
            return candidate
    return None


def seed_lines(folder: Path) -> Iterator[tuple[str, str]]:
    """(document, line) for each line of each code block; ssh config lines are reported as
    their block's ``Host`` line."""
    for doc in sorted(folder.glob("*.md")):
        if doc.name == "README.md":  # the folder's own index
            continue
        text = doc.read_text()
        for match in re.finditer(r"^\s*```(\w*)\s*\n(.*?)^\s*```", text, re.S | re.M):
            if match.group(1).lower() in ("python", "py", "dockerfile"):
                continue
            host = None
            for line in match.group(2).replace("\\\n", " ").splitlines():
                line = " ".join(line.split())
                if not line:
                    continue
                if line.startswith("Host "):
                    host = line
                elif host and line.split(" ", 1)[0] in SSH_CONFIG_KEYS:
                    line = host
                yield doc.name, line


def verdict(line: str) -> tuple[int | None, object]:
    for index, (pattern, result) in enumerate(RULES):
        if re.search(pattern, line):
            return index, result
    return None, None


def faq_table_keys() -> list[str]:
    text = (ROOT / "FAQ.md").read_text()
    section = text.split("## Commands from earlier documents that do not apply", 1)[1]
    return [re.split(r"(?<!\\)\|", row)[1].strip() for row in section.splitlines()
            if row.startswith("| ") and not row.startswith("| command in")]


@pytest.fixture(scope="module")
def seeds() -> Path:
    folder = seeds_dir()
    if folder is None:
        pytest.skip("the seed documents (shared/seeds beside the repository) are not here")
    return folder


def test_every_seed_command_line_is_tested_or_explained(seeds: Path) -> None:
    lines = list(seed_lines(seeds))
    assert len(lines) > 100, "the seed documents' code blocks were not found"
    unmatched = sorted({f"{doc}: {line}" for doc, line in lines if verdict(line)[0] is None})
    assert not unmatched, "seed command lines with no test and no FAQ entry:\n" + \
        "\n".join(unmatched)
    used = {verdict(line)[0] for _, line in lines}
    unused = [RULES[i][0] for i in range(len(RULES)) if i not in used]
    assert not unused, f"rules that match no seed line (stale): {unused}"


def test_the_tests_named_exist() -> None:
    missing = []
    for _, result in RULES:
        for ref in result if isinstance(result, tuple) else ():
            file, _, name = ref.partition("::")
            path = ROOT / "tests" / file
            if not path.exists() or f"def {name}(" not in path.read_text():
                missing.append(ref)
    assert not missing, f"tests named in RULES that do not exist: {missing}"


def test_not_applicable_commands_are_in_the_faq_table() -> None:
    keys = faq_table_keys()
    assert keys, "FAQ.md has no table of commands that do not apply"
    wanted = {str(result)[len("faq:"):] for _, result in RULES if str(result).startswith("faq:")}
    missing = sorted(w for w in wanted if not any(key.startswith(w) for key in keys))
    assert not missing, f"FAQ.md's table lacks rows for: {missing}"
    orphans = [key for key in keys if not any(key.startswith(w) for w in wanted)]
    assert not orphans, f"FAQ.md's table has rows no seed line refers to: {orphans}"


def test_rules_cover_the_documented_flows_by_kind() -> None:
    """The issue's named flows each map to their test (a guard against loosened rules)."""
    by_line: dict[str, object] = {
        "aws ssm start-session --target mi-1234567890abcdef0": METHOD_A,
        "pkill sm-wait": (RELEASE, PKILL),
        "Host sagemaker-training": (QUICK,),
        "sm-local-ssh-ide <<kernel_gateway_app_name>>": (JB,),
        "pip install sagemaker-ssh-helper": "faq:`pip install sagemaker-ssh-helper`",
    }
    for line, expected in by_line.items():
        assert verdict(line)[1] == expected, line
