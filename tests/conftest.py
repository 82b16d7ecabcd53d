"""Shared pytest fixtures: every test runs with fake AWS credentials and no real endpoint."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

_AWS_VARS = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL_STS",
)


@pytest.fixture(autouse=True)
def fake_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[None]:
    """Isolate tests from the developer's AWS config: fake credentials, us-east-1, no profile."""
    for name in _AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path_factory.mktemp("aws-config")
    (home / "config").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield


def is_root_linux() -> bool:
    return os.name == "posix" and hasattr(os, "geteuid") and os.geteuid() == 0 \
        and os.uname().sysname == "Linux"
