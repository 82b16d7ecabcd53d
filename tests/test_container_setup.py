"""sm-setup-ssh in a private container: configure, the one-setup lock, start-ssh, a real login."""
from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_container_support import PACKAGE_DIR, PYTHON, Container, namespaces_available

pytestmark = pytest.mark.skipif(not namespaces_available(),
                                reason="needs root and Linux namespaces")
SCRIPTS = ["sm-setup-ssh", "sm-init-ssm", "sm-wait", "sm-save-env"]
JOB_ARN = "arn:aws:sagemaker:us-east-1:123456789012:training-job/ssh-job"
REGISTERED = re.compile(r"Successfully registered the instance with AWS SSM using Managed "
                        r"instance-id: (mi-[0-9a-f]{17})")


@pytest.fixture
def container() -> Iterator[Container]:
    c = Container.create()
    yield c
    c.remove()


def digest(path: str) -> str:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "absent"


HOST_FILES = ["/etc/ssh/sshd_config", "/etc/environment", "/etc/pam.d/sshd"]


@pytest.fixture
def host_untouched() -> Iterator[None]:
    before = {f: digest(f) for f in HOST_FILES}
    assert not Path("/opt/sagemaker-ssh-helper").exists()
    yield
    assert {f: digest(f) for f in HOST_FILES} == before
    assert not Path("/opt/sagemaker-ssh-helper").exists()


def training_env(container: Container, **extra: str) -> dict[str, str]:
    config = container.root / "ml" / "input" / "config" / "resourceconfig.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]}))
    return container.env({
        "SAGEMAKER_BASE_DIR": str(container.root / "ml"), "START_SSH": "true",
        "SSH_SSM_ROLE": "SSMRole", "SSH_OWNER_TAG": "AIDAOWNER:alice",
        "SSH_WAIT_TIME_SECONDS": "600", "SSH_INSTANCE_COUNT": "2", "SSH_LOG_TO_STDOUT": "false",
        "TRAINING_JOB_NAME": "ssh-job", "TRAINING_JOB_ARN": JOB_ARN, **extra})


