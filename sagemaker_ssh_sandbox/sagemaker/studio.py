"""SageMaker Studio in the sandbox (moto has no user profiles, spaces or running apps).

Serves Create/Describe/List for domains, user profiles and spaces, and Create/Describe/List/Delete
for apps. Every app other than the domain's ``JupyterServer`` runs in a namespaced container (see
:mod:`sagemaker_ssh_sandbox.sagemaker.container`) that looks like a Studio app to the code in it:
``/opt/ml/metadata/resource-metadata.json`` with ``AppType``, ``DomainId``, ``UserProfileName``
or ``SpaceName``, ``ResourceArn`` (``app/<domain>/<user-or-space>/<AppType>/<app-name>``),
``ResourceName`` and ``ExecutionRoleArn``, and a ``sagemaker-user`` account with passwordless
sudo (as Studio images have). Tests run commands in an app with :func:`exec_argv` (as root, or
through ``runuser`` as that user), the way a notebook or lifecycle configuration would.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sagemaker_ssh_sandbox.sagemaker.jobs import ApiError

logger = logging.getLogger(__name__)

APP_USER = "sagemaker-user"
# PID 1's entry point: add the user and, as Studio images and notebook instances do, give it
# passwordless sudo (both only in the container's overlay /etc: nothing is written unless /etc
# is that overlay); let it reach the interpreter when that lives under the container's private
# /root (e.g. pyenv); then idle.
ENTRY = ("[ \"$(findmnt -n -o FSTYPE --target /etc)\" = overlay ] || "
         "{{ echo 'sandbox app: /etc is not the container overlay' >&2; exit 125; }}; "
         "mkdir -p /etc/sudoers.d; "
         "echo '{user} ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/{user}; "
         "chmod 0440 /etc/sudoers.d/{user}; "
         "chmod 0711 /root; "  # before the user appears: tests wait for the user
         "id -u {user} >/dev/null 2>&1 || useradd -m -s /bin/bash -p '*' {user}; "
         "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done")
OPERATIONS = ("CreateDomain", "DescribeDomain", "ListDomains", "CreateUserProfile",
              "DescribeUserProfile", "ListUserProfiles", "CreateSpace", "DescribeSpace",
              "ListSpaces", "CreateApp", "DescribeApp", "ListApps", "DeleteApp")

ContainerFactory = Callable[[str, Path, dict[str, Any]], Any]


@dataclass
class App:
    domain: str
    owner: str          # user profile or space name
    owner_key: str      # UserProfileName | SpaceName
    app_type: str
    name: str
    arn: str
    created: float = field(default_factory=time.time)
    status: str = "Pending"
    container: Any = None

    def describe(self) -> dict[str, Any]:
        return {"AppArn": self.arn, "AppType": self.app_type, "AppName": self.name,
                "DomainId": self.domain, self.owner_key: self.owner, "Status": self.status,
                "CreationTime": self.created}


class ContainerAPI:
    """What the sandbox's APIs for resources that run containers (Studio apps, notebook
    instances) share: the region and account they answer for, where the containers keep their
    state, how one is started (None: the records only) and one lock over the records."""

    operations: tuple[str, ...] = ()

    def __init__(self, region: str, account: str, state_dir: Path,
                 start_container: ContainerFactory | None = None) -> None:
        self.region = region
        self.account = account
        self.state_dir = state_dir
        self.start_container = start_container
        self._lock = threading.RLock()

    def handles(self, operation: str, body: dict[str, Any]) -> bool:
        return operation in self.operations


class StudioAPI(ContainerAPI):
    """The Studio operations of the sandbox gateway (AWS JSON 1.1 bodies as dicts)."""

    operations = OPERATIONS

    def __init__(self, region: str, account: str, state_dir: Path,
                 start_container: ContainerFactory | None = None) -> None:
        super().__init__(region, account, state_dir, start_container)
        self.domains: dict[str, dict[str, Any]] = {}
        self.profiles: dict[tuple[str, str], dict[str, Any]] = {}
        self.spaces: dict[tuple[str, str], dict[str, Any]] = {}
        self.apps: dict[tuple[str, str, str, str], App] = {}

    def _arn(self, resource: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:{resource}"

    def handle(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            result: dict[str, Any] = getattr(self, f"_{operation}")(body)
            return result

    # -- domains, profiles, spaces ------------------------------------------------------------
    def _domain(self, domain_id: str) -> dict[str, Any]:
        if domain_id not in self.domains:
            raise ApiError("ResourceNotFound", f"Domain {domain_id} does not exist", 400)
        return self.domains[domain_id]

    def _CreateDomain(self, body: dict[str, Any]) -> dict[str, Any]:
        domain_id = "d-" + uuid.uuid4().hex[:12]
        arn = self._arn(f"domain/{domain_id}")
        self.domains[domain_id] = {
            "DomainId": domain_id, "DomainArn": arn, "DomainName": body["DomainName"],
            "Status": "InService", "AuthMode": body.get("AuthMode", "IAM"),
            "DefaultUserSettings": body.get("DefaultUserSettings", {}),
            "CreationTime": time.time(), "Url": f"https://{domain_id}.studio.{self.region}"
                                                 ".sagemaker.aws"}
        return {"DomainArn": arn, "Url": self.domains[domain_id]["Url"]}

    def _DescribeDomain(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._domain(body["DomainId"]))

    def _ListDomains(self, body: dict[str, Any]) -> dict[str, Any]:
        keys = ("DomainArn", "DomainId", "DomainName", "Status", "CreationTime", "Url")
        return {"Domains": [{k: d[k] for k in keys} for d in self.domains.values()]}

    def _CreateUserProfile(self, body: dict[str, Any]) -> dict[str, Any]:
        domain, name = body["DomainId"], body["UserProfileName"]
        self._domain(domain)
        arn = self._arn(f"user-profile/{domain}/{name}")
        self.profiles[(domain, name)] = {"DomainId": domain, "UserProfileName": name,
                                         "UserProfileArn": arn, "Status": "InService",
                                         "UserSettings": body.get("UserSettings", {}),
                                         "CreationTime": time.time()}
        return {"UserProfileArn": arn}

    def _DescribeUserProfile(self, body: dict[str, Any]) -> dict[str, Any]:
        key = (body["DomainId"], body["UserProfileName"])
        if key not in self.profiles:
            raise ApiError("ResourceNotFound", f"User profile {key[1]} does not exist", 400)
        return dict(self.profiles[key])

    def _ListUserProfiles(self, body: dict[str, Any]) -> dict[str, Any]:
        want = body.get("DomainIdEquals")
        return {"UserProfiles": [
            {k: p[k] for k in ("DomainId", "UserProfileName", "Status", "CreationTime")}
            for (d, _), p in self.profiles.items() if not want or d == want]}

    def _CreateSpace(self, body: dict[str, Any]) -> dict[str, Any]:
        domain, name = body["DomainId"], body["SpaceName"]
        self._domain(domain)
        arn = self._arn(f"space/{domain}/{name}")
        self.spaces[(domain, name)] = {"DomainId": domain, "SpaceName": name, "SpaceArn": arn,
                                       "Status": "InService",
                                       "SpaceSettings": body.get("SpaceSettings", {}),
                                       "CreationTime": time.time()}
        return {"SpaceArn": arn}

    def _DescribeSpace(self, body: dict[str, Any]) -> dict[str, Any]:
        key = (body["DomainId"], body["SpaceName"])
        if key not in self.spaces:
            raise ApiError("ResourceNotFound", f"Space {key[1]} does not exist", 400)
        return dict(self.spaces[key])

    def _ListSpaces(self, body: dict[str, Any]) -> dict[str, Any]:
        want = body.get("DomainIdEquals")
        return {"Spaces": [
            {k: s[k] for k in ("DomainId", "SpaceName", "Status", "CreationTime")}
            for (d, _), s in self.spaces.items() if not want or d == want]}

    # -- apps ---------------------------------------------------------------------------------
    @staticmethod
    def _owner(body: dict[str, Any]) -> tuple[str, str]:
        for key in ("UserProfileName", "SpaceName"):
            if body.get(key):
                return key, str(body[key])
        raise ApiError("ValidationException", "UserProfileName or SpaceName is required")

    def _role(self, domain: str, owner_key: str, owner: str) -> str:
        settings = self.domains[domain].get("DefaultUserSettings", {})
        if owner_key == "UserProfileName":
            settings = self.profiles.get((domain, owner), {}).get("UserSettings") or settings
        role = settings.get("ExecutionRole")
        return str(role or self._arn("role/SageMakerStudioExecutionRole").replace(
            ":sagemaker:", ":iam:").replace(f":{self.region}:", "::"))

    def _CreateApp(self, body: dict[str, Any]) -> dict[str, Any]:
        domain = body["DomainId"]
        self._domain(domain)
        owner_key, owner = self._owner(body)
        app_type, name = body["AppType"], body["AppName"]
        key = (domain, owner, app_type, name)
        if key in self.apps and self.apps[key].status not in ("Deleted", "Failed"):
            raise ApiError("ResourceInUse", f"App {name} already exists", 400)
        arn = self._arn(f"app/{domain}/{owner}/{app_type.lower()}/{name}")
        app = App(domain, owner, owner_key, app_type, name, arn)
        self.apps[key] = app
        if app_type != "JupyterServer" and self.start_container is not None:
            metadata = {"AppType": app_type, "DomainId": domain, owner_key: owner,
                        "ResourceArn": arn, "ResourceName": name,
                        "ExecutionRoleArn": self._role(domain, owner_key, owner)}
            root = self.state_dir / "jobs" / "studio" / domain / f"{owner}-{name}"
            try:
                app.container = self.start_container(f"{name}-{owner}", root, metadata)
            except Exception as e:
                app.status = "Failed"
                raise ApiError("ResourceLimitExceeded", f"app {name} failed to start: {e}",
                               400) from e
        app.status = "InService"
        return {"AppArn": arn}

    def _app(self, body: dict[str, Any]) -> App:
        _, owner = self._owner(body)
        key = (body["DomainId"], owner, body["AppType"], body["AppName"])
        if key not in self.apps:
            raise ApiError("ResourceNotFound", f"App {body['AppName']} does not exist", 400)
        return self.apps[key]

    def _DescribeApp(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._app(body).describe()

    def _ListApps(self, body: dict[str, Any]) -> dict[str, Any]:
        domain = body.get("DomainIdEquals")
        owner = body.get("UserProfileNameEquals") or body.get("SpaceNameEquals")
        return {"Apps": [a.describe() for a in self.apps.values()
                         if (not domain or a.domain == domain) and (not owner or a.owner == owner)]}

    def _DeleteApp(self, body: dict[str, Any]) -> dict[str, Any]:
        app = self._app(body)
        container, app.container = app.container, None
        app.status = "Deleted"
        if container is not None:
            threading.Thread(target=container.terminate, args=(5.0,), daemon=True).start()
        return {}

    def containers(self) -> list[dict[str, Any]]:
        """The running apps' containers, shaped like the job runner's (for sandbox status)."""
        with self._lock:
            apps = [a for a in self.apps.values() if a.container is not None]
        return [dict(a.container.info(), job=a.name, kind="studio") for a in apps]

    def shutdown(self, grace: float = 5.0) -> None:
        with self._lock:
            containers = [a.container for a in self.apps.values() if a.container is not None]
        for container in containers:
            container.terminate(grace)


def app_container_factory(platform: Any, bridges: dict[int, Path], binds: list[tuple[str, str]],
                          user: str = APP_USER) -> ContainerFactory:
    """Starts an app (or notebook instance) container with the metadata file and ``user``."""
    from sagemaker_ssh_sandbox.sagemaker.container import Container, ContainerConfig

    def start(name: str, root: Path, metadata: dict[str, Any]) -> Any:
        env = dict(platform.env(metadata.get("ExecutionRoleArn")))
        host = f"{metadata.get('AppType', 'notebook').lower()}-{name}"[:63]
        config = ContainerConfig(name=name, hostname=host, root=root,
                                 argv=["/bin/bash", "-c", ENTRY.format(user=user)], env=env,
                                 bridges=dict(bridges), binds=list(binds))
        container = Container(config, python=platform.python)
        (container.opt_ml / "metadata").mkdir(parents=True, exist_ok=True)
        (container.opt_ml / "metadata" / "resource-metadata.json").write_text(
            json.dumps(metadata, indent=2))
        container.start()
        return container

    return start


def exec_argv(container_root: Path, argv: list[str]) -> list[str]:
    """``nsenter`` command line running ``argv`` inside a running app container as root, with
    the container's environment (what a Studio terminal or lifecycle configuration gets)."""
    pids = json.loads((container_root / "pids.json").read_text())
    spec = json.loads((container_root / "spec.json").read_text())
    env = [f"{k}={v}" for k, v in sorted(spec["env"].items())]
    return ["nsenter", "-t", str(pids["init_pid"]), "-m", "-u", "-n", "-p", "--wd=/", "--",
            "env", "-i", *env, *argv]
