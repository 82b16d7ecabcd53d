"""The two transports, and what the launch side, the container and the client agree on for the
native one (core: no SDK, no boto3 at import).

*hybrid* (the default): the container registers itself with SSM through a hybrid activation;
the client finds it by its tags and pushes keys with ``SendCommand``.

*native*: training jobs with SageMaker's remote debugging on (``RemoteDebugConfig``). SageMaker
runs its own SSM agent in the container, reachable as ``sagemaker-training-job:<job>_algo-<n>``
while the job is ``Training``; it takes no ``SendCommand``. Keys therefore travel through S3,
under the prefix the launch side chose (``SSH_AUTHORIZED_KEYS_PATH`` in the job's environment;
by default ``s3://sagemaker-<region>-<account>/ssh-native-keys/``):

    <prefix><owner>/<job>/<client>.pub      a client's public key (one object per client)
    <prefix><owner>/<job>/host-keys/<host>  the container's SSH host public keys, for pinning

``<owner>`` is the job's ``SSH_OWNER_TAG`` (the launching user's STS UserId, or the
``local_user_id`` a team shares). It comes first so that the IAM policy can let each user write
under ``<prefix>${aws:userid}/`` only: sshd of a job accepts the keys of its owner's folder,
so nobody else's key gets in. The native prefix is not the hybrid one (``ssh-authorized-keys/``,
where every user may write a copy of their key), for the same reason.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

TRANSPORT_ENV = "SSH_TRANSPORT"
KEYS_PATH_ENV = "SSH_AUTHORIZED_KEYS_PATH"
# The account that must own the key folder's bucket: every S3 call on the folder passes it as
# ExpectedBucketOwner, so a bucket of that name in another account (the default bucket's name
# is predictable) is refused by S3 instead of handing out or taking in keys.
BUCKET_OWNER_ENV = "SSH_AUTHORIZED_KEYS_BUCKET_OWNER"
HYBRID, NATIVE, AUTO = "hybrid", "native", "auto"
TRANSPORTS = (HYBRID, NATIVE, AUTO)
TRAINING_TARGET_PREFIX = "sagemaker-training-job:"
# Real-time endpoints whose production variant has EnableSSMAccess: SageMaker's agent serves
# ``sagemaker-endpoint:<endpoint>_<variant>_<ec2 instance id>`` (``_<container>`` appended on
# multi-container endpoints), as AWS documents in "Access containers through SSM".
ENDPOINT_TARGET_PREFIX = "sagemaker-endpoint:"
HOST_KEYS_FOLDER = "host-keys"
DEFAULT_KEYS_FOLDER = "ssh-native-keys/"  # the same as cdk.policies.NATIVE_KEYS_PREFIX
# On the launch side: where native jobs keep their keys (else DEFAULT_KEYS_FOLDER in the SageMaker
# default bucket); written into the job's environment as KEYS_PATH_ENV.
LAUNCH_KEYS_PATH_ENV = "SSH_NATIVE_KEYS_PATH"
# On the launch side: the account that owns the bucket of SSH_NATIVE_KEYS_PATH when it is not the
# launching account's (else the launching account); written as BUCKET_OWNER_ENV.
LAUNCH_BUCKET_OWNER_ENV = "SSH_NATIVE_KEYS_BUCKET_OWNER"
_ACCOUNT = re.compile(r"^[0-9]{12}$")
# A public key line as sshd reads it from authorized_keys, without options.
_KEY_LINE = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|"
                       r"sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)"
                       r" [A-Za-z0-9+/]+={0,3}( [^\n\r]*)?$")


def check_transport(value: object) -> str:
    """``hybrid``, ``native`` or ``auto``, else a one-line ValueError."""
    if not isinstance(value, str) or value not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(repr(t) for t in TRANSPORTS)}, "
                         f"got {value!r}")
    return value


def training_target(job_name: str, host: str) -> str:
    """SageMaker's SSM target for one node of a training job with remote debugging."""
    return f"{TRAINING_TARGET_PREFIX}{job_name}_{host}"


