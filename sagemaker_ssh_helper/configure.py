"""``sm-local-configure``: check (and where possible install) what the client side needs.

``sm-ssh`` needs only OpenSSH (``ssh``, ``ssh-keygen``) and AWS's ``session-manager-plugin``;
the documents' other flows (``aws ssm start-session --target mi-...``) also use the AWS CLI v2.
Both are installed from AWS's official download locations for Linux (x86_64 and arm64; the
plugin as .deb or .rpm) and macOS (.pkg), after their signatures are verified against the keys
AWS publishes (``signing``); anywhere else, or without the rights to install, the command says
exactly what to do instead.

    sm-local-configure               detect; install the plugin and the AWS CLI v2 if missing
    sm-local-configure --no-awscli   ... but not the AWS CLI
    sm-local-configure --check       detect only (exit 1 if something sm-ssh needs is missing)
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sagemaker_ssh_helper import cli, signing
from sagemaker_ssh_helper.errors import SSHHelperError

logger = logging.getLogger(__name__)

PLUGIN = "session-manager-plugin"
DOWNLOADS = "https://s3.amazonaws.com/session-manager-downloads/plugin/latest"
AWSCLI_DOWNLOADS = "https://awscli.amazonaws.com"
GUIDE = ("https://docs.aws.amazon.com/systems-manager/latest/userguide/"
         "session-manager-working-with-install-plugin.html")
SSH_HINT = {"Linux": "apt-get install openssh-client (or: dnf install openssh-clients)",
            "Darwin": "ssh comes with macOS; reinstall the command line tools: "
                      "xcode-select --install"}


class ConfigureError(SSHHelperError):
    exit_code = 1


@dataclass(frozen=True)
class Package:
    """How to install a tool on this machine."""

    url: str
    install: list[str]  # argv, with {file} for the downloaded file ({dir}: it unpacked)
    key: signing.SigningKey = signing.SESSION_MANAGER_PLUGIN  # PGP key of ``<url>.sig``


def _arch() -> str | None:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "64bit"
    if machine in ("aarch64", "arm64"):
        return "arm64"
    return None


def plugin_package(system: str | None = None, arch: str | None = None) -> Package | None:
    """The official package for this OS/CPU and the command that installs it, or None."""
    system = system or platform.system()
    arch = arch if arch is not None else _arch()
    # A mirror (or a test) may stand in for AWS's download folder: <folder>/<platform>/<file>.
    base = os.environ.get("SM_SSH_PLUGIN_DOWNLOADS", DOWNLOADS).rstrip("/")
    if arch is None:
        return None
    if system == "Darwin":
        folder = "mac" if arch == "64bit" else "mac_arm64"
        return Package(f"{base}/{folder}/session-manager-plugin.pkg",
                       ["installer", "-pkg", "{file}", "-target", "/"])
    if system != "Linux":
        return None
    if shutil.which("dpkg"):
        folder = "ubuntu_64bit" if arch == "64bit" else "ubuntu_arm64"
        return Package(f"{base}/{folder}/session-manager-plugin.deb",
                       ["dpkg", "-i", "{file}"])
    if shutil.which("rpm"):
        folder = "linux_64bit" if arch == "64bit" else "linux_arm64"
        return Package(f"{base}/{folder}/session-manager-plugin.rpm",
                       ["rpm", "-U", "--replacepkgs", "{file}"])
    return None


def awscli_package(system: str | None = None, arch: str | None = None
                   ) -> Package | None:
    """AWS's AWS CLI v2 installer for this OS/CPU and how to run it, or None."""
    system = system or platform.system()
    arch = arch if arch is not None else _arch()
    base = os.environ.get("SM_SSH_AWSCLI_DOWNLOADS", AWSCLI_DOWNLOADS).rstrip("/")
    if system == "Darwin":
        return Package(f"{base}/AWSCLIV2.pkg", ["installer", "-pkg", "{file}", "-target", "/"],
                       key=signing.AWS_CLI)
    if system != "Linux" or arch is None:
        return None
    machine = "x86_64" if arch == "64bit" else "aarch64"
    return Package(f"{base}/awscli-exe-linux-{machine}.zip", ["{dir}/aws/install", "--update"],
                   key=signing.AWS_CLI)


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
    return lines[0] if done.returncode == 0 and lines else ""


def detect(out: Callable[[str], None]) -> list[str]:
    """Report each tool; return the names of the missing ones."""
    missing = []
    for tool, version_argv in ((PLUGIN, ["--version"]), ("ssh", ["-V"]),
                               ("ssh-keygen", None)):
        path = shutil.which(tool)
        if path is None:
            missing.append(tool)
            out(f"{tool}: not found on PATH")
            continue
        version = _version([path, *version_argv]) if version_argv else ""
        out(f"{tool}: {path}" + (f" ({version})" if version else ""))
    return missing


def download(url: str, target: Path, timeout: float = 60) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as f:
            shutil.copyfileobj(response, f)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigureError(f"cannot download {url}: {reason}; download it on a machine with "
                             f"internet access and install it by hand (see {GUIDE})") from e


def _as_root(argv: list[str]) -> list[str] | None:
    if os.geteuid() == 0:
        return argv
    sudo = shutil.which("sudo")
    return [sudo, *argv] if sudo else None


