"""Studio apps and notebook instances from automation: create, watch, delete, find instances.

::

    ide = SSHIDE(domain_id, "alice", region_name="eu-west-1")   # or space_name="team-space"
    ide.create_ssh_kernel_app("ssh-kernel")                      # KernelGateway + SSH LCC
    ide.get_kernel_instance_ids("ssh-kernel", timeout_in_sec=300)  # ["mi-…"]

Names and signatures are those of SSH Helper v2 (``SSHIDE(domain_id, user, region_name)``,
``NotebookInstance(notebook_name, region_name)``, ``IDEAppStatus``, ``Image``); waits run
against deadlines. The region is the one of the boto3 session given (never silently the
default one). The wrappers around these objects are in
:mod:`sagemaker_ssh_helper.wrapper_ide` (``SSHIDEWrapper``, ``SSHNotebookInstanceWrapper``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from sagemaker_ssh_helper import aws, fqdn, retry
from sagemaker_ssh_helper.log import SSHLog
from sagemaker_ssh_helper.manager import SSMManager

logger = logging.getLogger(__name__)

TRANSITIONS = ("Pending", "Deleting")


@dataclass(frozen=True)
class IDEAppStatus:
    """``DescribeApp``'s Status (``Deleted`` when the app does not exist) and failure."""

    status: str
    failure_reason: str | None = None

    def is_in_service(self) -> bool:
        return self.status == "InService"

    def is_deleted(self) -> bool:
        return self.status == "Deleted"

    def is_pending(self) -> bool:
        return self.status == "Pending"

    def is_deleting(self) -> bool:
        return self.status == "Deleting"

    def is_in_transition(self) -> bool:
        return self.status in TRANSITIONS

    def __str__(self) -> str:
        return self.status + (f" ({self.failure_reason})" if self.failure_reason else "")


@dataclass(frozen=True)
class Image:
    """A SageMaker image and the version ``create_and_attach_image`` created."""

    arn: str
    version_arn: str


