"""Wrappers for Studio apps and notebook instances (``attach`` only: they are not launched
through the SDK; ``sm-ssh-ide`` or the notebook sets SSH up inside them).

As in SSH Helper v2, ``SSHIDEWrapper`` holds an :class:`~sagemaker_ssh_helper.ide.SSHIDE` and
``SSHNotebookInstanceWrapper`` a :class:`~sagemaker_ssh_helper.ide.NotebookInstance`; both are
importable from :mod:`sagemaker_ssh_helper.wrapper`. No SageMaker SDK import here except a
default ``sagemaker.Session()`` when ``attach()`` gets no session.
"""
from __future__ import annotations

from typing import Any

from sagemaker_ssh_helper import fqdn
from sagemaker_ssh_helper.ide import SSHIDE, NotebookInstance
from sagemaker_ssh_helper.manager import SSMManager
from sagemaker_ssh_helper.wrapper_base import SSHEnvironmentWrapper


def _session(sagemaker_session: Any) -> Any:
    if sagemaker_session is not None:
        return sagemaker_session
    import sagemaker

    return sagemaker.Session()


class SSHIDEWrapper(SSHEnvironmentWrapper):
    """SSH into a Studio app (user profile or space) that runs ``sm-ssh-ide`` or
    ``kernel-lc-config.sh``: ``get_instance_ids``, ``print_ssh_info``, ``start_ssm_connection``."""

    kind = "studio"
    ssh_user = "sagemaker-user"

    def __init__(self, ssm_iam_role: str, ide: SSHIDE, bootstrap_on_start: bool = True,
                 connection_wait_time_seconds: int = 600, sagemaker_session: Any = None,
                 local_user_id: str | None = None, log_to_stdout: bool = False, *,
                 app_name: str = "default", not_earlier_than_timestamp: int = 0) -> None:
        super().__init__(ssm_iam_role, bootstrap_on_start, connection_wait_time_seconds,
                         sagemaker_session, local_user_id, log_to_stdout)
        self.ide = ide
        self.app_name = app_name
        self.not_earlier_than_timestamp = int(not_earlier_than_timestamp or 0)

    @classmethod
    def attach(cls, domain_id: str, user_profile_name: str, app_name: str = "default",
               sagemaker_session: Any = None, not_earlier_than_timestamp: int = 0
               ) -> SSHIDEWrapper:
        """Wrap app ``app_name`` of a user profile (or space) in ``domain_id`` (no API call);
        with ``not_earlier_than_timestamp`` (epoch s), older registrations are ignored."""
        session = _session(sagemaker_session)
        ide = SSHIDE(domain_id, user_profile_name, region_name=session.boto_region_name,
                     session=session.boto_session)
        return cls("", ide, sagemaker_session=session, app_name=app_name,
                   not_earlier_than_timestamp=not_earlier_than_timestamp)

    @property
    def domain_id(self) -> str:
        return self.ide.domain_id

    @property
    def user_profile_name(self) -> str:
        return self.ide.owner

    def resource_name(self) -> str:
        return self.app_name

    def fqdn(self) -> str:
        return fqdn.format_fqdn("studio", self.app_name, user_or_space=self.user_profile_name,
                                domain=self.domain_id)

    def _check_state(self) -> None:
        """Studio apps are checked by their registration only (the app type is not known)."""

    def _lookup(self, manager: SSMManager, name: str, timeout_in_sec: float) -> list[str]:
        return list(manager.get_studio_user_kgw_instance_ids(
            self.domain_id, self.user_profile_name, name, timeout_in_sec=timeout_in_sec,
            not_earlier_than_timestamp=self.not_earlier_than_timestamp))

    def get_cloudwatch_url(self) -> str:
        return self.ide.get_cloudwatch_url(self.app_name)

    def get_metadata_url(self) -> str:
        return self.ide.get_user_metadata_url()


class SSHNotebookInstanceWrapper(SSHEnvironmentWrapper):
    """SSH into a notebook instance set up with ``SageMaker_SSH_Notebook.ipynb``."""

    kind = "notebook"

    def __init__(self, ssm_iam_role: str, notebook_instance: NotebookInstance,
                 bootstrap_on_start: bool = True, connection_wait_time_seconds: int = 600,
                 sagemaker_session: Any = None, local_user_id: str | None = None,
                 log_to_stdout: bool = False) -> None:
        super().__init__(ssm_iam_role, bootstrap_on_start, connection_wait_time_seconds,
                         sagemaker_session, local_user_id, log_to_stdout)
        self.notebook_instance = notebook_instance

    @classmethod
    def attach(cls, notebook_name: str, sagemaker_session: Any = None
               ) -> SSHNotebookInstanceWrapper:
        """Wrap notebook instance ``notebook_name`` (no API call)."""
        session = _session(sagemaker_session)
        instance = NotebookInstance(notebook_name, region_name=session.boto_region_name,
                                    session=session.boto_session)
        return cls("", instance, sagemaker_session=session)

    @property
    def notebook_instance_name(self) -> str:
        return self.notebook_instance.name

    def resource_name(self) -> str:
        return self.notebook_instance.name

    def _lookup(self, manager: SSMManager, name: str, timeout_in_sec: float) -> list[str]:
        return list(manager.get_notebook_instance_ids(name, timeout_in_sec=timeout_in_sec))

    def get_cloudwatch_url(self) -> str:
        return self.notebook_instance.get_cloudwatch_url()

    def get_metadata_url(self) -> str:
        return self.notebook_instance.get_metadata_url()
