"""This package as a wheel, staged in S3 for Studio, notebook instances and lifecycle configs.

``pip install sagemaker-ssh-helper`` from the public package index installs the *upstream*
project (versions 2.x), whose container side does not work with this client. This project's
versions are 3.x. Studio apps and notebook instances get this package from a wheel that
``sm-ssh stage-wheel`` builds from the installed version and uploads to S3; it prints the
``SM_SSH_PACKAGE=s3://...`` line to paste into the lifecycle configuration or the notebook.

    python -m sagemaker_ssh_helper.dist check      # "sagemaker-ssh-helper 3.x.y" or exit 1
    python -m sagemaker_ssh_helper.dist wheel DIR  # build the wheel into DIR, print its path

The wheel is built from the files of the running package (so it is exactly the installed
version), the requirements and entry points of its installed metadata, its bash scripts, and
the notebooks and lifecycle configurations installed under ``<prefix>/sm_ssh/``.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

from sagemaker_ssh_helper import __version__, aws, cli
from sagemaker_ssh_helper.errors import SSHHelperError, UsageError

NAME = "sagemaker-ssh-helper"
PACKAGE_DIR = Path(__file__).resolve().parent
MAJOR = 3  # upstream's versions are 2.x; ours start at 3
DATA_DIR = "sm_ssh"  # <prefix>/sm_ssh/: the notebooks and lifecycle configurations
DATA_FILES = ("SageMaker_SSH_IDE.ipynb", "SageMaker_SSH_Notebook.ipynb", "kernel-lc-config.sh",
              "server-lc-config.sh", "ssh_config_template.txt")
STAGE_PREFIX = "sagemaker-ssh-helper"


def version() -> str:
    return __version__


def wheel_name() -> str:
    return f"{NAME.replace('-', '_')}-{version()}-py3-none-any.whl"


def _metadata() -> Any:
    try:
        return metadata.distribution(NAME)
    except metadata.PackageNotFoundError:
        raise SSHHelperError(f"{NAME} is not installed (it runs from a folder): install it "
                             "with `pip install .` to stage it") from None


def _data_files() -> dict[str, Path]:
    """The notebooks and lifecycle configurations: under ``<prefix>/sm_ssh`` when installed
    from a wheel, else next to the package in its checkout."""
    found: dict[str, Path] = {}
    for folder in (Path(sys.prefix) / DATA_DIR, PACKAGE_DIR.parent):
        for name in DATA_FILES:
            if name not in found and (folder / name).is_file():
                found[name] = folder / name
    return found


def _record(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _files(dist: Any) -> dict[str, Path]:
    """Archive name -> file: the package, its bash scripts, the data files."""
    prefix = f"{NAME.replace('-', '_')}-{version()}.data"
    files: dict[str, Path] = {}
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[path.relative_to(PACKAGE_DIR.parent).as_posix()] = path
    console = {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}
    for path in sorted(PACKAGE_DIR.glob("sm-*")):  # as setup.py: the bash entry points...
        if path.name not in console:  # ... that no console script of the same name replaces
            files[f"{prefix}/scripts/{path.name}"] = path
    for name, path in _data_files().items():
        files[f"{prefix}/data/{DATA_DIR}/{name}"] = path
    return files


def build_wheel(out_dir: Path) -> Path:
    """Write this version's wheel into ``out_dir``; return its path."""
    dist = _metadata()
    info = f"{NAME.replace('-', '_')}-{version()}.dist-info"
    metadata = ["Metadata-Version: 2.1", f"Name: {NAME}", f"Version: {version()}"]
    metadata += [f"{key}: {value}" for key, value in dist.metadata.items()
                 if key in ("Summary", "License", "Requires-Python", "Requires-Dist",
                            "Provides-Extra")]
    generated = {
        f"{info}/METADATA": "\n".join(metadata) + "\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: sagemaker_ssh_helper.dist\n"
                         "Root-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": dist.read_text("entry_points.txt") or "",
        f"{info}/top_level.txt": "sagemaker_ssh_helper\n",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / wheel_name()
    records: list[str] = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, source in _files(dist).items():
            data = source.read_bytes()
            entry = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            entry.external_attr = (0o100000 | (source.stat().st_mode & 0o777)) << 16
            zf.writestr(entry, data, zipfile.ZIP_DEFLATED)
            records.append(_record(name, data))
        for name, text in generated.items():
            zf.writestr(name, text)
            records.append(_record(name, text.encode()))
        zf.writestr(f"{info}/RECORD", "\n".join(records + [f"{info}/RECORD,,"]) + "\n")
    return wheel


def default_prefix(session: Any, region: str) -> str:
    """``s3://sagemaker-<region>-<account>/sagemaker-ssh-helper/``, SageMaker's default bucket."""
    try:
        account = aws.client(session, "sts").get_caller_identity()["Account"]
    except Exception as e:
        raise aws.explain(e, "sts:GetCallerIdentity") from e
    return f"s3://sagemaker-{region}-{account}/{STAGE_PREFIX}/"


def stage(session: Any, region: str, prefix: str | None = None) -> str:
    """Upload this version's wheel under ``prefix`` (an s3:// URL); return its URL."""
    owner: dict[str, str] = {}
    if not prefix:  # a predictable bucket name: refuse one another account owns
        prefix = default_prefix(session, region)
        owner = {"ExpectedBucketOwner": prefix[len("s3://"):].split("/")[0].rsplit("-", 1)[1]}
    if not prefix.startswith("s3://") or "/" not in prefix[len("s3://"):].strip("/") + "/":
        raise UsageError(f"--s3 needs an s3://bucket/prefix/ URL, got {prefix!r}")
    bucket, _, key_prefix = prefix[len("s3://"):].partition("/")
    key = (key_prefix.rstrip("/") + "/" if key_prefix.strip("/") else "") + wheel_name()
    s3 = aws.client(session, "s3")
    with tempfile.TemporaryDirectory(prefix="sm-ssh-wheel-") as tmp:
        wheel = build_wheel(Path(tmp))
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=wheel.read_bytes(), **owner)
        except Exception as e:
            if aws.error_code(e) == "NoSuchBucket":
                raise SSHHelperError(f"bucket {bucket} does not exist in this account: create "
                                     "it, or pass --s3 s3://<your-bucket>/<prefix>/") from e
            raise aws.explain(e, "s3:PutObject") from e
    return f"s3://{bucket}/{key}"


def check() -> str:
    """This package's name and version; raises unless it is this project (3.x)."""
    if int(version().split(".")[0]) < MAJOR:
        raise SSHHelperError(f"{NAME} {version()} is not this project (3.x)")
    return f"{NAME} {version()}"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineParser(prog="python -m sagemaker_ssh_helper.dist",
                               description="This package's version check and its wheel.")
    cli.add_general_options(parser, aws=False)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="print the package and version; fail unless it is 3.x")
    sub.add_parser("wheel", help="build this version's wheel into DIR").add_argument(
        "dir", type=Path, metavar="DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    def body(frame: cli.Command) -> int:
        args = frame.parse(build_parser(), cli.argv_or_sys(argv))
        print(check() if args.command == "check" else build_wheel(args.dir))
        return 0

    return cli.guarded_main("sagemaker_ssh_helper.dist", body)


if __name__ == "__main__":
    sys.exit(main())