def _poll(check: Callable[[], bool], what: str, timeout: float,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> None:
    poll = retry.Poll(timeout, first=1.0, cap=15.0, factor=2.0, clip=False, clock=clock,
                      sleep=sleep)
    while not check():
        if poll.passed():
            raise TimeoutError(f"{what}: not done after {timeout} s")
        poll.wait()


class SSHIDE:
    """One user profile's (or space's) Studio apps."""

    def __init__(self, domain_id: str, user: str | None = None,
                 region_name: str | None = None, session: Any = None, *,
                 space_name: str | None = None) -> None:
        if bool(user) == bool(space_name):
            raise ValueError("give exactly one of user (a user profile name) and space_name")
        self.domain_id = domain_id
        self.owner_key = "UserProfileName" if user else "SpaceName"
        self.owner = str(user or space_name)
        self.user = user
        self.space_name = space_name
        self.session = session or aws.boto_session(region=region_name)
        self.region_name = region_name or aws.session_region(self.session)
        self.client = aws.client(self.session, "sagemaker", self.region_name)

    @property
    def current_region(self) -> str:
        return self.region_name

    def _app(self, app_name: str, app_type: str) -> dict[str, Any]:
        return {"DomainId": self.domain_id, self.owner_key: self.owner, "AppType": app_type,
                "AppName": app_name}

    def _ssh_log(self) -> SSHLog:
        return SSHLog(region_name=self.region_name, session=self.session)

    # -- apps -------------------------------------------------------------------------------
    def get_app_status(self, app_name: str, app_type: str = "KernelGateway") -> IDEAppStatus:
        try:
            app = self.client.describe_app(**self._app(app_name, app_type))
        except Exception as e:
            if aws.not_found(e):
                return IDEAppStatus("Deleted")
            raise
        return IDEAppStatus(str(app["Status"]), app.get("FailureReason"))

    def create_app(self, app_name: str, app_type: str = "KernelGateway",
                   instance_type: str = "ml.t3.medium", image_arn: str | None = None,
                   lifecycle_arn: str | None = None, wait: bool = True,
                   timeout_in_sec: float = 900) -> str:
        """Create the app and (``wait``) wait until it is InService; return its ARN."""
        spec: dict[str, Any] = {"InstanceType": instance_type}
        if image_arn:
            spec["SageMakerImageArn"] = image_arn
        if lifecycle_arn:
            spec["LifecycleConfigArn"] = lifecycle_arn
        result = self.client.create_app(**self._app(app_name, app_type), ResourceSpec=spec)
        if wait:
            self.wait_app_status(app_name, app_type, timeout_in_sec=timeout_in_sec)
        return str(result["AppArn"])

    def wait_app_status(self, app_name: str, app_type: str = "KernelGateway",
                        statuses: tuple[str, ...] = ("InService",), timeout_in_sec: float = 900,
                        **clock: Any) -> IDEAppStatus:
        last: list[IDEAppStatus] = []

        def check() -> bool:
            last[:] = [self.get_app_status(app_name, app_type)]
            if last[0].status == "Failed" and "Failed" not in statuses:
                raise RuntimeError(f"app {app_name} failed: {last[0]}; logs: "
                                   f"{self.get_cloudwatch_url(app_name)}")
            return last[0].status in statuses

        _poll(check, f"app {app_name} to become {'/'.join(statuses)}", timeout_in_sec, **clock)
        return last[0]

    def delete_app(self, app_name: str, app_type: str = "KernelGateway",
                   wait: bool = True, timeout_in_sec: float = 900) -> None:
        if self.get_app_status(app_name, app_type).is_deleted():
            return
        self.client.delete_app(**self._app(app_name, app_type))
        if wait:
            self.wait_app_status(app_name, app_type, ("Deleted",), timeout_in_sec)

    def delete_kernel_app(self, app_name: str, wait: bool = True) -> None:
        self.delete_app(app_name, "KernelGateway", wait)

    def create_and_attach_app(self, app_name: str, app_type: str = "KernelGateway",
                              recreate: bool = False, timeout_in_sec: float = 900,
                              **create: Any) -> IDEAppStatus:
        """Create the app (deleting it first when ``recreate``) and wait until InService."""
        status = self.get_app_status(app_name, app_type)
        if status.is_in_transition():
            status = self.wait_app_status(app_name, app_type, ("InService", "Deleted", "Failed"),
                                          timeout_in_sec)
        if recreate and not status.is_deleted():
            self.delete_app(app_name, app_type, timeout_in_sec=timeout_in_sec)
            status = IDEAppStatus("Deleted")
        if status.is_deleted() or status.status == "Failed":
            self.create_app(app_name, app_type, wait=False, **create)
        return self.wait_app_status(app_name, app_type, timeout_in_sec=timeout_in_sec)

    def create_ssh_kernel_app(self, app_name: str,
                              image_name_or_arn: str = "sagemaker-datascience-38",
                              instance_type: str = "ml.m5.xlarge",
                              ssh_lifecycle_config: str = "sagemaker-ssh-helper",
                              recreate: bool = False) -> IDEAppStatus:
        """A KernelGateway app with the SSH lifecycle config (``kernel-lc-config.sh``,
        registered under ``ssh_lifecycle_config``), InService when this returns. An app that
        is already InService is an error unless ``recreate``."""
        status = self.get_app_status(app_name)
        if status.is_in_service() and not recreate:
            raise ValueError(f"app {app_name} is InService already: pass recreate=True to "
                             "delete and create it again")
        image_arn = image_name_or_arn if aws.is_arn(image_name_or_arn) \
            else self.resolve_sagemaker_kernel_image_arn(image_name_or_arn)
        lifecycle_arn = ssh_lifecycle_config if aws.is_arn(ssh_lifecycle_config) else (
            f"arn:{aws.partition_for_region(self.region_name)}:sagemaker:{self.region_name}:"
            f"{self._account()}:studio-lifecycle-config/{ssh_lifecycle_config}")
        self.log_urls(app_name)
        return self.create_and_attach_app(app_name, "KernelGateway", recreate=recreate,
                                          instance_type=instance_type, image_arn=image_arn,
                                          lifecycle_arn=lifecycle_arn)

    def _account(self) -> str:
        return str(aws.sts_client(self.session, self.region_name)
                   .get_caller_identity()["Account"])

    def resolve_sagemaker_kernel_image_arn(self, image_name: str) -> str:
        """The ARN of a SageMaker image by name: one of this account's images
        (DescribeImage), else a SageMaker-provided image, whose ARN is found among the images
        the domain's default settings already use (they share the account of SageMaker's
        images in this region). Pass the full ARN when neither knows it."""
        try:
            return str(self.client.describe_image(ImageName=image_name)["ImageArn"])
        except Exception as e:
            if not aws.not_found(e):
                raise
        domain = self.client.describe_domain(DomainId=self.domain_id)
        own = None
        for arn in _image_arns(domain.get("DefaultUserSettings") or {}):
            head, sep, _ = arn.partition(":image/")
            own = own or self._account()
            if sep and ":sagemaker:" in head and not head.endswith(f":{own}"):
                return f"{head}:image/{image_name}"
        raise ValueError(f"cannot tell the ARN of SageMaker image {image_name!r} in "
                         f"{self.region_name}: pass image_name_or_arn='arn:...:image/"
                         f"{image_name}' (see the SageMaker docs for the image ARNs)")

    # -- images -----------------------------------------------------------------------------
    def create_and_attach_image(self, image_name: str, ecr_image_name: str, role_arn: str,
                                app_image_config_name: str, kernel_specs: list[dict[str, Any]],
                                file_system_config: dict[str, Any]) -> Image:
        """(Re)create SageMaker image ``image_name`` from ``<account>.dkr.ecr.<region>/
        <ecr_image_name>``, its app image config, and make it the domain's custom image."""
        from sagemaker_ssh_helper import ide_images

        return ide_images.create_and_attach_image(self, image_name, ecr_image_name, role_arn,
                                                  app_image_config_name, kernel_specs,
                                                  file_system_config)

    def wait_for_image_creation(self, image_name: str, timeout_in_sec: float = 900) -> None:
        from sagemaker_ssh_helper import ide_images

        ide_images.wait_image(self.client, image_name, "CREATED", timeout_in_sec)

    def wait_for_image_version_creation(self, image_name: str,
                                        timeout_in_sec: float = 900) -> None:
        from sagemaker_ssh_helper import ide_images

        ide_images.wait_image_version(self.client, image_name, timeout_in_sec)

    def wait_for_image_deletion(self, image_name: str, timeout_in_sec: float = 900) -> None:
        from sagemaker_ssh_helper import ide_images

        ide_images.wait_image(self.client, image_name, None, timeout_in_sec)

    # -- instances and links ----------------------------------------------------------------
    def fqdn(self, app_name: str) -> str:
        return fqdn.format_fqdn("studio", app_name, user_or_space=self.owner,
                                domain=self.domain_id)

    def get_instance_ids(self, app_name: str, timeout_in_sec: float = 0,
                         not_earlier_than_timestamp: int = 0) -> list[str]:
        """Online instances of the app, newest first (waits up to ``timeout_in_sec``)."""
        manager = SSMManager(region_name=self.region_name, session=self.session)
        return manager.get_studio_user_kgw_instance_ids(
            self.domain_id, self.owner, app_name, timeout_in_sec=timeout_in_sec,
            not_earlier_than_timestamp=not_earlier_than_timestamp)

    def get_kernel_instance_ids(self, app_name: str, timeout_in_sec: float,
                                not_earlier_than_timestamp: int = 0) -> list[str]:
        self.log_urls(app_name)
        return self.get_instance_ids(app_name, timeout_in_sec, not_earlier_than_timestamp)

    def get_kernel_instance_id(self, app_name: str, timeout_in_sec: float, index: int = 0,
                               not_earlier_than_timestamp: int = 0) -> str:
        ids = self.get_kernel_instance_ids(app_name, timeout_in_sec, not_earlier_than_timestamp)
        if not 0 <= index < len(ids):
            raise ValueError(f"no instance #{index} of {self.fqdn(app_name)} "
                             f"({len(ids)} registered): see {self.get_cloudwatch_url(app_name)}")
        return ids[index]

    def print_kernel_instance_id(self, app_name: str, timeout_in_sec: float,
                                 index: int = 0) -> None:
        print(self.get_kernel_instance_id(app_name, timeout_in_sec, index), flush=True)

    def log_urls(self, app_name: str) -> None:
        logger.info("logs of %s: %s", app_name, self.get_cloudwatch_url(app_name))
        logger.info("apps of %s: %s", self.owner, self.get_user_metadata_url())

    def get_cloudwatch_url(self, app_name: str) -> str:
        return str(self._ssh_log().get_ide_cloudwatch_url(self.domain_id, self.owner, app_name))

    def get_user_metadata_url(self) -> str:
        return str(self._ssh_log().get_ide_metadata_url(self.domain_id, self.owner))


def _image_arns(settings: dict[str, Any]) -> list[str]:
    """``SageMakerImageArn`` values anywhere in a domain's default user settings."""
    found: list[str] = []
    stack: list[Any] = [settings]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "SageMakerImageArn" and isinstance(value, str) and value:
                    found.append(value)
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return found


class NotebookInstance:
    """A notebook instance's status, lifecycle, instances and links."""

    def __init__(self, notebook_name: str, region_name: str | None = None,
                 session: Any = None) -> None:
        self.name = notebook_name
        self.session = session or aws.boto_session(region=region_name)
        self.region_name = region_name or aws.session_region(self.session)
        self.client = aws.client(self.session, "sagemaker", self.region_name)

    @property
    def notebook_name(self) -> str:
        return self.name

    def get_status(self) -> str:
        try:
            result = self.client.describe_notebook_instance(NotebookInstanceName=self.name)
        except Exception as e:
            if aws.not_found(e):
                return "Deleted"
            raise
        return str(result["NotebookInstanceStatus"])

    def start(self, wait: bool = True, timeout_in_sec: float = 900) -> None:
        if self.get_status() in ("Stopped", "Failed"):
            self.client.start_notebook_instance(NotebookInstanceName=self.name)
        if wait:
            _poll(lambda: self.get_status() == "InService", f"{self.name} to start",
                  timeout_in_sec)

    def stop(self, wait: bool = True, timeout_in_sec: float = 900) -> None:
        if self.get_status() == "InService":
            self.client.stop_notebook_instance(NotebookInstanceName=self.name)
        if wait:
            _poll(lambda: self.get_status() in ("Stopped", "Deleted"), f"{self.name} to stop",
                  timeout_in_sec)

    def get_instance_ids(self, timeout_in_sec: float = 0) -> list[str]:
        """Online instances the notebook instance registered, newest first."""
        manager = SSMManager(region_name=self.region_name, session=self.session)
        return manager.get_notebook_instance_ids(self.name, timeout_in_sec=timeout_in_sec)

    def _ssh_log(self) -> SSHLog:
        return SSHLog(region_name=self.region_name, session=self.session)

    def get_cloudwatch_url(self) -> str:
        return str(self._ssh_log().get_notebook_cloudwatch_url(self.name))

    def get_metadata_url(self) -> str:
        return str(self._ssh_log().get_notebook_metadata_url(self.name))


__all__ = ["IDEAppStatus", "Image", "NotebookInstance", "SSHIDE"]
