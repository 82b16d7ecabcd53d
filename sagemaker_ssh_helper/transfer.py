"""``sm-ssh cp``: copy a file to or from a container, through S3 when it is big.

An SSM session carries about 0.7 MB/s whatever the instance (amazon-ssm-agent #664,
session-manager-plugin #145), so a big file goes through S3 instead, and only a few lines of
control cross the session:

- laptop -> container: the laptop computes the file's SHA-256 and uploads it (multipart,
  parallel parts) under a temporary key; over ssh, the container downloads it with its own
  credentials (the job's role, parallel ranged GETs), checks the SHA-256 and only then moves it
  into place;
- container -> laptop: over ssh, the container computes the SHA-256 and uploads the file; the
  laptop downloads it (parallel), checks the SHA-256 and moves it into place.

The temporary object is deleted afterwards, whatever happened. Files smaller than
``--s3-threshold`` (default 1 MiB) go over ``scp`` through the session as before, as does
everything with ``--via scp``. Progress goes to stderr. The container's half is
``transfer_remote``, sent to ``python3 -`` over ssh, so it needs no particular version of this
package there; it needs boto3 (which the SSM registration installs) and a role that may read
and write the temporary prefix (SageMaker's default bucket ``sagemaker-<region>-<account>``,
as ``AmazonSageMakerFullAccess`` allows; another with ``--s3``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sagemaker_ssh_helper import aws, connect, fqdn
from sagemaker_ssh_helper.errors import SSHHelperError, ToolMissing, UsageError

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 1024 * 1024
PART = 8 * 1024 * 1024
CONCURRENCY = 10
TRANSFER_PREFIX = "sagemaker-ssh-helper/transfers/"
REMOTE_SCRIPT = Path(__file__).with_name("transfer_remote.py")


@dataclass(frozen=True)
class Location:
    """``<fqdn>:<path>`` / ``mi-…:<path>`` (remote) or a local path (``target`` None)."""

    path: str
    target: str | None = None


def parse_location(text: str) -> Location:
    head, sep, tail = text.partition(":")
    if sep and (head.lower().rstrip(".").endswith(f".{fqdn.SUFFIX}") or head.startswith("mi-")):
        if not tail:
            raise UsageError(f"{text}: give the path in the container after the colon "
                             f"({head}:/path)")
        return Location(tail, head)
    return Location(text)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, else every few seconds."""

    def __init__(self, what: str, total: int, out: TextIO | None = None,
                 every: float = 5.0) -> None:
        self.what, self.total = what, max(total, 1)
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.every = 0.2 if self.tty else every
        self.done = 0
        self.started = time.monotonic()
        self.next = self.started + self.every
        self.lock = threading.Lock()

    def __call__(self, count: int) -> None:
        with self.lock:
            self.done += count
            if time.monotonic() >= self.next:
                self.next = time.monotonic() + self.every
                self._show()

    def _show(self, end: str = "") -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed / 1e6
        share = min(100.0, 100.0 * self.done / self.total)
        width = 30
        bar = "#" * int(width * share / 100)
        line = (f"sm-ssh cp: {self.what} [{bar:<{width}}] {share:5.1f}% "
                f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate:.1f} MB/s")
        if self.tty:
            self.out.write("\r" + line + end)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def finish(self) -> None:
        with self.lock:
            self._show("\n" if self.tty else "")


