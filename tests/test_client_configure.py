"""sm-local-configure installs the plugin and the AWS CLI v2 only after AWS's signature checks
out: offline, from a local mirror of AWS's download folders, with packages signed by a
throwaway key (trusted through SM_SSH_SIGNING_KEY) and by the real path's embedded AWS keys."""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sagemaker_ssh_helper import signing

REPO = Path(__file__).resolve().parents[1]
GPG = shutil.which("gpg")
pytestmark = pytest.mark.skipif(GPG is None or shutil.which("dpkg") is None,
                                reason="needs gpg and dpkg (apt-get install gnupg)")
FAKE_DPKG = """#!/bin/sh
# stands in for dpkg -i: records the call and "installs" the plugin next to itself
echo "$@" >>"$(dirname "$0")/dpkg.log"
printf '#!/bin/sh\\necho 1.2.707.0\\n' >"$(dirname "$0")/session-manager-plugin"
chmod 755 "$(dirname "$0")/session-manager-plugin"
"""
AWS_INSTALL = """#!/bin/sh
# the AWS CLI v2 installer's stand-in: puts an `aws` that reports v2 on PATH
printf '#!/bin/sh\\necho aws-cli/2.99.0 Python/3.11\\n' >"{bin}/aws"
chmod 755 "{bin}/aws"
echo "$@" >"{bin}/aws-install.log"
"""


