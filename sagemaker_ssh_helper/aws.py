"""AWS basics shared by every side: ARNs, partitions, console URLs, sessions and clients.

boto3 is imported lazily so that ``import sagemaker_ssh_helper`` stays light inside containers.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sagemaker_ssh_helper.errors import AwsError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import boto3

logger = logging.getLogger(__name__)

_ARN_RE = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):(?P<service>[a-z0-9-]+):(?P<region>[a-z0-9-]*):"
    r"(?P<account>\d*):(?P<resource>.+)$"
)


@dataclass(frozen=True)
class Arn:
    partition: str
    service: str
    region: str
    account: str
    resource: str  # e.g. "training-job/my-job" or "app/d-x/user/KernelGateway/default"

    @property
    def resource_type(self) -> str:
        return self.resource.split("/", 1)[0]

    @property
    def resource_id(self) -> str:
        return self.resource.split("/", 1)[1] if "/" in self.resource else ""

    def __str__(self) -> str:
        return (
            f"arn:{self.partition}:{self.service}:{self.region}:{self.account}:{self.resource}"
        )


def parse_arn(value: str) -> Arn:
    match = _ARN_RE.match(value)
    if not match:
        raise UsageError(f"not an ARN: {value!r} (expected arn:<partition>:<service>:...)")
    return Arn(**match.groupdict())


# Region prefix -> (partition, DNS suffix); the first match wins, the default is "aws".
_PARTITIONS = (
    ("cn-", "aws-cn", "amazonaws.com.cn"),
    ("us-gov-", "aws-us-gov", "amazonaws.com"),
    ("us-isob-", "aws-iso-b", "sc2s.sgov.gov"),
    ("us-isof-", "aws-iso-f", "csp.hci.ic.gov"),
    ("eu-isoe-", "aws-iso-e", "cloud.adc-e.uk"),
    ("us-iso-", "aws-iso", "c2s.ic.gov"),
)


def partition_for_region(region: str) -> str:
    for prefix, partition, _suffix in _PARTITIONS:
        if region.startswith(prefix):
            return partition
    return "aws"


def dns_suffix(region: str) -> str:
    for prefix, _partition, suffix in _PARTITIONS:
        if region.startswith(prefix):
            return suffix
    return "amazonaws.com"


def console_domain(region: str) -> str:
    """Host name of the AWS console for ``region``: ``<region>.console.<partition domain>``.

    The regional host opens the console in that region (the ``region=`` query parameter alone
    is overridden by the region the user last used).
    """
    partition = partition_for_region(region)
    if partition == "aws-cn":
        return f"{region}.console.amazonaws.cn"
    if partition == "aws-us-gov":
        return f"{region}.console.amazonaws-us-gov.com"
    return f"{region}.console.aws.amazon.com"


def console_url(region: str, path: str) -> str:
    """``path`` is the part after the domain, e.g. ``sagemaker/home?region=..#/jobs/x``."""
    return f"https://{console_domain(region)}/{path.lstrip('/')}"


def is_arn(value: Any) -> bool:
    """Whether ``value`` is an ARN (any partition and service)."""
    return isinstance(value, str) and _ARN_RE.match(value) is not None


def sts_endpoint(region: str) -> str:
    """The regional STS endpoint of ``region`` (works in opt-in regions, China, GovCloud)."""
    return f"https://sts.{region}.{dns_suffix(region)}"


class AWS:
    """Partition facts of one region (the seed's ``AWS`` helper)."""

    def __init__(self, region: str) -> None:
        self.region = region

    def get_console_domain(self) -> str:
        """``<region>.console.aws.amazon.com`` (``.amazonaws.cn``, ``.amazonaws-us-gov.com``)."""
        return console_domain(self.region)

    def get_sts_endpoint(self) -> str:
        return sts_endpoint(self.region)

    @staticmethod
    def is_arn(arn: str) -> bool:
        return is_arn(arn)


def role_name_from_arn(role: str) -> str:
    """Return what follows ``role/`` in an IAM role ARN (keeps a path such as ``service-role/``).

    A bare role name is returned unchanged.
    """
    if not role.startswith("arn:"):
        return role
    arn = parse_arn(role)
    if arn.service != "iam" or not arn.resource.startswith("role/"):
        raise UsageError(f"not an IAM role ARN: {role!r}")
    return arn.resource[len("role/") :]


