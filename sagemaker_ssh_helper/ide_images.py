"""Custom SageMaker images for Studio kernels: ``SSHIDE.create_and_attach_image`` and its waits.

The image is recreated from an ECR image of this account, gets a new version and an app image
config with the given kernel specs, and becomes the domain's default custom KernelGateway
image. Waits poll DescribeImage / DescribeImageVersion against a deadline.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sagemaker_ssh_helper import aws

if TYPE_CHECKING:  # pragma: no cover
    from sagemaker_ssh_helper.ide import SSHIDE, Image

logger = logging.getLogger(__name__)

FAILED = ("CREATE_FAILED", "UPDATE_FAILED", "DELETE_FAILED")


def _poll(check: Any, what: str, timeout: float) -> None:
    from sagemaker_ssh_helper.ide import _poll as poll

    poll(check, what, timeout)


def _image_status(client: Any, image_name: str) -> str | None:
    try:
        return str(client.describe_image(ImageName=image_name)["ImageStatus"])
    except Exception as e:
        if aws.not_found(e):
            return None
        raise


def wait_image(client: Any, image_name: str, wanted: str | None, timeout: float) -> None:
    """Wait until the image's status is ``wanted`` (None: until it is gone)."""
    def check() -> bool:
        status = _image_status(client, image_name)
        if status in FAILED:
            raise RuntimeError(f"SageMaker image {image_name} is {status}")
        return status == wanted

    _poll(check, f"SageMaker image {image_name} to become {wanted or 'deleted'}", timeout)


def wait_image_version(client: Any, image_name: str, timeout: float) -> None:
    """Wait until the image's latest version is CREATED."""
    def check() -> bool:
        status = str(client.describe_image_version(ImageName=image_name)["ImageVersionStatus"])
        if status in FAILED:
            raise RuntimeError(f"the latest version of SageMaker image {image_name} is {status}")
        return status == "CREATED"

    _poll(check, f"the latest version of SageMaker image {image_name}", timeout)


def create_and_attach_image(ide: SSHIDE, image_name: str, ecr_image_name: str, role_arn: str,
                            app_image_config_name: str, kernel_specs: list[dict[str, Any]],
                            file_system_config: dict[str, Any],
                            timeout: float = 900) -> Image:
    from sagemaker_ssh_helper.ide import Image

    client = ide.client
    if _image_status(client, image_name) is not None:
        logger.info("deleting the previous SageMaker image %s", image_name)
        client.delete_image(ImageName=image_name)
        wait_image(client, image_name, None, timeout)
    image_arn = str(client.create_image(ImageName=image_name, RoleArn=role_arn)["ImageArn"])
    wait_image(client, image_name, "CREATED", timeout)
    region = ide.region_name
    base_image = f"{ide._account()}.dkr.ecr.{region}.{aws.dns_suffix(region)}/{ecr_image_name}"
    version_arn = str(client.create_image_version(
        ImageName=image_name, BaseImage=base_image, JobType="NOTEBOOK_KERNEL",
    )["ImageVersionArn"])
    wait_image_version(client, image_name, timeout)
    try:
        client.delete_app_image_config(AppImageConfigName=app_image_config_name)
    except Exception as e:
        if not aws.not_found(e):
            raise
    client.create_app_image_config(
        AppImageConfigName=app_image_config_name,
        KernelGatewayImageConfig={"KernelSpecs": kernel_specs,
                                  "FileSystemConfig": file_system_config})
    version = int(version_arn.rsplit("/", 1)[-1])
    client.update_domain(DomainId=ide.domain_id, DefaultUserSettings={
        "KernelGatewayAppSettings": {"CustomImages": [{
            "ImageName": image_name, "ImageVersionNumber": version,
            "AppImageConfigName": app_image_config_name}]}})
    logger.info("image %s version %d attached to domain %s", image_name, version,
                ide.domain_id)
    return Image(image_arn, version_arn)