def endpoint_target(endpoint: str, variant: str, instance_id: str) -> str:
    """SageMaker's SSM target for one instance of a single-container endpoint's variant."""
    return f"{ENDPOINT_TARGET_PREFIX}{endpoint}_{variant}_{instance_id}"


def is_native_target(text: str) -> bool:
    return text.startswith((TRAINING_TARGET_PREFIX, ENDPOINT_TARGET_PREFIX))


def default_keys_path(region: str, account: str) -> str:
    """The SageMaker SDK's default bucket of the account and region, our folder in it."""
    return f"s3://sagemaker-{region}-{account}/{DEFAULT_KEYS_FOLDER}"


def split_s3(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, ``prefix/``); a one-line ValueError otherwise."""
    if not isinstance(url, str) or not url.startswith("s3://") or len(url) <= len("s3://"):
        raise ValueError(f"{KEYS_PATH_ENV} must be an s3://bucket/prefix/ URL, got {url!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{KEYS_PATH_ENV} has no bucket: {url!r}")
    return bucket, (prefix if not prefix or prefix.endswith("/") else prefix + "/")


@dataclass(frozen=True)
class KeyLayout:
    """Where one job's keys live in S3: ``<prefix><owner>/<job>/``."""

    bucket: str
    job_prefix: str  # <prefix><owner>/<job>/
    bucket_owner: str = ""  # the account ID that must own the bucket ("": not checked)

    @classmethod
    def for_job(cls, keys_path: str, owner: str, job_name: str,
                bucket_owner: str = "") -> KeyLayout:
        bucket, prefix = split_s3(keys_path)
        return cls(bucket, f"{prefix}{safe_segment(owner)}/{safe_segment(job_name)}/",
                   bucket_owner)

    @classmethod
    def from_environment(cls, env: Mapping[str, str], job_name: str,
                         account: str = "") -> KeyLayout | None:
        """The layout the resource's environment names; its bucket must be owned by the
        account the launch wrote (``BUCKET_OWNER_ENV``), else by ``account`` (the resource's
        own, for resources launched before the launch wrote it)."""
        path, owner = env.get(KEYS_PATH_ENV, ""), env.get("SSH_OWNER_TAG", "")
        bucket_owner = env.get(BUCKET_OWNER_ENV, "") or account
        return cls.for_job(path, owner, job_name, bucket_owner) if path and owner else None

    def owner_args(self) -> dict[str, str]:
        """``ExpectedBucketOwner`` for every S3 call on the folder."""
        return {"ExpectedBucketOwner": self.bucket_owner} if self.bucket_owner else {}

    def refused(self, action: str, key: str) -> str:
        """The one line for an AccessDenied on the folder."""
        owner = (f" or the bucket {self.bucket} is not owned by account {self.bucket_owner} "
                 f"(the owner the launch expected, {BUCKET_OWNER_ENV}; for a bucket of another "
                 f"account relaunch with {LAUNCH_BUCKET_OWNER_ENV}=<its account>)"
                 if self.bucket_owner else "")
        return (f"access denied to {self.url(key)} ({action}): your IAM policy does not allow "
                f"it{owner}")

    def client_key(self, client: str) -> str:
        return f"{self.job_prefix}{safe_segment(client)}.pub"

    def host_keys(self, host: str) -> str:
        return f"{self.job_prefix}{HOST_KEYS_FOLDER}/{safe_segment(host)}"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def is_account(text: str) -> bool:
    return bool(_ACCOUNT.match(text))


def safe_segment(text: str) -> str:
    """One S3 key segment: no ``/`` and nothing that reads as a relative path."""
    cleaned = text.replace("/", "_")
    return "_" if cleaned in ("", ".", "..") else cleaned


def public_key_lines(text: str) -> list[str]:
    """The lines of ``text`` that are plain public keys (options such as ``command=`` or
    ``from=`` are not ours to accept from S3)."""
    return [line.strip() for line in text.splitlines() if _KEY_LINE.match(line.strip())]
