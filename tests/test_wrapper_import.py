"""``import sagemaker_ssh_helper`` runs in every user's container: it must stay light."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("boto3", "botocore", "sagemaker")
_PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy})))
"""


def imported_heavy(*modules: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    code = _PROBE.format(heavy=set(HEAVY))
    done = subprocess.run([sys.executable, "-c", code, *modules], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_package_import_loads_neither_boto3_nor_sagemaker() -> None:
    assert imported_heavy("sagemaker_ssh_helper") == []


def test_package_import_in_a_bare_interpreter_needs_nothing_but_os(tmp_path: Path) -> None:
    """As in a job's container (the package a plain folder, nothing imported before it): the
    import adds neither pathlib nor typing, and __version__ is the VERSION file's."""
    code = ("import sys; before = set(sys.modules); import sagemaker_ssh_helper as p; "
            "print(sorted(m.split('.')[0] for m in set(sys.modules) - before), p.__version__)")
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, text=True,
                          capture_output=True, check=True, env={"PYTHONPATH": str(REPO)})
    version = (REPO / "sagemaker_ssh_helper" / "VERSION").read_text().strip()
    added, printed_version = done.stdout.rsplit(" ", 1)
    assert printed_version.strip() == version
    assert "'pathlib'" not in added and "'typing'" not in added, added
    assert set(re.findall(r"'(\w+)'", added)) <= {
        "sagemaker_ssh_helper", "__future__", "os", "posixpath", "genericpath", "stat", "_stat",
        "_collections_abc", "abc", "io", "codecs"}, added


@pytest.mark.parametrize("module", [
    "sagemaker_ssh_helper.aws", "sagemaker_ssh_helper.fqdn", "sagemaker_ssh_helper.log",
    "sagemaker_ssh_helper.wrapper_base",
    # the SSH Helper v2 modules: only their use (a session, an SDK class) loads more
    "sagemaker_ssh_helper.detached_sagemaker", "sagemaker_ssh_helper.interactive_sagemaker",
    "sagemaker_ssh_helper.manager", "sagemaker_ssh_helper.ide",
    "sagemaker_ssh_helper.wrapper_ide", "sagemaker_ssh_helper.sm_ssh",
    "sagemaker_ssh_helper.proxy", "sagemaker_ssh_helper.cdk.iam_ssm.advanced_tier_lambda",
    "sagemaker_ssh_helper.cdk.low_gpu.low_gpu_lambda",
    "sagemaker_ssh_helper.sdk_versions", "sagemaker_ssh_helper.code_shipping",
])
def test_light_modules_stay_light(module: str) -> None:
    assert imported_heavy(module) == []


def test_the_wrapper_module_is_where_the_sdk_comes_in() -> None:
    from sagemaker_ssh_helper import sdk_versions

    loaded = imported_heavy("sagemaker_ssh_helper.wrapper")
    assert "sagemaker" in loaded
    # SDK v2 brings boto3; under v3 the wrapper module only finds out that v2 is missing
    assert ("boto3" in loaded) == (sdk_versions.installed_major() == 2)


def test_detached_classes_are_built_on_first_use() -> None:
    """``DetachedEstimator`` subclasses the SDK's EstimatorBase: the SDK loads only when the
    name is first used, not when the module is imported."""
    from sagemaker_ssh_helper import sdk_versions

    if sdk_versions.installed_major() != 2:
        pytest.skip("DetachedEstimator subclasses SDK v2 classes")
    assert imported_heavy("sagemaker_ssh_helper.detached_sagemaker") == []
    code = ("import sys; from sagemaker_ssh_helper.detached_sagemaker import DetachedEstimator;"
            " from sagemaker.estimator import EstimatorBase;"
            " print(issubclass(DetachedEstimator, EstimatorBase))")
    env = dict(os.environ, SAGEMAKER_SUPPRESS_V2_WARNING="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "True"


def test_the_v3_wrappers_import_no_sdk() -> None:
    """SSHModelTrainerWrapper/SSHModelBuilderWrapper recognise SDK objects by their class and
    call the SageMaker API through boto3: importing them loads no SDK, whichever is installed."""
    assert imported_heavy("sagemaker_ssh_helper.wrapper_v3") == []


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SAGEMAKER_SUPPRESS_V2_WARNING="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_each_sdk_major_gets_its_wrappers_and_a_one_line_pointer_to_the_others() -> None:
    from sagemaker_ssh_helper import sdk_versions

    major = sdk_versions.installed_major()
    if major not in (2, 3):
        pytest.skip("no SageMaker SDK in this environment")
    code = """
import sagemaker_ssh_helper.wrapper as w
from sagemaker_ssh_helper.wrapper import SSHModelBuilderWrapper, SSHModelTrainerWrapper
try:
    from sagemaker_ssh_helper.wrapper import SSHEstimatorWrapper
    print("v2:", SSHEstimatorWrapper.__name__)
except ImportError as e:
    print("v2:", e)
for cls in (SSHModelTrainerWrapper, SSHModelBuilderWrapper):
    try:
        cls.create(object())
    except ValueError as e:
        print("v3:", e)
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith(("v2:", "v3:"))]
    version = sdk_versions.installed_version()
    if major == 2:
        assert lines[0] == "v2: SSHEstimatorWrapper"
        assert lines[1] == ("v3: SSHModelTrainerWrapper.create() takes a ModelTrainer of SageMaker "
                            f"Python SDK v3, but sagemaker {version} is installed and got 'object'"
                            ": with SDK v2 use SSHEstimatorWrapper.create(estimator)")
        assert lines[2].endswith("with SDK v2 use SSHModelWrapper.create(model)")
    else:
        assert lines[0] == ("v2: SSHEstimatorWrapper wraps SageMaker Python SDK v2 objects, but "
                            f"sagemaker {version} is installed: with SDK v3 use "
                            "SSHModelTrainerWrapper.create(model_trainer) for a ModelTrainer "
                            "(sagemaker_ssh_helper.wrapper)")
        assert lines[1] == ("v3: SSHModelTrainerWrapper.create() takes a sagemaker ModelTrainer "
                            "(SDK v3), not 'object'")
        assert lines[2] == ("v3: SSHModelBuilderWrapper.create() takes a sagemaker ModelBuilder "
                            "(SDK v3), not 'object'")
