"""Support for the container-side tests (this module holds no tests).

``Container`` runs bash scripts as root in private mount, PID and network namespaces that look
like a SageMaker container to the sm-* scripts, without touching the host:

- /etc, /opt, /usr/local/bin, /var/lib, /var/log and /root are overlays whose writes land in
  the container's own directory (so the host's /etc/ssh and /etc/environment stay as they are,
  and the test can inspect what was written); root's shell start-up files are empty, so SSH
  sessions do not run the host user's ~/.bashrc;
- /tmp and /run are the container's own directories;
- a fresh loopback network, so sshd can listen on port 22 as in SageMaker;
- a fresh PID namespace: everything started inside dies with the script.

AWS runs inside the container too (``start_aws`` in the scripts): STS from moto, SSM from the
sandbox's stand-in (state saved under ``<root>/ssm``; ``ssm_fault`` injects errors);
``amazon-ssm-agent`` on PATH is the sandbox's agent stand-in.

``python tests/test_container_support.py serve FILE`` starts those services and writes their
URLs to FILE (used by ``start_aws``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conftest import keep_visible

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "sagemaker_ssh_helper"
PYTHON = sys.executable
STS_PORT = 5000
SSM_PORT = 5001
OVERLAYS = {"etc": "/etc", "opt": "/opt", "bin": "/usr/local/bin", "varlib": "/var/lib",
            "varlog": "/var/log", "root": "/root"}

_PRELUDE = r"""
set -euo pipefail
R={root}
for spec in {overlays}; do
  name="${{spec%%:*}}"; target="${{spec#*:}}"
  mount -t overlay overlay \
    -o "lowerdir=$target,upperdir=$R/ovl/$name/upper,workdir=$R/ovl/$name/work" "$target"
done
{keep_before}
mount --bind "$R/tmp" /tmp
mount --bind "$R/run" /run
{keep_after}
ip link set lo up
export PKG={package}
export PY={python}
wait_for() {{  # wait_for SECONDS COMMAND...: poll until COMMAND succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    ((SECONDS < deadline)) || {{ echo "timed out waiting for: $*" >&2; return 1; }}
    sleep 0.1
  done
}}
start_aws() {{
  "$PY" {support} serve "$R/aws.json" >"$R/aws.log" 2>&1 &
  wait_for 60 test -s "$R/aws.json"
  export AWS_ENDPOINT_URL_STS=http://127.0.0.1:{sts_port} AWS_ENDPOINT_URL_SSM=http://127.0.0.1:{ssm_port}
}}
ssm_fault() {{  # ssm_fault OPERATION ERROR_CODE COUNT: make the SSM stand-in fail the next calls
  "$PY" -c 'import json, sys, urllib.request as u
body = json.dumps(dict(operation=sys.argv[1], error_code=sys.argv[2], count=int(sys.argv[3])))
u.urlopen(u.Request(sys.argv[4] + "/_sandbox/faults", body.encode(), method="POST"))' \
    "$1" "$2" "$3" "$AWS_ENDPOINT_URL_SSM"
}}
"""

_AGENT_LAUNCHER = """#!{python}
# amazon-ssm-agent for the tests: the sandbox's stand-in under the real agent's name.
import sys
from sagemaker_ssh_sandbox.ssm.agent import main
sys.exit(main())
"""


def namespaces_available() -> bool:
    if os.name != "posix" or os.uname().sysname != "Linux" or os.geteuid() != 0:
        return False
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--net", "--fork", "--mount-proc", "--kill-child",
         "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


class Container:
    """A throwaway SageMaker-like container; ``root`` must not be under /tmp."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for name in OVERLAYS:
            (root / "ovl" / name / "upper").mkdir(parents=True)
            (root / "ovl" / name / "work").mkdir(parents=True)
        for dotfile in (".bashrc", ".profile"):
            (root / "ovl" / "root" / "upper" / dotfile).write_text("")
        for name in ("tmp", "run", "bin", "ml", "ssm"):
            (root / name).mkdir()
        (root / "tmp").chmod(0o1777)
        agent = root / "bin" / "amazon-ssm-agent"
        agent.write_text(_AGENT_LAUNCHER.format(python=PYTHON))
        agent.chmod(0o755)

    @classmethod
    def create(cls) -> Container:
        return cls(Path(tempfile.mkdtemp(prefix="sm-ssh-container-", dir="/var/tmp")))

    def ssm_state(self) -> dict[str, Any]:
        """The SSM stand-in's saved state: ``activations`` and ``instances`` (with tags)."""
        return json.loads((self.root / "ssm" / "ssm-state.json").read_text())

    def report(self, proc: subprocess.CompletedProcess) -> str:
        """The script's output and the text files it left in the root, for failure messages."""
        parts = [f"exit {proc.returncode}", f"stdout:\n{proc.stdout}", f"stderr:\n{proc.stderr}"]
        for path in sorted(self.root.iterdir()):
            if path.is_file():
                parts.append(f"{path.name}:\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def host_path(self, inside: str) -> Path:
        """Where a file the container wrote under ``inside`` is, seen from the host."""
        for name, target in sorted(OVERLAYS.items(), key=lambda kv: -len(kv[1])):
            if inside == target or inside.startswith(target + "/"):
                return self.root / "ovl" / name / "upper" / inside[len(target) + 1:]
        for name in ("tmp", "run"):
            if inside.startswith(f"/{name}/"):
                return self.root / name / inside[len(name) + 2:]
        raise ValueError(f"{inside} is not private to the container")

    def env(self, extra: Mapping[str, str] | None = None, agent: bool = True
            ) -> dict[str, str]:
        """Environment for ``run``: PATH (with the agent stand-in unless ``agent`` is False),
        the package on PYTHONPATH, fake credentials, us-east-1; plus ``extra``."""
        path = [str(self.root / "bin")] if agent else []
        path += [os.path.dirname(PYTHON), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin",
                 "/usr/bin", "/sbin", "/bin"]
        env = {
            "PATH": os.pathsep.join(path), "HOME": "/root", "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO), "SM_SSH_PYTHON": PYTHON,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }
        env.update(extra or {})
        return env

    def run(self, script: str, env: dict[str, str] | None = None, timeout: float = 120,
            ) -> subprocess.CompletedProcess:
        keep_before, keep_after = keep_visible(f"{self.root}/keep")
        prelude = _PRELUDE.format(
            keep_before=keep_before, keep_after=keep_after, root=self.root, package=PACKAGE_DIR,
            python=PYTHON, support=Path(__file__).resolve(),
            overlays=" ".join(f"{k}:{v}" for k, v in OVERLAYS.items()),
            sts_port=STS_PORT, ssm_port=SSM_PORT)
        argv = ["unshare", "--mount", "--pid", "--net", "--fork", "--mount-proc",
                "--kill-child", "bash", "-c", prelude + script]
        return subprocess.run(argv, env=self.env() if env is None else env, text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def serve(ready_file: Path) -> None:
    """Run STS (moto) and SSM (stand-in) on fixed loopback ports until killed."""
    from moto.server import ThreadedMotoServer

    from sagemaker_ssh_sandbox.ssm.service import start_ssm_server

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=STS_PORT, verbose=False)
    moto.start()
    ssm = start_ssm_server(host="127.0.0.1", port=SSM_PORT, state_dir=ready_file.parent / "ssm")
    ready_file.write_text(json.dumps({"sts": f"http://127.0.0.1:{STS_PORT}", "ssm": ssm.url}))
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(Path(sys.argv[2]))