def s3_prefix(ctx: connect.Context, given: str | None) -> tuple[str, str, str | None]:
    """(bucket, key prefix ending in /, expected owner) for temporary objects; the bucket must
    exist. SageMaker's default bucket has a predictable name another account could own, so every
    call to it says ``ExpectedBucketOwner`` (the caller's account)."""
    owner: str | None = None
    if given:
        if not given.startswith("s3://") or not given[len("s3://"):].split("/")[0]:
            raise UsageError(f"--s3 needs an s3://bucket/prefix/ URL, got {given!r}")
        bucket, _, prefix = given[len("s3://"):].partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    else:
        try:
            account = aws.client(ctx.session, "sts").get_caller_identity()["Account"]
        except Exception as e:
            raise aws.explain(e, "sts:GetCallerIdentity") from e
        bucket, prefix, owner = f"sagemaker-{ctx.region_name}-{account}", TRANSFER_PREFIX, account
    try:
        aws.client(ctx.session, "s3").head_bucket(Bucket=bucket, **owned(owner))
    except Exception as e:
        if aws.error_code(e) in ("404", "NoSuchBucket", "NotFound"):
            raise SSHHelperError(f"bucket {bucket} does not exist: create it, or pass "
                                 "--s3 s3://<your-bucket>/<prefix>/ (cp also has --via scp)"
                                 ) from e
        raise aws.explain(e, "s3:ListBucket") from e
    return bucket, prefix, owner


def owned(owner: str | None) -> dict[str, str]:
    """``ExpectedBucketOwner`` for an S3 call (nothing for a bucket the user named)."""
    return {"ExpectedBucketOwner": owner} if owner else {}


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=PART, multipart_chunksize=PART,
                          max_concurrency=CONCURRENCY)


def _s3_error(e: Exception, bucket: str, action: str) -> Exception:
    if aws.error_code(e) == "NoSuchBucket" or "NoSuchBucket" in str(e) \
            or ("404" in str(e) and action == "s3:PutObject"):
        return SSHHelperError(f"bucket {bucket} does not exist: create it, or pass "
                              "--s3 s3://<your-bucket>/<prefix>/ (or --via scp)")
    return aws.explain(e, action)


@functools.cache
def _scp_has_sftp(scp: str) -> bool:
    """Whether this scp has ``-s`` (the SFTP protocol, OpenSSH 8.7+), from its usage line."""
    try:
        usage = subprocess.run([scp], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=10, check=False).stderr
    except (OSError, subprocess.SubprocessError):
        return False
    flags = re.search(r"\[-([0-9A-Za-z]+)\]", usage)
    return bool(flags and "s" in flags.group(1))