def test_shellcheck_is_clean() -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed")
    proc = subprocess.run(["shellcheck", *(str(PACKAGE_DIR / s) for s in SCRIPTS)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_usage(container: Container) -> None:
    proc = container.run(r'''
bash "$PKG/sm-setup-ssh" --help
bash "$PKG/sm-setup-ssh" frobnicate || echo "rc=$?"
''')
    assert proc.stdout.splitlines()[0] == ("sm-setup-ssh [configure|start-ssh|start-sshd]: start "
                                           "sshd and the SSM agent in a SageMaker container.")
    assert proc.stdout.splitlines()[-1] == "rc=2"
    assert proc.stderr == ("sm-setup-ssh: unknown argument 'frobnicate'; usage: sm-setup-ssh "
                           "[configure|start-ssh|start-sshd]\n")


def test_configure_writes_a_config_sshd_accepts_once(container: Container,
                                                     host_untouched: None) -> None:
    """configure (e.g. in a Dockerfile) leaves no host keys behind, not even the image's: every
    container makes its own when SSH starts."""
    proc = container.run(r'''
rm -f /etc/ssh/ssh_host_ed25519_key*  # (the overlay's, not the host's)
mkdir -p /etc/ssh && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key  # "baked"
bash "$PKG/sm-setup-ssh" configure 2>"$R/first"
bash "$PKG/sm-setup-ssh" configure 2>"$R/second"
echo "host keys: $(find /etc/ssh -name 'ssh_host_*' | wc -l)"
ssh-keygen -q -t ed25519 -N '' -f /tmp/k
/usr/sbin/sshd -t -f /etc/ssh/sshd_config -h /tmp/k && echo "sshd accepts it"
test -f /opt/sagemaker-ssh-helper/.ssh-configured && echo "marker written"
''')
    assert proc.stdout.splitlines() == ["host keys: 0", "sshd accepts it", "marker written"], \
        container.report(proc)
    config = container.host_path("/etc/ssh/sshd_config").read_text()
    for line in ("PermitRootLogin prohibit-password", "PasswordAuthentication no",
                 "PubkeyAuthentication yes", "AuthorizedKeysFile /etc/ssh/authorized_keys",
                 "ClientAliveInterval 60", "UseDNS no", "UsePAM yes"):
        assert f"\n{line}\n" in config
    assert container.host_path("/etc/ssh/sshd_config.orig").read_text() == \
        Path("/etc/ssh/sshd_config").read_text()
    assert (container.root / "second").read_text() == \
        "sm-setup-ssh: already configured (/opt/sagemaker-ssh-helper/.ssh-configured exists)\n"
    pam = container.host_path("/etc/pam.d/sshd").read_text()
    assert re.search(r"^session\s+optional\s+pam_loginuid\.so", pam, re.M)


def test_configure_without_an_agent_or_network_fails_clearly(container: Container,
                                                             host_untouched: None) -> None:
    env = container.env({"AWS_REGION": "eu-west-1"}, agent=False)
    proc = container.run(r'''
bash "$PKG/sm-setup-ssh" configure || echo "rc=$?"
test -f /opt/sagemaker-ssh-helper/.ssh-configured || echo "no marker"
''', env=env)
    assert proc.stdout.splitlines() == ["rc=1", "no marker"], container.report(proc)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
    url = (f"https://amazon-ssm-eu-west-1.s3.eu-west-1.amazonaws.com/latest/debian_{arch}/"
           "amazon-ssm-agent.deb")
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"sm-setup-ssh: ERROR: cannot download the SSM agent from {url} (no access "
                    "to S3? install amazon-ssm-agent in the image, e.g. with 'sm-setup-ssh "
                    "configure' in its Dockerfile)")


FAKE_PIP = """\
import os, sys
here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(here, "pip-args"), "w") as f:
    f.write(" ".join(sys.argv[1:]))
for name in ("boto3", "botocore"):
    os.makedirs(os.path.join(here, name), exist_ok=True)
    open(os.path.join(here, name, "__init__.py"), "w").close()
"""


def test_configure_needs_boto3_and_tries_pip(container: Container,
                                             host_untouched: None) -> None:
    fake_pip = container.root / "fakepip" / "pip"
    fake_pip.mkdir(parents=True)
    (fake_pip / "__init__.py").write_text("")
    (fake_pip / "__main__.py").write_text(FAKE_PIP)
    isolated = container.root / "isolated-python"  # a Python without site-packages
    isolated.write_text(f'#!/bin/bash\nexec "{PYTHON}" -S "$@"\n')
    isolated.chmod(0o755)
    proc = container.run(rf"""
export SM_SSH_PYTHON="{isolated}"
bash "$PKG/sm-setup-ssh" configure 2>"$R/no-pip" || echo "rc=$?"
test -f /opt/sagemaker-ssh-helper/.ssh-configured || echo "no marker"
PYTHONPATH="$R/fakepip:$PYTHONPATH" bash "$PKG/sm-setup-ssh" configure 2>"$R/with-pip"
test -f /opt/sagemaker-ssh-helper/.ssh-configured && echo "configured"
""")
    assert proc.stdout.splitlines() == ["rc=1", "no marker", "configured"], \
        container.report(proc)
    assert (container.root / "no-pip").read_text().strip().splitlines()[-1] == (
        f"sm-setup-ssh: ERROR: boto3 is not importable by {isolated} and pip could not install "
        "it: install boto3 for this Python in the image (or set SM_SSH_PYTHON to a Python that "
        "has it)")
    assert (container.root / "fakepip" / "pip-args").read_text().split()[0] == "install"
    assert (container.root / "fakepip" / "pip-args").read_text().split()[-1] == "boto3"
    with_pip = (container.root / "with-pip").read_text()
    assert "sm-setup-ssh: installed boto3\n" in with_pip
    assert "sm-setup-ssh: configured sshd and the SSM agent\n" in with_pip


def test_an_installed_package_is_not_put_on_pythonpath(container: Container) -> None:
    """Whatever the setup exports reaches the SSM agent, SSH sessions and /etc/environment."""
    for name in ("site", "shipped"):
        shutil.copytree(PACKAGE_DIR, container.root / name / "sagemaker_ssh_helper",
                        ignore=shutil.ignore_patterns("__pycache__"))
    # Pythons that record the PYTHONPATH they are run with; "site-python" also imports from
    # $R/site, as a Python with the package in its site-packages does.
    for name, run in (("site-python", 'PYTHONPATH="$R/site${PYTHONPATH:+:$PYTHONPATH}" exec'),
                      ("plain-python", "exec")):
        spy = container.root / name
        spy.write_text(f'#!/bin/bash\nR={container.root}\n'
                       f'printf "%s\\n" "${{PYTHONPATH-unset}}" >>"$R/{name}.seen"\n'
                       f'{run} "{PYTHON}" "$@"\n')
        spy.chmod(0o755)
    env = {k: v for k, v in container.env().items() if k != "PYTHONPATH"}
    proc = container.run(r"""
SM_SSH_PYTHON="$R/site-python" bash "$R/site/sagemaker_ssh_helper/sm-setup-ssh" configure
rm /opt/sagemaker-ssh-helper/.ssh-configured
SM_SSH_PYTHON="$R/plain-python" bash "$R/shipped/sagemaker_ssh_helper/sm-setup-ssh" configure
""", env=env)
    assert proc.returncode == 0, container.report(proc)
    # run by hand, configure asks Python whether it is importable, for the settings
    # (contract setup-args) and for boto3
    assert (container.root / "site-python.seen").read_text().splitlines() == ["unset"] * 3
    assert (container.root / "plain-python.seen").read_text().splitlines() == \
        ["unset"] + [str(container.root / "shipped")] * 2


SSH = ("ssh -i /tmp/key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
       "-o BatchMode=yes -o LogLevel=ERROR root@127.0.0.1")
TRICKY = {"CUSTOM": 'spaces  and "double" quotes', "SINGLE": "it's", "NEWLINES": "one\ntwo"}


def test_two_concurrent_setups_start_one_and_users_can_log_in(
        container: Container, host_untouched: None) -> None:
    env = training_env(container, **TRICKY)
    started = int(time.time())
    proc = container.run(rf'''
start_aws
# what an unprivileged process could plant in /tmp before the job's setup runs
echo keep >/etc/root-file
ln -s /etc/root-file /tmp/sm-ssh-setup.lock
ln -s /etc/root-file /tmp/sm-ssh-install.lock
boot='import sagemaker_ssh_helper as s; s.setup_and_start_ssh()'
"$PY" -c "$boot" >"$R/setup1" 2>&1 & p1=$!
"$PY" -c "$boot" >"$R/setup2" 2>&1 & p2=$!
wait_for 90 test -s /opt/sagemaker-ssh-helper/mi-id
wait_for 30 bash -c '"$PKG/sm-wait" 1 | grep -q "SSM agent running, registered as"'
bash "$PKG/sm-wait" 1 | head -1 >"$R/status"
ssh-keygen -q -t ed25519 -N '' -f /tmp/key
cp /tmp/key.pub /etc/ssh/authorized_keys
{SSH} 'printenv CUSTOM; printenv SINGLE; printenv START_SSH' >"$R/ssh-env"
{SSH} 'bash -lc "printenv NEWLINES"' >"$R/ssh-login-env"
{SSH} 'sm-wait list' >"$R/ssh-list"
{SSH} '"$SM_SSH_PYTHON" -c "from sagemaker_ssh_helper import idle; print(idle.count_sessions())"' \
  >"$R/ssh-sessions"
{SSH} 'sm-wait stop' >"$R/ssh-stop"
wait "$p1" && wait "$p2" && echo "both setups returned"
''', env=env, timeout=240)
    assert proc.stdout.splitlines() == ["both setups returned"], container.report(proc)

    def read(name: str) -> str:
        return (container.root / name).read_text()

    setups = [read("setup1"), read("setup2")]
    both = "".join(setups)
    assert sorted("starting the SSH setup in the background" in s for s in setups) == \
        [False, True]
    assert sorted("the SSH setup is already running in this container; only waiting" in s
                  for s in setups) == [False, True]
    assert "sm-setup-ssh: SSH Helper Log IP: " in both
    match = REGISTERED.search(both)
    assert match, both
    instance_id = match.group(1)
    assert read("status").startswith("sm-wait: 1 s left; SSM agent running, registered as "
                                     f"{instance_id};")

    # one registration, tagged for this job; deregistered when the job's process exited
    state = container.ssm_state()
    [instance] = state["instances"]
    assert state["activations"] == []
    tags = instance["tags"]
    assert started <= int(tags.pop("SSHTimestamp")) <= int(time.time())
    assert tags == {"SSHOwner": "AIDAOWNER:alice", "SSHCreator": "AKIAIOSFODNN7EXAMPLE",
                    "SSHResourceName": "ssh-job", "SSHResourceArn": JOB_ARN}
    assert instance["deregistered"]
    assert f"deregistered {instance_id} from SSM" in both

    # the SSH session sees the job's environment (pam_env, and profile.d for login shells)
    assert read("ssh-env").splitlines() == [TRICKY["CUSTOM"], TRICKY["SINGLE"], "false"]
    assert read("ssh-login-env") == TRICKY["NEWLINES"] + "\n"
    listed = read("ssh-list").splitlines()
    assert len(listed) == 2 and all(re.fullmatch(r"PID \d+: \d+ s left of 600 s", line)
                                    for line in listed)
    assert int(read("ssh-sessions")) >= 1
    assert read("ssh-stop").startswith("sm-wait: created /tmp/sm-wait-stopped")
    for script in SCRIPTS:
        assert container.host_path(f"/usr/local/bin/{script}").read_text().endswith(
            f"exec bash {PACKAGE_DIR / script} \"$@\"\n")
    assert container.host_path("/opt/sagemaker-ssh-helper/.ssh-configured").exists()
    # the locks were neither truncating through the planted links nor fooled by them
    assert container.host_path("/etc/root-file").read_text() == "keep\n"
    assert oct((container.root / "run" / "sagemaker-ssh-helper").stat().st_mode & 0o777) \
        == "0o700"


def test_agent_restarts_are_bounded(container: Container) -> None:
    agent = container.root / "bin" / "amazon-ssm-agent"
    agent.write_text(f"""#!{PYTHON}
# registers through the stand-in, but the daemon dies at once
import sys
if "-register" not in sys.argv:
    print("agent daemon exiting")
    sys.exit(3)
from sagemaker_ssh_sandbox.ssm.agent import main
sys.exit(main())
""")
    env = training_env(container, SSH_LOG_TO_STDOUT="true", SM_SSH_AGENT_MAX_RESTARTS="2")
    proc = container.run(r'''
start_aws
bash "$PKG/sm-setup-ssh" configure 2>/dev/null
bash "$PKG/sm-setup-ssh" start-ssh || echo "rc=$?"
''', env=env, timeout=120)
    assert proc.stdout.splitlines() == ["agent daemon exiting"] * 3 + ["rc=1"], \
        container.report(proc)
    log = [line for line in proc.stderr.splitlines() if line.startswith("sm-setup-ssh: ")]
    [instance] = container.ssm_state()["instances"]
    assert log[-4:] == [
        "sm-setup-ssh: amazon-ssm-agent exited with code 3; restarting in 1 s (1 of 2)",
        "sm-setup-ssh: amazon-ssm-agent exited with code 3; restarting in 2 s (2 of 2)",
        "sm-setup-ssh: ERROR: amazon-ssm-agent exited 2 times in a row (last code 3); giving up",
        f"sm-setup-ssh: deregistered {instance['instance_id']} from SSM",
    ]
    assert instance["deregistered"]  # an instance nobody can reach is not left registered
    # sm-wait lets the job go on (after a short grace) instead of holding it
    assert container.host_path("/opt/sagemaker-ssh-helper/setup-failed").read_text() == \
        "amazon-ssm-agent exited 2 times in a row (last code 3)\n"


def test_stopped_or_killed_jobs_deregister_and_sshd_is_kept_running(container: Container) -> None:
    """SIGTERM (StopTrainingJob) skips Python's atexit: the setup's owner deregisters on the
    signal. A killed owner is noticed by the setup's watchdog, which also restarts sshd."""
    env = training_env(container)
    proc = container.run(r'''
start_aws
state=/opt/sagemaker-ssh-helper
boot='import sagemaker_ssh_helper as s; s.setup_and_start_ssh(); print("released", flush=True)'
sshd_pid() { cat /run/sshd.pid 2>/dev/null; }
"$PY" -c "$boot" >"$R/setup1" 2>&1 & p1=$!
wait_for 90 test -s "$state/mi-id"
cp "$state/mi-id" "$R/mi1"
wait_for 30 test -s /run/sshd.pid
old="$(sshd_pid)"; kill "$old"
wait_for 20 bash -c 'p="$(cat /run/sshd.pid 2>/dev/null)"; [[ -n "$p" && "$p" != '"$old"' ]] &&
                     kill -0 "$p"'
echo "sshd restarted"
kill -TERM "$p1"
wait "$p1" || echo "owner ended by signal $(($? - 128))"
wait_for 30 bash -c '! pgrep -f "sm-setup-ssh start-ss[h]" >/dev/null'  # the watchdog ends it
"$PY" -c "$boot" >"$R/setup2" 2>&1 & p2=$!
wait_for 90 bash -c 'test -s '"$state"'/mi-id && ! cmp -s '"$state"'/mi-id "$R/mi1"'
cp "$state/mi-id" "$R/mi2"
kill -KILL "$p2"
wait "$p2" || echo "owner ended by signal $(($? - 128))"
wait_for 30 bash -c '! test -e '"$state"'/mi-id'
echo "mi-id removed"
''', env=env, timeout=240)
    assert proc.stdout.splitlines() == ["sshd restarted", "owner ended by signal 15",
                                        "owner ended by signal 9", "mi-id removed"], \
        container.report(proc)
    first, second = ((container.root / name).read_text().strip() for name in ("mi1", "mi2"))
    instances = {i["instance_id"]: i for i in container.ssm_state()["instances"]}
    assert instances[first]["deregistered"] and instances[second]["deregistered"]
    setup1, setup2 = ((container.root / name).read_text() for name in ("setup1", "setup2"))
    assert f"deregistered {first} from SSM" in setup1 and "released" not in setup1
    assert "sm-setup-ssh: sshd started" in setup1  # by the watchdog, after the kill
    assert "the process that started the SSH setup" in setup2
    assert f"sm-setup-ssh: deregistered {second} from SSM" in setup2


def test_the_key_push_starts_sshd_with_keys_of_its_own(container: Container) -> None:
    """With sshd not running, the key push (SendCommand) starts it through `sm-setup-ssh
    start-sshd`, which makes host keys first; ssh then meets exactly the keys reported."""
    from sagemaker_ssh_helper import keys

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(container.root / "key")], check=True)
    line = (container.root / "key.pub").read_text().strip()
    (container.root / "push.sh").write_text(keys.authorized_keys_script(line, "sm-ssh:test"))
    proc = container.run(r'''
bash "$PKG/sm-setup-ssh" configure 2>/dev/null
ln -s "$PKG/sm-setup-ssh" /usr/local/bin/sm-setup-ssh  # as `sm-setup-ssh` installs itself
export PATH="/usr/local/bin:$PATH"
sh "$R/push.sh" >"$R/push1" 2>"$R/push1.err"
sh "$R/push.sh" >"$R/push2" 2>"$R/push2.err"
sed -n '/host keys/,$p' "$R/push1" | grep -v -- --- | sed 's/^/127.0.0.1 /' >"$R/known"
ssh -i "$R/key" -o UserKnownHostsFile="$R/known" -o StrictHostKeyChecking=yes \
  -o BatchMode=yes -o LogLevel=ERROR root@127.0.0.1 'echo logged in'
''', env=container.env(), timeout=120)
    assert proc.stdout.splitlines() == ["logged in"], container.report(proc)
    first, second = ((container.root / name).read_text() for name in ("push1", "push2"))
    assert keys.SSHD_STARTED in first and keys.SSHD_STARTED not in second
    reported = keys.parse_host_keys(first)
    assert reported == keys.parse_host_keys(second)
    assert sorted(t for t, _ in reported) == ["ecdsa-sha2-nistp256", "ssh-ed25519"]
    host = {tuple(p.read_text().split()[:2]) for p in Path("/etc/ssh").glob("ssh_host_*.pub")}
    assert not host & set(reported)  # not the machine's keys
