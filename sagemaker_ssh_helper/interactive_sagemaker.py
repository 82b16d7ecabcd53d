"""SageMaker resources and their SSH instances as records (SSH Helper v2's interactive API).

``SageMaker`` lists resources with the SageMaker list APIs (paginated; jobs of the last 30
days); ``InteractiveSageMaker`` joins them with the SSH Helper managed instances the way
``sm-ssh list`` does: ONE tag-filtered ``DescribeInstanceProperties`` scan
(``SSMManager.ssh_instances_and_tags``), matched on the resource ARN. Nothing is described or
tag-read per resource or per instance (v2 read the tags of every managed instance of the
account and described every Studio app)::

    interactive = InteractiveSageMaker(SageMaker(), SSMManager())
    for job in interactive.list_training_jobs(interactive.managed_instances()):
        print(job)          # Online  TrainingJob  InProgress  my-job.training.sagemaker
"""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from sagemaker_ssh_helper import aws, fqdn
from sagemaker_ssh_helper.ide import IDEAppStatus
from sagemaker_ssh_helper.manager import TAG_ARN, TAG_OWNER, TAG_TIMESTAMP, SSMManager

JOB_DAYS = 30
Instances = dict[str, dict[str, str]]


class SageMakerCoreApp:
    """A SageMaker resource and (once joined) the SSH instance it registered."""

    NO_SSH_FLAG = "ssh:NotFound"
    label = "Resource"

    def __init__(self) -> None:
        self.ssh_owner: str | None = None
        self.ssm_instance_id: str | None = None
        self.app_type: str | None = None
        self.ping_status = "Unknown"
        self.resource_type: str | None = None

    def set_ssm_instance_id(self, ssm_instance_id: str) -> None:
        self.ssm_instance_id = ssm_instance_id

    def set_ssh_owner(self, ssh_owner: str | None) -> None:
        self.ssh_owner = ssh_owner

    def set_ping_status(self, ping_status: str) -> None:
        self.ping_status = ping_status

    def arn_key(self) -> str:  # pragma: no cover - every record overrides it
        raise NotImplementedError

    def status(self) -> str:  # pragma: no cover - every record overrides it
        raise NotImplementedError

    def fqdn(self) -> str:  # pragma: no cover - every record overrides it
        raise NotImplementedError

    def __str__(self) -> str:
        ssh = self.ping_status if self.ssm_instance_id else self.NO_SSH_FLAG
        return f"{ssh:<16} {self.app_type or self.label:<18} {self.status():<12} {self.fqdn()}"


class SageMakerStudioApp(SageMakerCoreApp):
    def __init__(self, domain_id: str, user_profile_name: str | None, app_name: str,
                 app_type: str, app_status: Any, space_name: str | None = None) -> None:
        super().__init__()
        self.domain_id = domain_id
        self.user_profile_name = user_profile_name
        self.space_name = space_name
        self.app_name = app_name
        self.app_type = app_type
        self.app_status = app_status if isinstance(app_status, IDEAppStatus) \
            else IDEAppStatus(str(app_status))
        self.resource_type = "ide" if user_profile_name else "ide-space"

    @property
    def owner(self) -> str:
        return str(self.user_profile_name or self.space_name or "")

    def arn_key(self) -> str:
        return f"app/{self.domain_id}/{self.owner}/{self.app_type}/{self.app_name}".lower()

    def status(self) -> str:
        return str(self.app_status)

    def fqdn(self) -> str:
        return f"{self.app_name}.{self.owner}.{self.domain_id}.studio.sagemaker"


class _NamedResource(SageMakerCoreApp):
    kind = ""  # the fqdn kind: its ARN type and list call come from the kinds' table

    def __init__(self, name: str, status: str) -> None:
        super().__init__()
        self._name = name
        self._status = status
        self.resource_type = self.kind

    def arn_key(self) -> str:
        return f"{fqdn.kind(self.kind).arn_type}/{self._name}".lower()

    def status(self) -> str:
        return self._status

    def fqdn(self) -> str:
        return fqdn.format_fqdn(self.kind, self._name)


