"""Studio apps and notebook instances from automation: create, watch, delete, find instances.

::

    ide = SSHIDE(domain_id, "alice", region="eu-west-1")      # or space_name="team-space"
    ide.create_and_attach_app("default", app_type="JupyterLab")
    ide.get_instance_ids()                                      # ["mi-…"] once SSH is up

The region is the one of the boto3 session given (never silently the default one). The wrapper
bases here are completed with SDK sessions in :mod:`sagemaker_ssh_helper.wrapper`
(``SSHIDEWrapper``, ``SSHNotebookInstanceWrapper``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from sagemaker_ssh_helper import aws, fqdn
from sagemaker_ssh_helper.wrapper_base import DEFAULT_LOOKUP_TIMEOUT, SSHWrapperBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IDEAppStatus:
    """``DescribeApp``'s Status (``Deleted`` when the app does not exist) and failure."""

    status: str
    failure_reason: Optional[str] = None

    def is_in_service(self) -> bool:
        return self.status == "InService"

    def is_deleted(self) -> bool:
        return self.status == "Deleted"

    def is_pending(self) -> bool:
        return self.status == "Pending"

    def __str__(self) -> str:
        return self.status + (f" ({self.failure_reason})" if self.failure_reason else "")


def _not_found(e: Exception) -> bool:
    return aws.error_code(e) in ("ResourceNotFound", "ValidationException")


def _poll(check: Callable[[], bool], what: str, timeout: float,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> None:
    deadline, delay = clock() + timeout, 1.0
    while not check():
        if clock() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout} s")
        sleep(delay)
        delay = min(delay * 2, 15.0)


class SSHIDE:
    """One user profile's (or space's) Studio apps."""

    def __init__(self, domain_id: str, user_profile_name: Optional[str] = None,
                 region: Optional[str] = None, session: Any = None,
                 space_name: Optional[str] = None) -> None:
        if bool(user_profile_name) == bool(space_name):
            raise ValueError("give exactly one of user_profile_name and space_name")
        self.domain_id = domain_id
        self.owner_key = "UserProfileName" if user_profile_name else "SpaceName"
        self.owner = str(user_profile_name or space_name)
        self.session = session or aws.boto_session(region=region)
        self.region = aws.session_region(self.session)
        self.client = aws.client(self.session, "sagemaker")

    def _app(self, app_name: str, app_type: str) -> Dict[str, Any]:
        return {"DomainId": self.domain_id, self.owner_key: self.owner, "AppType": app_type,
                "AppName": app_name}

    def get_app_status(self, app_name: str, app_type: str = "KernelGateway") -> IDEAppStatus:
        try:
            app = self.client.describe_app(**self._app(app_name, app_type))
        except Exception as e:
            if _not_found(e):
                return IDEAppStatus("Deleted")
            raise
        return IDEAppStatus(str(app["Status"]), app.get("FailureReason"))

    def create_app(self, app_name: str, app_type: str = "KernelGateway",
                   instance_type: str = "ml.t3.medium", image_arn: Optional[str] = None,
                   lifecycle_arn: Optional[str] = None) -> str:
        spec: Dict[str, Any] = {"InstanceType": instance_type}
        if image_arn:
            spec["SageMakerImageArn"] = image_arn
        if lifecycle_arn:
            spec["LifecycleConfigArn"] = lifecycle_arn
        result = self.client.create_app(**self._app(app_name, app_type), ResourceSpec=spec)
        return str(result["AppArn"])

    def wait_app_status(self, app_name: str, app_type: str = "KernelGateway",
                        statuses: tuple = ("InService",), timeout_in_sec: float = 900,
                        **clock: Any) -> IDEAppStatus:
        last: List[IDEAppStatus] = []

        def check() -> bool:
            last[:] = [self.get_app_status(app_name, app_type)]
            if last[0].status == "Failed" and "Failed" not in statuses:
                raise RuntimeError(f"app {app_name} failed: {last[0]}")
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

    def create_and_attach_app(self, app_name: str, app_type: str = "KernelGateway",
                              recreate: bool = False, timeout_in_sec: float = 900,
                              **create: Any) -> IDEAppStatus:
        """Create the app (deleting it first when ``recreate``) and wait until InService."""
        status = self.get_app_status(app_name, app_type)
        if recreate and not status.is_deleted():
            self.delete_app(app_name, app_type, timeout_in_sec=timeout_in_sec)
            status = IDEAppStatus("Deleted")
        if status.is_deleted() or status.status == "Failed":
            self.create_app(app_name, app_type, **create)
        return self.wait_app_status(app_name, app_type, timeout_in_sec=timeout_in_sec)

    def fqdn(self, app_name: str) -> str:
        return fqdn.format_fqdn("studio", app_name, user_or_space=self.owner,
                                domain=self.domain_id)

    def get_instance_ids(self, app_name: str, timeout_in_sec: float = 0,
                         not_earlier_than_timestamp: int = 0) -> List[str]:
        from sagemaker_ssh_helper.manager import SSMManager

        manager = SSMManager(region_name=self.region, session=self.session)
        return manager.get_studio_user_kgw_instance_ids(
            self.domain_id, self.owner, app_name, timeout_in_sec=timeout_in_sec,
            not_earlier_than_timestamp=not_earlier_than_timestamp)


class NotebookInstance:
    """A notebook instance's status and lifecycle."""

    def __init__(self, name: str, region: Optional[str] = None, session: Any = None) -> None:
        self.name = name
        self.session = session or aws.boto_session(region=region)
        self.region = aws.session_region(self.session)
        self.client = aws.client(self.session, "sagemaker")

    def get_status(self) -> str:
        try:
            result = self.client.describe_notebook_instance(NotebookInstanceName=self.name)
        except Exception as e:
            if _not_found(e):
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


class IDEWrapperBase(SSHWrapperBase):
    """A Studio app (``attach`` only: apps are not created through the SDK)."""

    kind = "studio"
    ssh_user = "sagemaker-user"

    def __init__(self, domain_id: str, user_profile_name: str, app_name: str = "default",
                 sagemaker_session: Any = None) -> None:
        super().__init__(None, sagemaker_session)
        self.domain_id = domain_id
        self.user_profile_name = user_profile_name
        self.app_name = app_name

    def resource_name(self) -> str:
        return self.app_name

    def fqdn(self) -> str:
        return fqdn.format_fqdn("studio", self.app_name, user_or_space=self.user_profile_name,
                                domain=self.domain_id)

    def _lookup(self, manager: Any, name: str, timeout_in_sec: int) -> List[str]:
        return list(manager.get_studio_user_kgw_instance_ids(
            self.domain_id, self.user_profile_name, name, timeout_in_sec=timeout_in_sec))


class NotebookInstanceWrapperBase(SSHWrapperBase):
    """A notebook instance (``attach`` only)."""

    kind = "notebook"

    def __init__(self, notebook_instance_name: str, sagemaker_session: Any = None) -> None:
        super().__init__(None, sagemaker_session)
        self.notebook_instance_name = notebook_instance_name

    def resource_name(self) -> str:
        return self.notebook_instance_name

    def _lookup(self, manager: Any, name: str, timeout_in_sec: int) -> List[str]:
        return list(manager.get_notebook_instance_ids(name, timeout_in_sec=timeout_in_sec))


__all__ = ["DEFAULT_LOOKUP_TIMEOUT", "IDEAppStatus", "IDEWrapperBase", "NotebookInstance",
           "NotebookInstanceWrapperBase", "SSHIDE"]