def mask(value: str | None, keep: int = 4) -> str:
    """Mask an identifier for logs: keep a few characters at each end."""
    if not value:
        return "<none>"
    if len(value) <= 2 * keep:
        return "*" * len(value)
    return f"{value[:keep]}{'*' * (len(value) - 2 * keep)}{value[-keep:]}"


def boto_session(profile: str | None = None, region: str | None = None,
                 credentials: Any | None = None) -> boto3.Session:
    """A session; ``credentials`` (botocore's frozen credentials of another session) make a
    twin of that session without resolving credentials again (no second MFA prompt). Without
    ``region``, ``AWS_REGION`` is honoured as the AWS CLI v2 does (botocore alone reads only
    ``AWS_DEFAULT_REGION`` and the profile)."""
    import os

    import boto3

    region = region or os.environ.get("AWS_REGION") or None
    keys = {}
    if credentials is not None:
        keys = {"aws_access_key_id": credentials.access_key,
                "aws_secret_access_key": credentials.secret_key,
                "aws_session_token": credentials.token}
    try:
        return boto3.Session(profile_name=profile, region_name=region, **keys)
    except Exception as e:  # botocore.exceptions.ProfileNotFound and friends
        raise AwsError(f"cannot open AWS profile {profile!r}: {e}") from e


def session_region(session: boto3.Session) -> str:
    region: str | None = session.region_name
    if not region:
        raise AwsError(
            "no AWS region configured: pass --region, set AWS_REGION or run `aws configure`"
        )
    return region


# Attempts per call: botocore's "standard" mode backs off with jitter (at most 1, 2, 4 s), so
# a failure that does not go away (an unreachable endpoint, a persistent 5xx) is reported in
# seconds; throttling and a passing 5xx are retried. Connecting gets its own short timeout
# (AWS endpoints answer in milliseconds), reading a generous one.
MAX_ATTEMPTS = 4
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 20


def client_config(max_attempts: int = MAX_ATTEMPTS,
                  connect_timeout: float | None = CONNECT_TIMEOUT,
                  read_timeout: float | None = READ_TIMEOUT) -> Any:
    """The product's one botocore ``Config``: ``max_attempts`` calls in all (botocore's standard
    mode); a timeout of ``None`` keeps botocore's default."""
    from botocore.config import Config

    timeouts = {name: value for name, value in (("connect_timeout", connect_timeout),
                                                ("read_timeout", read_timeout))
                if value is not None}
    # total_max_attempts counts the first call too (max_attempts would count retries only).
    return Config(retries={"mode": "standard", "total_max_attempts": max_attempts}, **timeouts)


def no_retry_config() -> Any:
    """Each call made once (botocore's default timeouts): for clients whose caller retries
    throttling itself with ``retry.call``, so a throttled call is not retried twice over."""
    return client_config(1, connect_timeout=None, read_timeout=None)


def client(session: boto3.Session, service: str, region: str | None = None) -> Any:
    try:
        return session.client(service, region_name=region or session.region_name,
                              config=client_config())
    except Exception as e:  # a malformed region or endpoint URL
        raise explain(e, f"{service} client") from e


def sts_client(session: boto3.Session, region: str | None = None) -> Any:
    """An STS client on the *regional* endpoint (works in opt-in regions, China, GovCloud).

    An endpoint configured through AWS_ENDPOINT_URL(_STS) wins, as botocore intends.
    """
    region = region or session_region(session)
    endpoint_url = None
    if not (os.environ.get("AWS_ENDPOINT_URL_STS") or os.environ.get("AWS_ENDPOINT_URL")):
        endpoint_url = sts_endpoint(region)
    try:
        return session.client("sts", region_name=region, endpoint_url=endpoint_url,
                              config=client_config())
    except Exception as e:  # a malformed region or endpoint URL
        raise explain(e, "sts client") from e


def caller_user_id(session: boto3.Session) -> str:
    """The caller's STS UserId (``AROA…:session`` or ``AIDA…``): the SSHOwner tag value."""
    try:
        return str(sts_client(session).get_caller_identity()["UserId"])
    except Exception as e:
        raise explain(e, "sts:GetCallerIdentity") from e


_CREDENTIAL_CODES = {
    "ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId",
    "UnrecognizedClientException", "InvalidSignatureException", "SignatureDoesNotMatch",
}
_DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}


def error_code(e: BaseException) -> str:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