class SageMakerEndpoint(_NamedResource):
    label, kind = "InferenceEndpoint", "inference"

    def __init__(self, name: str, endpoint_status: str) -> None:
        super().__init__(name, endpoint_status)
        self.name = name
        self.endpoint_status = endpoint_status


class SageMakerTrainingJob(_NamedResource):
    label, kind = "TrainingJob", "training"

    def __init__(self, training_job_name: str, training_job_status: str) -> None:
        super().__init__(training_job_name, training_job_status)
        self.training_job_name = training_job_name
        self.training_job_status = training_job_status


class SageMakerProcessingJob(_NamedResource):
    label, kind = "ProcessingJob", "processing"

    def __init__(self, processing_job_name: str, processing_job_status: str) -> None:
        super().__init__(processing_job_name, processing_job_status)
        self.processing_job_name = processing_job_name
        self.processing_job_status = processing_job_status


class SageMakerNotebookInstance(_NamedResource):
    label, kind = "NotebookInstance", "notebook"

    def __init__(self, name: str, status: str) -> None:
        super().__init__(name, status)
        self.name = name


class SageMakerTransformJob(_NamedResource):
    label, kind = "TransformJob", "transform"

    def __init__(self, transform_job_name: str, transform_job_status: str) -> None:
        super().__init__(transform_job_name, transform_job_status)
        self.transform_job_name = transform_job_name
        self.transform_job_status = transform_job_status


class SageMaker:
    """The SageMaker resources of one region, one list call per page."""

    def __init__(self, region: str | None = None, session: Any = None) -> None:
        self.session = session if session is not None else aws.boto_session(region=region)
        self.region = region or aws.session_region(self.session)
        self.sagemaker_client = aws.client(self.session, "sagemaker", self.region)

    def _pages(self, api: fqdn.SageMakerApi) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        if api.recent_only:
            kwargs["CreationTimeAfter"] = datetime.now(timezone.utc) - timedelta(days=JOB_DAYS)
        paginator = self.sagemaker_client.get_paginator(api.list_op)
        try:
            for page in paginator.paginate(**kwargs):
                yield from page.get(api.list_key, [])
        except Exception as e:
            raise aws.explain(e, api.list_action) from e

    def _list(self, record: Any) -> list[Any]:
        """Every resource of ``record``'s kind as a ``record`` (name and status)."""
        api = fqdn.kind(record.kind).api
        assert api is not None
        return [record(item[api.name_key], item[api.status_key]) for item in self._pages(api)]

    def list_ide_apps(self) -> list[SageMakerStudioApp]:
        """Studio apps of every user profile and space (their status comes with the list)."""
        return [SageMakerStudioApp(app["DomainId"], app.get("UserProfileName"), app["AppName"],
                                   app["AppType"], IDEAppStatus(str(app.get("Status", ""))),
                                   space_name=app.get("SpaceName"))
                for app in self._apps()]

    def _apps(self) -> Iterator[dict[str, Any]]:
        try:
            for page in self.sagemaker_client.get_paginator("list_apps").paginate():
                yield from page.get("Apps", [])
        except Exception as e:
            raise aws.explain(e, "sagemaker:ListApps") from e

    def list_endpoints(self) -> list[SageMakerEndpoint]:
        return self._list(SageMakerEndpoint)

    def list_training_jobs(self) -> list[SageMakerTrainingJob]:
        return self._list(SageMakerTrainingJob)

    def list_processing_jobs(self) -> list[SageMakerProcessingJob]:
        return self._list(SageMakerProcessingJob)

    def list_transform_jobs(self) -> list[SageMakerTransformJob]:
        return self._list(SageMakerTransformJob)

    def list_notebook_instances(self) -> list[SageMakerNotebookInstance]:
        return self._list(SageMakerNotebookInstance)


