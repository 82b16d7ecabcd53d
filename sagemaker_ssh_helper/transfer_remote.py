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
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Any, List, Optional

PART = 8 * 1024 * 1024
CONCURRENCY = 10
_HASH_BLOCK = 1024 * 1024


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


def fetch(bucket: str, key: str, dest: str, expected: str) -> dict:
    if os.path.isdir(dest):
        dest = os.path.join(dest, key.rsplit("/", 1)[-1])
    s3, config = _client_and_config()
    size = int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
    part = f"{dest}.sm-ssh-part"
    try:
        s3.download_file(bucket, key, part, Config=config, Callback=Progress("download", size))
        digest = sha256_of(part)
        if digest != expected:
            raise RuntimeError(f"checksum mismatch: got SHA-256 {digest}, expected {expected}")
        os.replace(part, dest)
    finally:
        if os.path.exists(part):
            os.unlink(part)
    return {"path": os.path.abspath(dest), "bytes": size, "sha256": digest}


def put(src: str, bucket: str, key: str, threshold: str = "0") -> dict:
    """Upload ``src``, unless it is smaller than ``threshold`` bytes (then scp copies it)."""
    if not os.path.isfile(src):
        raise RuntimeError(f"{src}: no such file")
    size = os.path.getsize(src)
    if size < int(threshold):
        return {"path": os.path.abspath(src), "bytes": size, "small": True}
    digest = sha256_of(src)
    s3, config = _client_and_config()
    s3.upload_file(src, bucket, key, Config=config, Callback=Progress("upload", size))
    return {"path": os.path.abspath(src), "bytes": size, "sha256": digest}


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args[:1] == ["fetch"] and len(args) == 5:
            result = fetch(*args[1:])
        elif args[:1] == ["put"] and len(args) in (4, 5):
            result = put(*args[1:])
        else:
            print("usage: fetch BUCKET KEY DEST SHA256 | put SRC BUCKET KEY [THRESHOLD]",
                  file=sys.stderr)
            return 2
    except Exception as e:  # one line for the laptop to show
        text = " ".join(str(e).split()) or type(e).__name__
        print(f"sm-ssh cp (container): {type(e).__name__}: {text}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
