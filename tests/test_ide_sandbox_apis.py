"""The sandbox's Studio and notebook-instance APIs list their containers for `sandbox status`
(shaped like the job runner's entries). Containers are created but not started here."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sagemaker_ssh_sandbox.sagemaker.container import Container, ContainerConfig
from sagemaker_ssh_sandbox.sagemaker.notebooks import NotebookAPI
from sagemaker_ssh_sandbox.sagemaker.studio import StudioAPI

RUNNER_KEYS = {"name", "hostname", "state", "unshare_pid", "init_pid", "log", "job", "kind"}


def factory(created: list[Container]) -> Any:
    def start(name: str, root: Path, metadata: dict[str, Any]) -> Container:
        container = Container(ContainerConfig(name=name, hostname=f"host-{name}", root=root,
                                              argv=["true"], env={}))
        created.append(container)
        return container
    return start


def test_studio_api_lists_running_app_containers(tmp_path: Path) -> None:
    created: list[Container] = []
    api = StudioAPI("us-east-1", "123456789012", tmp_path, factory(created))
    domain = api.handle("CreateDomain", {"DomainName": "d"})["DomainArn"].rsplit("/", 1)[-1]
    api.handle("CreateSpace", {"DomainId": domain, "SpaceName": "sp1"})
    app = {"DomainId": domain, "SpaceName": "sp1", "AppType": "JupyterLab", "AppName": "default"}
    api.handle("CreateApp", app)
    api.handle("CreateApp", dict(app, AppType="JupyterServer"))  # no container for this one
    listed = api.containers()
    assert [(c["job"], c["kind"], c["name"]) for c in listed] == \
        [("default", "studio", "default-sp1")]
    assert set(listed[0]) == RUNNER_KEYS and listed[0]["state"] == "Created"
    api.handle("DeleteApp", app)
    assert api.containers() == []


def test_notebook_api_lists_instance_containers_while_in_service(tmp_path: Path) -> None:
    created: list[Container] = []
    api = NotebookAPI("us-east-1", "123456789012", tmp_path, factory(created))
    api.handle("CreateNotebookInstance", {"NotebookInstanceName": "nb1"})
    listed = api.containers()
    assert [(c["job"], c["kind"]) for c in listed] == [("nb1", "notebook")]
    assert set(listed[0]) == RUNNER_KEYS
    api.handle("StopNotebookInstance", {"NotebookInstanceName": "nb1"})
    assert api.containers() == []
    api.handle("StartNotebookInstance", {"NotebookInstanceName": "nb1"})
    assert len(api.containers()) == 1 and len(created) == 2
    api.shutdown()
    assert api.containers() == []