def gpg(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(GPG), "--homedir", str(home), "--batch", *args],
                          capture_output=True, check=True, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A throwaway signing key; yields its GnuPG home (public key in <home>/public.asc). The
    gpg-agent that key generation and signing start is stopped afterwards."""
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    try:
        gpg(home, "--passphrase", "", "--quick-gen-key", "Mirror Test <mirror@example.com>",
            "ed25519", "sign", "never")
        (home / "public.asc").write_bytes(gpg(home, "--armor", "--export").stdout)
        yield home
    finally:
        gpgconf = shutil.which("gpgconf")
        if gpgconf:
            subprocess.run([gpgconf, "--homedir", str(home), "--kill", "gpg-agent"],
                           capture_output=True, check=False, stdin=subprocess.DEVNULL)


def sign(home: Path, file: Path) -> None:
    gpg(home, "--yes", "--output", f"{file}.sig", "--detach-sign", str(file))


@dataclass
class Mirror:
    root: Path
    url: str


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    """A local HTTP server over a folder laid out like AWS's download locations."""
    root = tmp_path / "mirror"
    (root / "plugin" / "ubuntu_64bit").mkdir(parents=True)
    (root / "plugin" / "ubuntu_arm64").mkdir(parents=True)
    (root / "awscli").mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Mirror(root, f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()


def machine_bin(tmp_path: Path) -> Path:
    """PATH for the command: ssh, ssh-keygen, gpg, sh tools and a fake dpkg; no plugin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ssh", "ssh-keygen", "gpg", "rpm"):
        found = shutil.which(tool)
        if found and tool != "rpm":
            (bin_dir / tool).symlink_to(found)
    (bin_dir / "dpkg").write_text(FAKE_DPKG)
    (bin_dir / "dpkg").chmod(0o755)
    return bin_dir


def configure(bin_dir: Path, mirror: Mirror, *args: str, key: str = ""
              ) -> subprocess.CompletedProcess:
    env: dict[str, str] = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin",
                               PYTHONPATH=str(REPO),
                               SM_SSH_PLUGIN_DOWNLOADS=f"{mirror.url}/plugin",
                               SM_SSH_AWSCLI_DOWNLOADS=f"{mirror.url}/awscli")
    env.pop("SM_SSH_SIGNING_KEY", None)
    if key:
        env["SM_SSH_SIGNING_KEY"] = key
    return subprocess.run([sys.executable, "-m", "sagemaker_ssh_helper.configure", *args],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def plugin_deb(mirror: Mirror) -> Path:
    machine = "ubuntu_64bit" if os.uname().machine in ("x86_64", "amd64") else "ubuntu_arm64"
    deb = mirror.root / "plugin" / machine / "session-manager-plugin.deb"
    deb.write_bytes(b"!<arch>\nnot really a deb, but signed\n")
    return deb


def test_plugin_installed_only_after_its_signature_verifies(tmp_path: Path, mirror: Mirror,
                                                            signer: Path) -> None:
    deb = plugin_deb(mirror)
    sign(signer, deb)
    bin_dir = machine_bin(tmp_path)
    done = configure(bin_dir, mirror, "--no-awscli", key=str(signer / "public.asc"))
    assert done.returncode == 0, done.stderr
    assert "verified the signature of session-manager-plugin.deb" in done.stderr
    assert "installed session-manager-plugin" in done.stderr
    assert (bin_dir / "dpkg.log").read_text().startswith("-i ")
    assert not (bin_dir / "aws").exists()  # --no-awscli


def test_tampered_plugin_is_refused_and_nothing_installed(tmp_path: Path, mirror: Mirror,
                                                          signer: Path) -> None:
    deb = plugin_deb(mirror)
    sign(signer, deb)
    deb.write_bytes(deb.read_bytes() + b"tampered")
    bin_dir = machine_bin(tmp_path)
    done = configure(bin_dir, mirror, "--no-awscli", key=str(signer / "public.asc"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        "sm-local-configure: session-manager-plugin.deb is not signed by AWS's key for the "
        "Session Manager plugin (7959637124CE093AD501D47A2C4D4AFF6F6757EE): not installing it")
    assert not (bin_dir / "dpkg.log").exists()


def test_the_real_path_trusts_only_aws_keys(tmp_path: Path, mirror: Mirror,
                                            signer: Path) -> None:
    """Without SM_SSH_SIGNING_KEY a package signed by any other key is refused."""
    sign(signer, plugin_deb(mirror))
    bin_dir = machine_bin(tmp_path)
    done = configure(bin_dir, mirror, "--no-awscli")
    assert done.returncode == 1
    assert "is not signed by AWS's key for the Session Manager plugin" in done.stderr
    assert not (bin_dir / "dpkg.log").exists()


@pytest.mark.parametrize("key, uid", [
    (signing.SESSION_MANAGER_PLUGIN, "<session-manager-plugin-signer@amazon.com>"),
    (signing.AWS_CLI, "<aws-cli@amazon.com>"),
])
def test_embedded_aws_keys_have_the_documented_fingerprints(key: signing.SigningKey, uid: str,
                                                            tmp_path: Path) -> None:
    (tmp_path / "key.asc").write_text(key.armored)
    listed = gpg(tmp_path, "--with-colons", "--show-keys", str(tmp_path / "key.asc"))
    lines = listed.stdout.decode().splitlines()
    assert [line.split(":")[9] for line in lines if line.startswith("fpr:")][0] == \
        key.fingerprint
    assert any(uid in line for line in lines if line.startswith("uid:"))


def test_awscli_v2_installed_after_verification_unless_told_not_to(
        tmp_path: Path, mirror: Mirror, signer: Path) -> None:
    if os.uname().machine not in ("x86_64", "amd64", "aarch64", "arm64"):
        pytest.skip("no AWS CLI v2 package for this CPU")
    deb = plugin_deb(mirror)
    sign(signer, deb)
    bin_dir = machine_bin(tmp_path)
    machine = "x86_64" if os.uname().machine in ("x86_64", "amd64") else "aarch64"
    archive = mirror.root / "awscli" / f"awscli-exe-linux-{machine}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("aws/install")
        info.external_attr = 0o100755 << 16
        zf.writestr(info, AWS_INSTALL.format(bin=bin_dir))
    sign(signer, archive)
    done = configure(bin_dir, mirror, key=str(signer / "public.asc"))
    assert done.returncode == 0, done.stderr
    assert f"verified the signature of {archive.name}" in done.stderr
    assert "installed the AWS CLI v2" in done.stderr
    assert subprocess.run([str(bin_dir / "aws"), "--version"], capture_output=True,
                          text=True).stdout.startswith("aws-cli/2.")
    assert (bin_dir / "aws-install.log").read_text().strip() == "--update"
    # A second run finds it and installs nothing.
    again = configure(bin_dir, mirror, key=str(signer / "public.asc"))
    assert f"aws: {bin_dir}/aws (aws-cli/2.99.0" in again.stderr
    # And a tampered archive is refused.
    (bin_dir / "aws").unlink()
    archive.write_bytes(archive.read_bytes() + b"x")
    refused = configure(bin_dir, mirror, key=str(signer / "public.asc"))
    assert refused.returncode == 1
    assert f"{archive.name} is not signed by AWS's key for the AWS CLI v2" in refused.stderr
    assert not (bin_dir / "aws").exists()