# DeregisterManagedInstance on an instance that is no longer there.
INSTANCE_GONE_CODES = frozenset({"InvalidInstanceId", "InvalidInstanceInformationFilterValue"})


def deregister_managed_instance(ssm: Any, instance_id: str, **retrying: Any) -> bool:
    """``DeregisterManagedInstance``: True when it deregistered ``instance_id``, False when the
    instance was already gone; any other error is raised explained. ``retrying`` goes to
    ``retry.call`` (max_attempts, sleep, rand, on_retry); without it the call is made once."""
    from sagemaker_ssh_helper import retry

    def once() -> bool:
        try:
            ssm.deregister_managed_instance(InstanceId=instance_id)
        except Exception as e:
            if error_code(e) in INSTANCE_GONE_CODES:
                return False
            raise
        return True

    try:
        return retry.call(once, **{"max_attempts": 1, **retrying})
    except Exception as e:
        raise explain(e, f"ssm:DeregisterManagedInstance on {instance_id}") from e


# How SageMaker's Describe*/Delete* calls say "no such resource" (several answer with a
# ValidationException).
NOT_FOUND_CODES = ("ResourceNotFound", "ValidationException")


def not_found(e: BaseException, said: bool = False) -> bool:
    """SageMaker's "no such resource"; with ``said``, the message must say so too (a
    ValidationException can be about anything else)."""
    if error_code(e) not in NOT_FOUND_CODES:
        return False
    if not said:
        return True
    message = str(getattr(e, "response", {}).get("Error", {}).get("Message", "")).lower()
    return "not found" in message or "could not find" in message or "does not exist" in message


def _region_hint(e: BaseException) -> str:
    """" (is the region right?)" when the failed URL names a region botocore does not know."""
    import boto3

    url = str(getattr(e, "kwargs", {}).get("endpoint_url", ""))
    match = re.match(r"^https?://[^./]+\.([a-z0-9-]+)\.amazonaws\.com", url)
    if not match:
        return ""
    known = {r for p in ("aws", "aws-cn", "aws-us-gov")
             for r in boto3.session.Session().get_available_regions("ssm", p)}
    return "" if match.group(1) in known or not known else \
        f" ({match.group(1)} is not a region this installation knows: check --region)"


def explain(e: BaseException, action: str) -> Exception:
    """Turn a boto3/botocore exception into an ``AwsError`` with a hint; pass others through.

    ``action`` names the IAM action, e.g. ``ssm:SendCommand``.
    """
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        EndpointConnectionError,
        HTTPClientError,
        InvalidRegionError,
        NoCredentialsError,
        NoRegionError,
        TokenRetrievalError,
    )

    if isinstance(e, (NoCredentialsError, TokenRetrievalError)):
        return AwsError(f"no valid AWS credentials for {action}: run `aws sso login` "
                        "or set AWS_PROFILE / AWS_ACCESS_KEY_ID")
    if isinstance(e, NoRegionError):
        return AwsError("no AWS region configured: pass --region or set AWS_REGION")
    if isinstance(e, InvalidRegionError):
        return AwsError(f"{getattr(e, 'kwargs', {}).get('region_name', 'the region')!r} is not "
                        "an AWS region name: pass one like us-east-1 with --region or AWS_REGION")
    if isinstance(e, ValueError) and str(e).startswith("Invalid endpoint"):
        return AwsError(f"{e}: check AWS_ENDPOINT_URL and the AWS_ENDPOINT_URL_* variables "
                        "(a URL such as https://ssm.us-east-1.amazonaws.com)")
    if isinstance(e, (EndpointConnectionError, ConnectionError, HTTPClientError)):
        return AwsError(f"cannot reach the AWS endpoint for {action}: {e}" + _region_hint(e))
    if isinstance(e, ClientError):
        code = error_code(e)
        message = e.response.get("Error", {}).get("Message", "")
        if code in _CREDENTIAL_CODES:
            return AwsError(f"AWS credentials rejected ({code}) for {action}: run "
                            "`aws sso login` or choose another --profile")
        if code in _DENIED_CODES:
            return AwsError(f"access denied for {action}: ask your administrator to allow it "
                            "(see IAM_SSM_Setup.md)")
        if code in ("ThrottlingException", "Throttling", "TooManyRequestsException"):
            return AwsError(f"AWS throttled {action} after retries: wait a minute and retry")
        return AwsError(f"{action} failed: {code}: {message}")
    return e if isinstance(e, Exception) else Exception(str(e))
