"""The container's half of ``sm-ssh cp`` through S3 (standard library, and boto3 there).

``sm-ssh cp`` sends this file's source to ``python3 -`` over ssh, so it runs in any container,
whatever version of the package it has (or none). It uses the container's own credentials (the
job's role): ``fetch`` downloads an object to a path, ``put`` uploads a file to an object, both
with parallel ranged parts; each prints one JSON line ``{"path", "bytes", "sha256"}`` on stdout,
progress on stderr, and one line and exit code 1 on failure. ``fetch`` checks the SHA-256 the
laptop computed before moving the file into place (a partial or corrupted copy never replaces
the destination).

    python3 - fetch BUCKET KEY DEST SHA256
    python3 - put SRC BUCKET KEY [THRESHOLD]   (smaller files: {"small": true}, not uploaded)
    python3 - manifest DIR                      ({"files": {path: [size, sha256]}})
    python3 - sync-in BUCKET KEY SHA256 DIR     (extract the archive at KEY under DIR)
    python3 - sync-out DIR BUCKET KEY MANIFEST_KEY  (archive what differs from the manifest)

``--owner ACCOUNT`` before the command makes every S3 call say ``ExpectedBucketOwner``. An
object ``put`` uploaded is deleted again when the command fails afterwards.

``sm-ssh sync`` moves a folder's new and changed files as one archive through S3: the
receiving side's manifest (sizes and SHA-256) decides what is sent; the archive is checked
like a file, and only regular files and folders under the destination are extracted.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from typing import Any

PART = 8 * 1024 * 1024
CONCURRENCY = 10
_HASH_BLOCK = 1024 * 1024
OWNER: str | None = None  # ExpectedBucketOwner for every S3 call (``--owner``)
UPLOADED: list[Any] = []  # (bucket, key) this run put: deleted again if it fails afterwards


def _owned() -> dict[str, str]:
    return {"ExpectedBucketOwner": OWNER} if OWNER else {}


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


class Progress:
    """Lines on stderr every few seconds: boto3 calls it from its worker threads."""

    def __init__(self, what: str, total: int, every: float = 5.0) -> None:
        import threading

        self.what, self.total, self.every = what, total, every
        self.done = 0
        self.next = time.monotonic() + every
        self.lock = threading.Lock()

    def __call__(self, count: int) -> None:
        with self.lock:
            self.done += count
            if time.monotonic() >= self.next:
                self.next = time.monotonic() + self.every
                share = 100.0 * self.done / self.total if self.total else 100.0
                print(f"sm-ssh cp (container): {self.what} {share:.0f}%", file=sys.stderr,
                      flush=True)


def _client_and_config() -> Any:
    import boto3
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART,
                            max_concurrency=CONCURRENCY)
    return boto3.client("s3"), config


def fetch(bucket: str, key: str, dest: str, expected: str) -> dict[str, Any]:
    if os.path.isdir(dest):
        dest = os.path.join(dest, key.rsplit("/", 1)[-1])
    s3, config = _client_and_config()
    size = int(s3.head_object(Bucket=bucket, Key=key, **_owned())["ContentLength"])
    part = f"{dest}.sm-ssh-part"
    try:
        s3.download_file(bucket, key, part, Config=config, Callback=Progress("download", size),
                         ExtraArgs=_owned())
        digest = sha256_of(part)
        if digest != expected:
            raise RuntimeError(f"checksum mismatch: got SHA-256 {digest}, expected {expected}")
        os.replace(part, dest)
    finally:
        if os.path.exists(part):
            os.unlink(part)
    return {"path": os.path.abspath(dest), "bytes": size, "sha256": digest}


def put(src: str, bucket: str, key: str, threshold: str = "0") -> dict[str, Any]:
    """Upload ``src``, unless it is smaller than ``threshold`` bytes (then scp copies it)."""
    if not os.path.isfile(src):
        raise RuntimeError(f"{src}: no such file")
    size = os.path.getsize(src)
    if size < int(threshold):
        return {"path": os.path.abspath(src), "bytes": size, "small": True}
    digest = sha256_of(src)
    s3, config = _client_and_config()
    UPLOADED.append((bucket, key))
    s3.upload_file(src, bucket, key, Config=config, Callback=Progress("upload", size),
                   ExtraArgs=_owned())
    return {"path": os.path.abspath(src), "bytes": size, "sha256": digest}


def manifest(root: str) -> dict[str, list[Any]]:
    """{relative path: [size, sha256]} of every regular file under ``root`` (none if absent)."""
    found: dict[str, list[Any]] = {}
    if not os.path.isdir(root):
        return found
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                found[os.path.relpath(path, root)] = [os.path.getsize(path), sha256_of(path)]
    return found


def changed(root: str, theirs: dict[str, list[Any]]) -> list[str]:
    """Files under ``root`` that ``theirs`` lacks or has with other contents."""
    return [rel for rel, entry in manifest(root).items() if theirs.get(rel) != entry]


def pack(root: str, files: list[str], tar_path: str) -> None:
    import tarfile

    with tarfile.open(tar_path, "w") as tar:
        for rel in files:
            tar.add(os.path.join(root, rel), arcname=rel, recursive=False)


def unpack(tar_path: str, root: str) -> int:
    """Extract regular files (and their folders) under ``root``; anything else, or a path that
    leaves ``root``, is refused before a byte is written."""
    import tarfile

    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
        for m in members:
            parts = m.name.replace("\\", "/").split("/")
            if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in parts:
                raise RuntimeError(f"refusing {m.name!r} in the archive")
        os.makedirs(root, exist_ok=True)
        for m in members:
            target = os.path.join(root, m.name)
            if m.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            source = tar.extractfile(m)
            assert source is not None
            part = f"{target}.sm-ssh-part"
            with source, open(part, "wb") as out:
                shutil.copyfileobj(source, out, _HASH_BLOCK)
            os.chmod(part, m.mode & 0o777)
            os.replace(part, target)
        return sum(1 for m in members if m.isfile())


def sync_in(bucket: str, key: str, expected: str, root: str) -> dict[str, Any]:
    """Download the archive at ``key``, check it, extract it under ``root``."""
    os.makedirs(root, exist_ok=True)
    tar_path = os.path.join(root, f".sm-ssh-sync-{os.getpid()}.tar")
    try:
        got = fetch(bucket, key, tar_path, expected)
        count = unpack(tar_path, root)
    finally:
        if os.path.exists(tar_path):
            os.unlink(tar_path)
    return {"path": os.path.abspath(root), "bytes": got["bytes"], "sha256": got["sha256"],
            "files": count}


def sync_out(root: str, bucket: str, key: str, theirs_key: str) -> dict[str, Any]:
    """Archive the files under ``root`` that differ from the manifest at ``theirs_key`` and
    upload the archive to ``key`` (nothing to upload: ``{"files": 0}``)."""
    import tempfile

    if not os.path.isdir(root):
        raise RuntimeError(f"{root}: no such folder")
    s3, _ = _client_and_config()
    theirs = json.loads(s3.get_object(Bucket=bucket, Key=theirs_key, **_owned())["Body"].read())
    files = changed(root, theirs)
    if not files:
        return {"path": os.path.abspath(root), "files": 0, "bytes": 0}
    with tempfile.TemporaryDirectory(prefix="sm-ssh-sync-") as tmp:
        tar_path = os.path.join(tmp, "sync.tar")
        pack(root, files, tar_path)
        result = put(tar_path, bucket, key)
    return dict(result, path=os.path.abspath(root), files=len(files))


def _forget_uploads() -> None:
    """Delete what this run uploaded (the laptop never learns its key when the answer fails)."""
    s3, _ = _client_and_config()
    while UPLOADED:
        bucket, key = UPLOADED.pop()
        try:
            s3.delete_object(Bucket=bucket, Key=key, **_owned())
        except Exception:  # the laptop's cleanup and the bucket's lifecycle rule remain
            pass


def main(argv: list[str] | None = None) -> int:
    global OWNER
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--owner"] and len(args) > 1:
        OWNER, args = args[1], args[2:]
    # paths as a shell would take them (`sm-ssh cp f job…:~/data/` quotes the arguments)
    args = [os.path.expanduser(a) if a.startswith("~") else a for a in args]
    try:
        if args[:1] == ["fetch"] and len(args) == 5:
            result = fetch(*args[1:])
        elif args[:1] == ["put"] and len(args) in (4, 5):
            result = put(*args[1:])
        elif args[:1] == ["manifest"] and len(args) == 2:
            result = {"files": manifest(args[1])}
        elif args[:1] == ["sync-in"] and len(args) == 5:
            result = sync_in(*args[1:])
        elif args[:1] == ["sync-out"] and len(args) == 5:
            result = sync_out(*args[1:])
        else:
            print("usage: fetch BUCKET KEY DEST SHA256 | put SRC BUCKET KEY [THRESHOLD] | "
                  "manifest DIR | sync-in BUCKET KEY SHA256 DIR | sync-out DIR BUCKET KEY "
                  "MANIFEST_KEY", file=sys.stderr)
            return 2
    except Exception as e:  # one line for the laptop to show
        text = " ".join(str(e).split()) or type(e).__name__
        print(f"sm-ssh cp (container): {type(e).__name__}: {text}", file=sys.stderr, flush=True)
        _forget_uploads()
        return 1
    try:
        print(json.dumps(result), flush=True)
    except Exception as e:
        _forget_uploads()
        print(f"sm-ssh cp (container): {type(e).__name__}: could not answer", file=sys.stderr,
              flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
