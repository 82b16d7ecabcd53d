"""Notebook instances in the sandbox: moto records them but runs nothing.

Serves Create/Describe/List/Start/Stop/Delete NotebookInstance. An InService instance is a
namespaced container (see :mod:`sagemaker_ssh_sandbox.sagemaker.studio` for the app equivalent)
with ``/opt/ml/metadata/resource-metadata.json`` (``ResourceArn``, ``ResourceName``) and an
``ec2-user`` account with passwordless sudo, as on a notebook instance with root access.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sagemaker_ssh_sandbox.sagemaker.jobs import ApiError
from sagemaker_ssh_sandbox.sagemaker.studio import ContainerAPI, ContainerFactory

OPERATIONS = ("CreateNotebookInstance", "DescribeNotebookInstance", "ListNotebookInstances",
              "StartNotebookInstance", "StopNotebookInstance", "DeleteNotebookInstance")
NOTEBOOK_USER = "ec2-user"


class NotebookAPI(ContainerAPI):
    operations = OPERATIONS

    def __init__(self, region: str, account: str, state_dir: Path,
                 start_container: ContainerFactory | None = None) -> None:
        super().__init__(region, account, state_dir, start_container)
        self.instances: dict[str, dict[str, Any]] = {}
        self.running: dict[str, Any] = {}  # instance name -> container

    def handle(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if operation == "ListNotebookInstances":
                keys = ("NotebookInstanceName", "NotebookInstanceArn", "NotebookInstanceStatus",
                        "InstanceType", "CreationTime", "LastModifiedTime")
                return {"NotebookInstances": [{k: i[k] for k in keys if k in i}
                                              for i in self.instances.values()]}
            name = body.get("NotebookInstanceName", "")
            if operation == "CreateNotebookInstance":
                return self._create(name, body)
            if name not in self.instances:
                raise ApiError("ValidationException",
                               f"RecordNotFound: notebook instance {name} does not exist")
            instance = self.instances[name]
            if operation == "DescribeNotebookInstance":
                return dict(instance)
            if operation == "StartNotebookInstance":
                self._start(instance)
            elif operation in ("StopNotebookInstance", "DeleteNotebookInstance"):
                self._stop(instance)
                if operation == "DeleteNotebookInstance":
                    del self.instances[name]
            return {}

    def _create(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if name in self.instances:
            raise ApiError("ValidationException", f"notebook instance {name} already exists")
        arn = (f"arn:aws:sagemaker:{self.region}:{self.account}:notebook-instance/"
               f"{name.lower()}")
        now = time.time()
        instance = {"NotebookInstanceName": name, "NotebookInstanceArn": arn,
                    "NotebookInstanceStatus": "Pending", "RoleArn": body.get("RoleArn"),
                    "InstanceType": body.get("InstanceType", "ml.t3.medium"),
                    "CreationTime": now, "LastModifiedTime": now,
                    "Url": f"{name}.notebook.{self.region}.sagemaker.aws"}
        self.instances[name] = instance
        self._start(instance)
        return {"NotebookInstanceArn": arn}

    def _start(self, instance: dict[str, Any]) -> None:
        name = instance["NotebookInstanceName"]
        if name not in self.running and self.start_container is not None:
            metadata = {"ResourceArn": instance["NotebookInstanceArn"], "ResourceName": name,
                        "ExecutionRoleArn": instance.get("RoleArn")}
            root = self.state_dir / "jobs" / "notebook" / name / f"run-{int(time.time() * 1000)}"
            self.running[name] = self.start_container(name, root, metadata)
        instance["NotebookInstanceStatus"] = "InService"
        instance["LastModifiedTime"] = time.time()

    def _stop(self, instance: dict[str, Any]) -> None:
        container = self.running.pop(instance["NotebookInstanceName"], None)
        if container is not None:
            container.terminate(5.0)
        instance["NotebookInstanceStatus"] = "Stopped"
        instance["LastModifiedTime"] = time.time()

    def containers(self) -> list[dict[str, Any]]:
        """The running instances' containers, shaped like the job runner's (for sandbox status)."""
        with self._lock:
            running = list(self.running.items())
        return [dict(c.info(), job=name, kind="notebook") for name, c in running]

    def shutdown(self, grace: float = 5.0) -> None:
        with self._lock:
            containers, self.running = list(self.running.values()), {}
        for container in containers:
            container.terminate(grace)