def _latest_by_resource(managed_instances: Instances) -> dict[str, tuple[str, dict[str, str]]]:
    """ARN key -> (instance ID, tags) of the newest instance registered for it."""
    best: dict[str, tuple[int, str, dict[str, str]]] = {}
    for instance_id, tags in managed_instances.items():
        key = fqdn.arn_key(tags.get(TAG_ARN, ""))
        if not key:
            continue
        try:
            stamp = int(tags.get(TAG_TIMESTAMP, "0"))
        except ValueError:
            stamp = 0
        if key not in best or (stamp, instance_id) > best[key][:2]:
            best[key] = (stamp, instance_id, tags)
    return {key: (iid, tags) for key, (_, iid, tags) in best.items()}


class InteractiveSageMaker:
    """Resources joined with their SSH instances; ``print_*`` print one line per resource."""

    def __init__(self, sagemaker: SageMaker, manager: SSMManager, log: Any = None) -> None:
        self.sagemaker = sagemaker
        self.manager = manager
        self.log = log  # accepted for compatibility; endpoints are found by their tags

    def managed_instances(self) -> Instances:
        """The SSH Helper instances with their tags, from one filtered scan."""
        return self.manager.ssh_instances_and_tags()

    def _join(self, records: list[Any], managed_instances: Instances) -> list[Any]:
        latest = _latest_by_resource(managed_instances)
        for record in records:
            found = latest.get(record.arn_key())
            if found:
                instance_id, tags = found
                record.set_ssm_instance_id(instance_id)
                record.set_ssh_owner(tags.get(TAG_OWNER))
                record.set_ping_status(tags.get(SSMManager.PING_STATUS, "Unknown"))
        return records

    @staticmethod
    def _print(records: list[Any]) -> None:
        for record in records:
            print(record, flush=True)

    def list_studio_ide_apps_for_user_and_domain(self, domain_id: str | None,
                                                 user_profile_name: str | None
                                                 ) -> list[SageMakerStudioApp]:
        """Apps of a user profile or space (any, when empty or None) in a domain (any)."""
        apps = [a for a in self.sagemaker.list_ide_apps()
                if (not domain_id or a.domain_id == domain_id)
                and (not user_profile_name or a.owner == user_profile_name)]
        return self._join(apps, self.managed_instances())

    def print_studio_ide_apps_for_user_and_domain(self, domain_id: str | None,
                                                  user_profile_name: str | None) -> None:
        self._print(self.list_studio_ide_apps_for_user_and_domain(domain_id, user_profile_name))

    def list_studio_ide_apps_for_user(self, user_profile_name: str) -> list[SageMakerStudioApp]:
        return self.list_studio_ide_apps_for_user_and_domain(None, user_profile_name)

    def list_studio_ide_apps(self) -> list[SageMakerStudioApp]:
        return self.list_studio_ide_apps_for_user_and_domain(None, None)

    def list_endpoints(self, managed_instances: Instances) -> list[SageMakerEndpoint]:
        return self._join(self.sagemaker.list_endpoints(), managed_instances)

    def print_endpoints(self) -> None:
        self._print(self.list_endpoints(self.managed_instances()))

    def list_training_jobs(self, managed_instances: Instances) -> list[SageMakerTrainingJob]:
        return self._join(self.sagemaker.list_training_jobs(), managed_instances)

    def print_training_jobs(self) -> None:
        self._print(self.list_training_jobs(self.managed_instances()))

    def list_processing_jobs(self, managed_instances: Instances) -> list[SageMakerProcessingJob]:
        return self._join(self.sagemaker.list_processing_jobs(), managed_instances)

    def print_processing_jobs(self) -> None:
        self._print(self.list_processing_jobs(self.managed_instances()))

    def list_transform_jobs(self, managed_instances: Instances) -> list[SageMakerTransformJob]:
        return self._join(self.sagemaker.list_transform_jobs(), managed_instances)

    def print_transform_jobs(self) -> None:
        self._print(self.list_transform_jobs(self.managed_instances()))

    def list_notebook_instances(self, managed_instances: Instances
                                ) -> list[SageMakerNotebookInstance]:
        return self._join(self.sagemaker.list_notebook_instances(), managed_instances)

    def print_notebook_instances(self) -> None:
        self._print(self.list_notebook_instances(self.managed_instances()))
