"""Tell endpoint and batch transform containers which resource they serve.

SageMaker gives training and processing containers their job's name, but an inference
container learns neither its endpoint's name nor its transform job's name. Without it the
container cannot tag its SSM registration with the name ``sm-ssh connect
<name>.inference.sagemaker`` looks for. So the wrappers hook the SDK object's ``deploy()`` /
``transform()``: the hook settles the name first (the caller's, or one generated the way the SDK
would), puts it into the environment sent with CreateModel / CreateTransformJob
(``SAGEMAKER_ENDPOINT_NAME`` / ``TRANSFORM_JOB_NAME``, read by :mod:`sagemaker_ssh_helper.env`)
and calls the original method with that name.

No SageMaker SDK import here: :mod:`sagemaker_ssh_helper.wrapper` passes the naming functions in.
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable

logger = logging.getLogger(__name__)

ENDPOINT_NAME_VAR = "SAGEMAKER_ENDPOINT_NAME"
TRANSFORM_JOB_NAME_VAR = "TRANSFORM_JOB_NAME"

Namer = Callable[[Any, inspect.BoundArguments], str]


def hook_name_argument(sdk_object: Any, method: str, argument: str, env_holder: Any,
                       env_attr: str, env_var: str, default_name: Namer) -> None:
    """Wrap ``sdk_object.<method>`` so that ``argument`` (the resource name) is always given and
    ``env_holder.<env_attr>[env_var]`` holds it before the original method runs."""
    original = getattr(sdk_object, method)
    if getattr(original, "_sm_ssh_hooked", False):
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def hooked(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        name = bound.arguments.get(argument)
        if not name:
            name = default_name(sdk_object, bound)
            bound.arguments[argument] = name
        env = dict(getattr(env_holder, env_attr, None) or {})
        env[env_var] = str(name)
        setattr(env_holder, env_attr, env)
        logger.info("%s=%s is passed to the container", env_var, name)
        return original(*bound.args, **bound.kwargs)

    hooked._sm_ssh_hooked = True  # type: ignore[attr-defined]
    setattr(sdk_object, method, hooked)


def default_endpoint_name(model: Any, image_uri: str | None,
                          name_from_base: Callable[[str], str],
                          base_from_name: Callable[[str], str],
                          base_name_from_image: Callable[[str], str],
                          multi_model: bool) -> str:
    """The endpoint name ``deploy()`` would generate: a MultiDataModel's own name; otherwise
    ``<base>-<timestamp>`` with the model's base name, its name or its image's name as base."""
    if multi_model:
        return str(model.name)
    base: str | None = getattr(model, "_base_name", None)
    if not base and getattr(model, "name", None):
        base = base_from_name(model.name)
    if not base:
        base = base_name_from_image(image_uri) if image_uri else "model"
    return name_from_base(base)


def default_transform_job_name(transformer: Any, name_from_base: Callable[[str], str]) -> str:
    """The job name ``transform()`` would generate: ``<base>-<timestamp>``."""
    base = getattr(transformer, "base_transform_job_name", None)
    if not base:
        retrieve = getattr(transformer, "_retrieve_base_name", None)
        try:
            base = retrieve() if retrieve else None
        except Exception as e:  # the image lookup is a nicety; the model name does as well
            logger.debug("no base name from the transformer's image: %s", e)
            base = None
    return name_from_base(str(base or transformer.model_name))


# -- SSM access for real-time endpoints (the native transport) --------------------------------
def endpoint_native_unsupported(network_isolation: bool, algorithm: bool = False) -> str | None:
    """Why a production variant's SSM access (``EnableSSMAccess``) cannot serve a model (None:
    it may; whether AWS allowlisted the account shows only when CreateEndpointConfig answers)."""
    if network_isolation:
        return "AWS opens no SSM session into a model with network isolation"
    if algorithm:
        return "AWS offers no SSM access to built-in or AWS Marketplace algorithm containers"
    return None


def register_ssm_access(sagemaker_client: Any, model_name: Callable[[], str | None],
                        key: object) -> None:
    """Make ``sagemaker_client``'s CreateEndpointConfig turn on ``EnableSSMAccess`` on the
    production variants that serve ``model_name()`` (asked at call time: the SDK may name the
    model late). The SDKs have no argument for it, so this is a botocore
    ``before-parameter-build`` handler; registering it again for the same ``key`` replaces it."""

    def add_ssm_access(params: dict[str, Any], **_: Any) -> None:
        name = model_name()
        for variant in params.get("ProductionVariants") or []:
            if name and variant.get("ModelName") == name and not variant.get("ServerlessConfig"):
                variant["EnableSSMAccess"] = True

    sagemaker_client.meta.events.register(
        "before-parameter-build.sagemaker.CreateEndpointConfig", add_ssm_access,
        unique_id=f"sm-ssh-ssm-access-{id(key)}")
