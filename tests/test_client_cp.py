"""``sm-ssh cp`` before anything reaches AWS: where each side is, and one-line usage errors."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run, sm_ssh

from sagemaker_ssh_helper.errors import UsageError
from sagemaker_ssh_helper.transfer import Location, parse_location


def test_remote_side_is_a_target_a_colon_and_a_path() -> None:
    assert parse_location("job.training.sagemaker:/tmp/x") == \
        Location("/tmp/x", "job.training.sagemaker")
    assert parse_location("mi-0123456789abcdef0:data/") == Location("data/", "mi-0123456789abcdef0")
    assert parse_location("./C:/odd name") == Location("./C:/odd name")
    assert parse_location("file.bin") == Location("file.bin")
    with pytest.raises(UsageError, match="path in the container"):
        parse_location("job.training.sagemaker:")


@pytest.mark.parametrize("args, message", [
    (["a.bin", "b.bin"], "give one side as <name>.<kind>.sagemaker:/path"),
    (["x.training.sagemaker:/a", "y.training.sagemaker:/b"], "give one side as"),
    (["missing.bin", "x.training.sagemaker:/tmp/"], "missing.bin: no such file"),
    (["--s3-threshold", "lots", "a", "x.training.sagemaker:/tmp/"], "expected a size"),
    (["--s3", "bucket/prefix", "{file}", "x.training.sagemaker:/tmp/"], "--s3 needs an s3://"),
    (["x.training.sagemaker:/tmp/a", "/no/such/dir/a"], "/no/such/dir: no such directory"),
])
def test_bad_invocations_are_one_line_usage_errors(tmp_path: Path, args: list,
                                                   message: str) -> None:
    (tmp_path / "file").write_bytes(b"x" * 2 * 1024 * 1024)
    argv = [a.replace("{file}", str(tmp_path / "file")) for a in args]
    env = dict(os.environ, HOME=str(tmp_path), AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x",
               AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    done = run(sm_ssh("cp", *argv), env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_archives_are_extracted_only_below_the_destination(tmp_path: Path) -> None:
    import io
    import tarfile

    from sagemaker_ssh_helper import transfer_remote

    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "f.txt").write_text("f\n")
    (source / "g.txt").write_text("g\n")
    assert transfer_remote.changed(str(source), {"g.txt": [2, transfer_remote.sha256_of(
        str(source / "g.txt"))]}) == ["sub/f.txt"]
    archive = tmp_path / "ok.tar"
    transfer_remote.pack(str(source), ["sub/f.txt", "g.txt"], str(archive))
    assert transfer_remote.unpack(str(archive), str(tmp_path / "dest")) == 2
    assert transfer_remote.manifest(str(tmp_path / "dest")) == transfer_remote.manifest(
        str(source))

    for name, kind in (("../escape.txt", tarfile.REGTYPE), ("/abs.txt", tarfile.REGTYPE),
                       ("link", tarfile.SYMTYPE)):
        bad = tmp_path / "bad.tar"
        with tarfile.open(bad, "w") as tar:
            tar.addfile(tarfile.TarInfo("fine.txt"), io.BytesIO(b""))
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(b""))
        with pytest.raises(RuntimeError, match="refusing"):
            transfer_remote.unpack(str(bad), str(tmp_path / "victim"))
        assert not (tmp_path / "victim" / "fine.txt").exists()  # nothing written first
    assert not (tmp_path / "escape.txt").exists()