class Copier:
    """One ``sm-ssh cp``: the prepared instance, and how to run ssh and scp against it."""

    def __init__(self, ctx: connect.Context, prepared: connect.Prepared,
                 out: TextIO | None = None) -> None:
        self.ctx = ctx
        self.prepared = prepared
        self.out = out or sys.stderr
        self.owner: str | None = None  # ExpectedBucketOwner of the bucket, if it is ours

    def _options(self) -> list[str]:
        from sagemaker_ssh_helper import proxy

        auth = self.prepared.auth
        return proxy.ssh_options(
            identity_file=auth.key_path, known_hosts=auth.known_hosts,
            host_key_alias=auth.host_key_alias, user=self.prepared.user,
            proxy_cmd=proxy.proxy_command(self.prepared.instance_id, self.ctx.region_name,
                                          self.ctx.profile))

    def scp(self, local: Path, remote_path: str, upload: bool) -> None:
        """scp ``local`` to (``upload``) or from ``remote_path``: the local path absolute (a
        ``:`` in a relative name would make it host:path), ``--`` before the operands (a name
        may start with ``-``), and the SFTP protocol when scp has ``-s``; else the legacy
        protocol has the remote shell read the path, so it is quoted."""
        scp = shutil.which("scp")
        if not scp:
            raise ToolMissing("scp is not installed: install OpenSSH's client")
        sftp = _scp_has_sftp(scp)
        if not sftp:
            tilde = remote_path.startswith("~/")
            remote_path = ("~/" if tilde else "") + shlex.quote(remote_path[2 if tilde else 0:])
        remote_spec = f"{self.prepared.destination}:{remote_path}"
        local_path = str(local.resolve())
        operands = [local_path, remote_spec] if upload else [remote_spec, local_path]
        argv = [scp, "-q", *(["-s"] if sftp else []), *self._options(), "--", *operands]
        logger.debug("running %s", argv)
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            why = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["?"]
            raise SSHHelperError(f"scp failed: {why[0]}", done.returncode)

    def remote(self, args: list[str]) -> dict[str, Any]:
        """Run ``transfer_remote`` in the container with ``args``; its JSON answer."""
        from sagemaker_ssh_helper import proxy

        if self.owner:
            args = ["--owner", self.owner, *args]
        command = " ".join(['"${SM_SSH_PYTHON:-python3}"', "-"] + [shlex.quote(a) for a in args])
        argv = [proxy.find_ssh(), "-o", "LogLevel=ERROR", *self._options(),
                self.prepared.destination, "--", command]
        logger.debug("running %s", argv)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        said: list[str] = []

        def echo() -> None:  # the container's progress, as it comes
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip("\n")
                said.append(line)
                if line.startswith("sm-ssh cp (container): ") and "Error" not in line:
                    print(line, file=self.out, flush=True)

        reader = threading.Thread(target=echo, daemon=True)
        reader.start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(REMOTE_SCRIPT.read_bytes())  # a few KB: fits the pipe
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ssh ended at once: its stderr says why
        stdout = proc.stdout.read()
        proc.wait()
        reader.join()
        done = subprocess.CompletedProcess(argv, proc.returncode, stdout, b"")
        if done.returncode != 0:
            last = [line for line in said if line.strip()][-1:] or [f"exit code {done.returncode}"]
            raise SSHHelperError(f"in the container: {last[0]}")
        lines = done.stdout.decode(errors="replace").strip().splitlines()
        try:
            return dict(json.loads(lines[-1]))
        except (IndexError, ValueError):
            raise SSHHelperError("in the container: no answer from the copy") from None

    # -- the two directions --------------------------------------------------------------------
    def upload(self, local: Path, remote_path: str, bucket: str, prefix: str) -> dict[str, Any]:
        s3 = aws.client(self.ctx.session, "s3")
        size = local.stat().st_size
        digest = sha256_of(local)
        run = f"{prefix}{uuid.uuid4().hex}/"
        key = f"{run}{local.name}"
        progress = Progress("upload to S3", size, self.out)
        try:
            try:
                s3.upload_file(str(local), bucket, key, Config=_transfer_config(),
                               Callback=progress, ExtraArgs=owned(self.owner))
            except Exception as e:
                raise _s3_error(e, bucket, "s3:PutObject") from e
            progress.finish()
            print(f"sm-ssh cp: the container downloads s3://{bucket}/{key}", file=self.out,
                  flush=True)
            result = self.remote(["fetch", bucket, key, remote_path, digest])
        finally:
            _clean(s3, bucket, run, [key], self.owner)
        if result.get("sha256") != digest or result.get("bytes") != size:
            raise SSHHelperError(f"the copy in the container differs: {result}")
        return result

    def download(self, remote_path: str, local: Path, bucket: str, prefix: str,
                 threshold: int = 0) -> dict[str, Any]:
        """Through S3; ``{"small": True}`` (nothing copied) for a file under ``threshold``."""
        s3 = aws.client(self.ctx.session, "s3")
        run = f"{prefix}{uuid.uuid4().hex}/"
        key = f"{run}{os.path.basename(remote_path.rstrip('/'))}"
        if local.is_dir():
            local = local / os.path.basename(remote_path.rstrip("/"))
        part = local.with_name(local.name + ".sm-ssh-part")
        try:
            result = self.remote(["put", remote_path, bucket, key, str(threshold)])
            if result.get("small"):
                return result
            print(f"sm-ssh cp: the container uploaded {remote_path} to s3://{bucket}/{key}",
                  file=self.out, flush=True)
            progress = Progress("download from S3", int(result["bytes"]), self.out)
            try:
                s3.download_file(bucket, key, str(part), Config=_transfer_config(),
                                 Callback=progress, ExtraArgs=owned(self.owner))
            except Exception as e:
                raise aws.explain(e, "s3:GetObject") from e
            progress.finish()
            digest = sha256_of(part)
            if digest != result["sha256"]:
                raise SSHHelperError(f"checksum mismatch: got SHA-256 {digest}, the container "
                                     f"sent {result['sha256']}; nothing was written to {local}")
            os.replace(part, local)
        finally:
            _clean(s3, bucket, run, [key], self.owner)
            if part.exists():
                part.unlink()
        return dict(result, path=str(local))