def _check_macos_package(file: Path) -> None:
    """macOS installers are signed with Apple's Developer ID: ``pkgutil`` checks that."""
    done = subprocess.run(["pkgutil", "--check-signature", str(file)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0 or "Amazon" not in done.stdout:
        raise ConfigureError(f"{file.name} is not signed by Amazon (pkgutil --check-signature):"
                             " not installing it")


def verified_download(package: Package, folder: Path, out: Callable[[str], None]) -> Path:
    """Download ``package`` into ``folder`` and check its signature; return the file."""
    file = folder / package.url.rsplit("/", 1)[-1]
    out(f"downloading {package.url}")
    download(package.url, file)
    if file.suffix == ".pkg":
        _check_macos_package(file)
        return file
    signature = Path(f"{file}.sig")
    download(f"{package.url}.sig", signature)
    fingerprint = signing.verify(file, signature, package.key)
    out(f"verified the signature of {file.name} (key {fingerprint})")
    return file


def _unpack(file: Path, folder: Path) -> None:
    """Unzip ``file`` into ``folder``, keeping the files' modes (the installers' x bits)."""
    with zipfile.ZipFile(file) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, folder))
            mode = info.external_attr >> 16 & 0o777
            if mode and not info.is_dir():
                os.chmod(path, mode)


def install(tool: str, package: Package | None, guide: str,
            out: Callable[[str], None]) -> None:
    """Download, verify and install ``tool``, or explain how to."""
    if package is None:
        raise ConfigureError(f"cannot install {tool} automatically on {platform.system()} "
                             f"{platform.machine()}: follow {guide}")
    with tempfile.TemporaryDirectory(prefix="sm-local-configure-") as tmp:
        file = verified_download(package, Path(tmp), out)
        if file.suffix == ".zip":
            _unpack(file, Path(tmp))
        argv = [a.replace("{file}", str(file)).replace("{dir}", tmp) for a in package.install]
        privileged = _as_root(argv)
        if privileged is None:
            raise ConfigureError(f"installing {tool} needs root: run `sm-local-configure` "
                                 f"as root, or `{' '.join(argv)}` with your admin rights")
        out("running " + " ".join(privileged))
        done = subprocess.run(privileged, check=False)
        if done.returncode != 0:
            raise ConfigureError(f"`{' '.join(privileged)}` failed (exit {done.returncode}): "
                                 f"see its output above, or follow {guide}")
    out(f"installed {tool}")


def install_plugin(out: Callable[[str], None]) -> None:
    """Download, verify and install session-manager-plugin, or explain how to."""
    install(PLUGIN, plugin_package(), GUIDE, out)
    if platform.system() == "Darwin" and not shutil.which(PLUGIN):
        out(f"add /usr/local/sessionmanagerplugin/bin to PATH, or link {PLUGIN} into "
            "/usr/local/bin")


def ensure_awscli(out: Callable[[str], None]) -> None:
    """Install the AWS CLI v2 unless an ``aws`` command is there already."""
    aws = shutil.which("aws")
    if aws is not None:
        out(f"aws: {aws} ({_version([aws, '--version']) or 'version unknown'})")
        return
    out("aws: not found on PATH; installing the AWS CLI v2 (--no-awscli to skip)")
    install("the AWS CLI v2", awscli_package(), signing.AWSCLI_GUIDE, out)


def _out(message: str) -> None:
    cli.progress(f"sm-local-configure: {message}")


def run(args: argparse.Namespace, out: Callable[[str], None] = _out) -> int:
    missing = detect(out)
    ssh_missing = [t for t in missing if t != PLUGIN]
    if ssh_missing:
        hint = SSH_HINT.get(platform.system(), "install the OpenSSH client")
        message = f"{' and '.join(ssh_missing)} not found: {hint}"
        if args.check or PLUGIN not in missing:
            raise ConfigureError(message)
        out(message)
    if PLUGIN in missing:
        if args.check:
            raise ConfigureError(f"{PLUGIN} not found on PATH: run sm-local-configure to "
                                 f"install it, or follow {GUIDE}")
        install_plugin(out)
        if not shutil.which(PLUGIN) and platform.system() != "Darwin":
            raise ConfigureError(f"{PLUGIN} was installed but is not on PATH: add its folder "
                                 "(usually /usr/local/bin) to PATH")
    if not args.check and not args.no_awscli:
        ensure_awscli(out)
    if ssh_missing:
        return 1
    out("ready; next: `sm-ssh config` for plain `ssh <name>.<kind>.sagemaker`, or "
        "`sm-ssh connect <name>.<kind>.sagemaker`")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = cli.OneLineParser(
        prog="sm-local-configure",
        description="Find session-manager-plugin and ssh; install the plugin (and the AWS "
                    "CLI v2) if missing, after verifying AWS's signatures.")
    parser.add_argument("--check", action="store_true", help="detect only; install nothing")
    parser.add_argument("--no-awscli", action="store_true",
                        help="do not install the AWS CLI v2 (sm-ssh does not need it)")
    cli.add_general_options(parser, aws=False)
    args = cli.argv_or_sys(argv)
    return cli.guarded_main("sm-local-configure",
                            lambda frame: run(frame.parse(parser, args)))


if __name__ == "__main__":
    sys.exit(main())
