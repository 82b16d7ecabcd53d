"""``sm-ssh cp`` before anything reaches AWS: where each side is, and one-line usage errors."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize("args, message", [
    (["cp", "--", "-missing", "x.training.sagemaker:/tmp/"], "-missing: no such file"),
    (["cp", "--s3-threshold", "2M", "--", "x.training.sagemaker:/tmp/a", "/no/such/dir/-a"],
     "/no/such/dir: no such directory"),
    (["sync", "--", "-missing", "x.training.sagemaker:/tmp/"], "-missing: no such folder"),
])
def test_double_dash_ends_the_options_of_cp_and_sync(tmp_path: Path, args: list,
                                                     message: str) -> None:
    env = dict(os.environ, HOME=str(tmp_path), AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x",
               AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL="http://127.0.0.1:9")
    done = run(sm_ssh(*args), env, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith(f"sm-ssh: {message}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


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


# -- scp operands, temporary objects, the bucket's owner ------------------------------------------
ACCOUNT = "123456789012"  # moto's account


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def _record_s3_calls(events: Any, calls: list) -> None:
    """What botocore really sends: each S3 operation's name and parameters."""
    def seen(model: Any, params: dict, **_: Any) -> None:
        calls.append((model.name, params.get("headers", {}).get("x-amz-expected-bucket-owner")))
    events.register("before-call.s3", seen)


@pytest.mark.parametrize("sftp", [True, False])
def test_scp_takes_local_names_as_paths_and_remote_paths_literally(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sftp: bool) -> None:
    import subprocess
    from types import SimpleNamespace

    from sagemaker_ssh_helper import transfer

    monkeypatch.chdir(tmp_path)
    for name in ("ckpt-12:30.pt", "-rf.pt"):
        (tmp_path / name).write_bytes(b"x")
    argvs: list = []
    monkeypatch.setattr(transfer.shutil, "which", lambda _: "/usr/bin/scp")
    monkeypatch.setattr(transfer, "_scp_has_sftp", lambda _: sftp)
    monkeypatch.setattr(transfer.connect, "prepare",
                        lambda *_: SimpleNamespace(destination="host"))
    monkeypatch.setattr(transfer.Copier, "_options", lambda self: ["-o", "X=y"])

    def fake_run(argv: list, **_: Any) -> subprocess.CompletedProcess:
        argvs.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(transfer.subprocess, "run", fake_run)
    ctx = SimpleNamespace(region_name="us-east-1")
    target = "job.training.sagemaker"
    transfer.copy(ctx, "ckpt-12:30.pt", f"{target}:/tmp/a b", None, via="scp", out=io.StringIO())
    transfer.copy(ctx, "-rf.pt", f"{target}:/tmp/", None, via="scp", out=io.StringIO())
    transfer.copy(ctx, f"{target}:~/out dir/m.pt", "./", None, via="scp", out=io.StringIO())
    quoted = ["host:/tmp/a b", "host:/tmp/", "host:~/out dir/m.pt"] if sftp else \
        ["host:'/tmp/a b'", "host:/tmp/", "host:~/'out dir/m.pt'"]
    assert [a[a.index("--") + 1:] for a in argvs] == [
        [str(tmp_path / "ckpt-12:30.pt"), quoted[0]], [str(tmp_path / "-rf.pt"), quoted[1]],
        [quoted[2], str(tmp_path)]]
    assert all(("-s" in a[:a.index("--")]) == sftp for a in argvs)


def test_a_failed_upload_leaves_no_object_nor_multipart_upload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aws_env: None) -> None:
    from types import SimpleNamespace

    import boto3
    from moto import mock_aws

    from sagemaker_ssh_helper import transfer
    from sagemaker_ssh_helper.errors import SSHHelperError

    with mock_aws():
        session = boto3.Session(region_name="us-east-1")
        s3 = session.client("s3")
        bucket = f"sagemaker-us-east-1-{ACCOUNT}"
        s3.create_bucket(Bucket=bucket)
        other = s3.create_multipart_upload(Bucket=bucket, Key="elsewhere/big.bin")["UploadId"]
        calls: list = []
        _record_s3_calls(session.events, calls)
        ctx = SimpleNamespace(session=session, region_name="us-east-1")
        assert transfer.s3_prefix(ctx, None) == (bucket, transfer.TRANSFER_PREFIX, ACCOUNT)

        def remote(self: Any, args: list) -> dict:  # the container died mid-upload
            s3.create_multipart_upload(Bucket=args[1], Key=args[2] + ".part")
            raise SSHHelperError("in the container: Killed")

        monkeypatch.setattr(transfer.Copier, "remote", remote)
        copier = transfer.Copier(ctx, None, io.StringIO())
        copier.owner = ACCOUNT
        (tmp_path / "f.bin").write_bytes(b"x" * 1000)
        with pytest.raises(SSHHelperError, match="Killed"):
            copier.upload(tmp_path / "f.bin", "/tmp/", bucket, transfer.TRANSFER_PREFIX)
        assert s3.list_objects_v2(Bucket=bucket).get("Contents", []) == []
        left = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert [u["UploadId"] for u in left] == [other]
        names = {name for name, _ in calls}
        assert {"HeadBucket", "PutObject", "DeleteObject", "ListMultipartUploads",
                "AbortMultipartUpload"} <= names, names
        assert all(owner == ACCOUNT for _, owner in calls), calls


def test_the_container_deletes_its_upload_when_it_cannot_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aws_env: None) -> None:
    import boto3
    from moto import mock_aws

    from sagemaker_ssh_helper import transfer_remote

    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    monkeypatch.setattr(transfer_remote, "OWNER", None)
    (tmp_path / "f.bin").write_bytes(b"x" * 1000)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="bucket-b")
        boto3.setup_default_session()
        calls: list = []
        _record_s3_calls(boto3.DEFAULT_SESSION.events, calls)
        monkeypatch.setattr("sys.stdout", Closed())
        assert transfer_remote.main(["--owner", ACCOUNT, "put", str(tmp_path / "f.bin"), "bucket-b",
                                     "run/f.bin"]) == 1
        monkeypatch.undo()
        assert s3.list_objects_v2(Bucket="bucket-b").get("Contents", []) == []
        assert [name for name, _ in calls] == ["PutObject", "DeleteObject"]
        assert all(owner == ACCOUNT for _, owner in calls), calls


def test_stage_wheel_expects_its_own_account_to_own_the_default_bucket(aws_env: None) -> None:
    import boto3
    from moto import mock_aws

    from sagemaker_ssh_helper import dist

    with mock_aws():
        session = boto3.Session(region_name="us-east-1")
        session.client("s3").create_bucket(Bucket=f"sagemaker-us-east-1-{ACCOUNT}")
        calls: list = []
        _record_s3_calls(session.events, calls)
        url = dist.stage(session, "us-east-1")
        assert url.startswith(f"s3://sagemaker-us-east-1-{ACCOUNT}/")
        assert calls == [("PutObject", ACCOUNT)]