def _clean(s3: Any, bucket: str, run: str, keys: list[str], owner: str | None) -> None:
    """Delete a run's temporary objects, then abort any multipart upload left under its unique
    prefix ``run`` (an interrupted upload's parts are billed until aborted)."""
    for key in keys:
        _delete(s3, bucket, key, quiet_missing=True, owner=owner)
    try:
        for page in s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=run, **owned(owner)):
            for upload in page.get("Uploads", []):
                s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                          UploadId=upload["UploadId"], **owned(owner))
    except Exception as e:
        print(f"sm-ssh cp: warning: could not abort the uploads under s3://{bucket}/{run}: "
              f"{' '.join(str(e).split())}", file=sys.stderr, flush=True)


def _delete(s3: Any, bucket: str, key: str, quiet_missing: bool = False,
            owner: str | None = None) -> None:
    """Delete a temporary object (S3 answers success for a missing key too)."""
    try:
        s3.delete_object(Bucket=bucket, Key=key, **owned(owner))
    except Exception as e:  # the copy's outcome stands; say what is left behind
        if quiet_missing and aws.error_code(e) in ("NoSuchKey", "NoSuchBucket"):
            return
        print(f"sm-ssh cp: warning: could not delete s3://{bucket}/{key}: "
              f"{' '.join(str(e).split())}", file=sys.stderr, flush=True)


def copy(ctx: connect.Context, source: str, destination: str, choice: connect.Choice,
         via: str = "auto",
         threshold: int = DEFAULT_THRESHOLD, s3: str | None = None,
         out: TextIO | None = None) -> int:
    """``sm-ssh cp SOURCE DESTINATION``: exactly one of them is ``<fqdn>:<path>``."""
    src, dst = parse_location(source), parse_location(destination)
    if (src.target is None) == (dst.target is None):
        raise UsageError("cp copies between this machine and a container: give one side as "
                         "<name>.<kind>.sagemaker:/path (or mi-…:/path)")
    out = out or sys.stderr
    remote = src if src.target is not None else dst
    assert remote.target is not None
    if src.target is None:
        local = Path(src.path)
        if not local.is_file():
            raise UsageError(f"{local}: no such file (cp copies one file)")
        small = local.stat().st_size < threshold
    else:
        local = Path(dst.path)
        if not local.parent.is_dir() and not local.is_dir():
            raise UsageError(f"{local.parent}: no such directory")
        small = False  # the container tells (``put`` with the threshold)
    if via == "s3" or (via == "auto" and not small):
        bucket, prefix, owner = s3_prefix(ctx, s3)
    prepared = connect.prepare(ctx, remote.target, choice)
    copier = Copier(ctx, prepared, out)
    if via == "s3" or (via == "auto" and not small):
        copier.owner = owner
    started = time.monotonic()
    result: dict[str, Any] = {}
    if src.target is not None and via != "scp":
        result = copier.download(remote.path, local, bucket, prefix,
                                 threshold if via == "auto" else 0)
        small = bool(result.get("small"))
    if via == "scp" or small:
        copier.scp(local, remote.path, upload=src.target is None)
        print(f"sm-ssh cp: copied over the SSH session in {time.monotonic() - started:.1f} s",
              file=out, flush=True)
        return 0
    if src.target is None:
        result = copier.upload(local, remote.path, bucket, prefix)
    seconds = time.monotonic() - started
    print(f"sm-ssh cp: {result['path']}: {int(result['bytes']) / 1e6:.1f} MB through S3 in "
          f"{seconds:.1f} s, SHA-256 {result['sha256'][:16]}… verified", file=out, flush=True)
    return 0



