"""``import sagemaker_ssh_helper`` runs in every user's container: it must stay light."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("boto3", "botocore", "sagemaker")
_PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy})))
"""


def imported_heavy(*modules: str) -> List[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    code = _PROBE.format(heavy=set(HEAVY))
    done = subprocess.run([sys.executable, "-c", code, *modules], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_package_import_loads_neither_boto3_nor_sagemaker() -> None:
    assert imported_heavy("sagemaker_ssh_helper") == []


@pytest.mark.parametrize("module", [
    "sagemaker_ssh_helper.aws", "sagemaker_ssh_helper.fqdn", "sagemaker_ssh_helper.log",
    "sagemaker_ssh_helper.wrapper_base",
    # the SSH Helper v2 modules: only their use (a session, an SDK class) loads more
    "sagemaker_ssh_helper.detached_sagemaker", "sagemaker_ssh_helper.interactive_sagemaker",
    "sagemaker_ssh_helper.manager", "sagemaker_ssh_helper.ide",
    "sagemaker_ssh_helper.wrapper_ide", "sagemaker_ssh_helper.sm_ssh",
    "sagemaker_ssh_helper.proxy", "sagemaker_ssh_helper.cdk.iam_ssm.advanced_tier_lambda",
    "sagemaker_ssh_helper.cdk.low_gpu.low_gpu_lambda",
])
def test_light_modules_stay_light(module: str) -> None:
    assert imported_heavy(module) == []


def test_the_wrapper_module_is_where_the_sdk_comes_in() -> None:
    loaded = imported_heavy("sagemaker_ssh_helper.wrapper")
    assert "sagemaker" in loaded and "boto3" in loaded


def test_detached_classes_are_built_on_first_use() -> None:
    """``DetachedEstimator`` subclasses the SDK's EstimatorBase: the SDK loads only when the
    name is first used, not when the module is imported."""
    assert imported_heavy("sagemaker_ssh_helper.detached_sagemaker") == []
    code = ("import sys; from sagemaker_ssh_helper.detached_sagemaker import DetachedEstimator;"
            " from sagemaker.estimator import EstimatorBase;"
            " print(issubclass(DetachedEstimator, EstimatorBase))")
    env = dict(os.environ, SAGEMAKER_SUPPRESS_V2_WARNING="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "True"