def _sync_up(copier: Copier, client: Any, local_root: str, remote_root: str, bucket: str,
             run: str, tar: Path) -> tuple[int, dict[str, Any]]:
    from sagemaker_ssh_helper import transfer_remote as remote_side

    theirs = copier.remote(["manifest", remote_root])["files"]
    files = remote_side.changed(local_root, theirs)
    if not files:
        return 0, {}
    remote_side.pack(local_root, files, str(tar))
    digest, size = sha256_of(tar), tar.stat().st_size
    progress = Progress("upload to S3", size, copier.out)
    try:
        client.upload_file(str(tar), bucket, f"{run}sync.tar", Config=_transfer_config(),
                           Callback=progress, ExtraArgs=owned(copier.owner))
    except Exception as e:
        raise _s3_error(e, bucket, "s3:PutObject") from e
    progress.finish()
    return len(files), copier.remote(["sync-in", bucket, f"{run}sync.tar", digest, remote_root])


def _sync_down(copier: Copier, client: Any, remote_root: str, local_root: str, bucket: str,
               run: str, tar: Path) -> tuple[int, dict[str, Any]]:
    from sagemaker_ssh_helper import transfer_remote as remote_side

    ours = remote_side.manifest(local_root)
    try:
        client.put_object(Bucket=bucket, Key=f"{run}manifest.json",
                          Body=json.dumps(ours).encode(), **owned(copier.owner))
    except Exception as e:
        raise _s3_error(e, bucket, "s3:PutObject") from e
    result = copier.remote(["sync-out", remote_root, bucket, f"{run}sync.tar",
                            f"{run}manifest.json"])
    if not result["files"]:
        return 0, result
    progress = Progress("download from S3", int(result["bytes"]), copier.out)
    try:
        client.download_file(bucket, f"{run}sync.tar", str(tar), Config=_transfer_config(),
                             Callback=progress, ExtraArgs=owned(copier.owner))
    except Exception as e:
        raise aws.explain(e, "s3:GetObject") from e
    progress.finish()
    if sha256_of(tar) != result["sha256"]:
        raise SSHHelperError("checksum mismatch on the archive from the container; nothing "
                             f"was written to {local_root}")
    remote_side.unpack(str(tar), local_root)
    return int(result["files"]), result


def sync(ctx: connect.Context, source: str, destination: str, choice: connect.Choice,
         s3: str | None = None,
         out: TextIO | None = None) -> int:
    """``sm-ssh sync SOURCE_DIR DEST_DIR``: the new and changed files of a folder (one side is
    ``<fqdn>:<dir>``), as one checked archive through S3; nothing is deleted."""
    src, dst = parse_location(source), parse_location(destination)
    if (src.target is None) == (dst.target is None):
        raise UsageError("sync copies a folder between this machine and a container: give one "
                         "side as <name>.<kind>.sagemaker:/folder (or mi-…:/folder)")
    out = out or sys.stderr
    upward = src.target is None
    if upward and not Path(src.path).is_dir():
        raise UsageError(f"{src.path}: no such folder")
    if not upward and not Path(dst.path).resolve().parent.is_dir():
        raise UsageError(f"{Path(dst.path).resolve().parent}: no such folder")
    bucket, prefix, owner = s3_prefix(ctx, s3)
    remote = src if src.target is not None else dst
    assert remote.target is not None
    copier = Copier(ctx, connect.prepare(ctx, remote.target, choice), out)
    copier.owner = owner
    client = aws.client(ctx.session, "s3")
    run = f"{prefix}{uuid.uuid4().hex}/"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sm-ssh-sync-") as tmp:
        tar = Path(tmp) / "sync.tar"
        try:
            if upward:
                count, result = _sync_up(copier, client, src.path, dst.path, bucket, run, tar)
            else:
                count, result = _sync_down(copier, client, src.path, dst.path, bucket, run, tar)
        finally:
            _clean(client, bucket, run, [f"{run}sync.tar", f"{run}manifest.json"], owner)
    if not count:
        print(f"sm-ssh sync: {dst.path} is up to date", file=out, flush=True)
        return 0
    print(f"sm-ssh sync: {count} new or changed file(s), {int(result['bytes']) / 1e6:.1f} MB "
          f"through S3 in {time.monotonic() - started:.1f} s, SHA-256 verified", file=out,
          flush=True)
    return 0
