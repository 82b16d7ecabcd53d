"""Packaging for sagemaker-ssh-helper."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = (HERE / "sagemaker_ssh_helper" / "VERSION").read_text().strip()

# Bash entry points users call by name; they are installed on PATH and also shipped inside the
# package directory, because inside a SageMaker container the package arrives as a plain folder
# (``dependencies=[SSHEstimatorWrapper.dependency_dir()]``) rather than a pip install.
# The commands users type on the laptop are Python console scripts (they work on Windows, where
# there is no bash); their bash files in the package stay as launchers for POSIX use from the
# package folder, and are not installed over the console scripts.
LAPTOP = {f"sm-local-ssh-{kind}": "sagemaker_ssh_helper.sm_local:console_main" for kind in
          ("training", "processing", "transform", "inference", "notebook", "ide")}
LAPTOP.update({"sm-local-start-ssh": "sagemaker_ssh_helper.sm_local:console_main",
               "sm-connect-ssh-proxy": "sagemaker_ssh_helper.sm_local:console_main",
               "sm-local-configure": "sagemaker_ssh_helper.configure:main"})
SCRIPTS = sorted(str(p) for p in (HERE / "sagemaker_ssh_helper").glob("sm-*")
                 if p.is_file() and p.name not in LAPTOP)

TEST_REQUIRES = [
    "pytest>=7",
    "moto[server]>=5.0,<6",
    "ruff>=0.5",
    "mypy>=1.8",
    "types-psutil",
    "aws-cdk-lib>=2.170,<3",  # Lambda Runtime.PYTHON_3_13
    "constructs>=10",
    "jupyter_server>=2",  # the Studio IDE test reaches a Jupyter server through -L
    "jupyter-server-proxy>=4",  # ... and noVNC behind it (server-lc-config.sh's Web VNC)
    "paramiko>=3",  # clients that read ~/.ssh/config through paramiko (the seed's IDE flows)
    "fabric>=3",  # Connection("<job>.training.sagemaker").run(...) after `sm-ssh config`
    "awscli<2",  # `aws ssm start-session --target mi-...` against the sandbox (AWS CLI v1)
    "wheel",  # tests build the package's wheel offline (no build isolation)
]
# The SageMaker Python SDK is never a requirement: the package installs next to either major
# without changing it, and only the launch-side wrappers use it. Extras pick one for a new
# environment: [v2] (SSHEstimatorWrapper, SSHModelWrapper, ...) or [v3] (SSHModelTrainerWrapper,
# SSHModelBuilderWrapper).
SDK_V2 = ["sagemaker>=2.200,<3"]
SDK_V3 = ["sagemaker>=3"]
# The launch-side tests under SDK v3 (scripts/test builds .venv-v3 with these). Current aiobotocore
# and s3fs keep pip from backtracking through old releases of both (sagemaker-mlops needs s3fs).
TEST_V3_REQUIRES = ["pytest>=7", "moto[server]>=5.0,<6", "wheel", "aiobotocore>=2.15",
                    "s3fs>=2024.10", *SDK_V3]

setup(
    name="sagemaker-ssh-helper",
    version=VERSION,
    description="SSH into SageMaker jobs, endpoints, Studio apps and notebook instances",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT-0",
    python_requires=">=3.9",
    packages=find_packages(exclude=("tests", "tests.*", "benchmarks", "examples")),
    package_data={
        "sagemaker_ssh_helper": ["VERSION", "sm-*", "*.txt"],
        "sagemaker_ssh_sandbox": ["ssm/bin/*", "sagemaker/pyhook/*"],
    },
    include_package_data=True,
    # <prefix>/sm_ssh/: where users copy the notebook from (`cp $PREFIX/sm_ssh/...ipynb`).
    data_files=[("sm_ssh", ["SageMaker_SSH_IDE.ipynb", "SageMaker_SSH_Notebook.ipynb",
                            "kernel-lc-config.sh", "server-lc-config.sh",
                            "ssh_config_template.txt"])],
    scripts=[str(Path(s).relative_to(HERE)) for s in SCRIPTS],
    install_requires=[
        "boto3>=1.28.57",  # first release honouring AWS_ENDPOINT_URL_<SERVICE>
        "botocore>=1.31.57",
        "psutil",
    ],
    extras_require={
        "test": TEST_REQUIRES + SDK_V2,  # the main test environment is the SDK v2 one
        "test-v3": TEST_V3_REQUIRES,
        "v2": SDK_V2,
        "v3": SDK_V3,
        "sandbox": ["moto[server]>=5.0,<6"],
        "cdk": ["aws-cdk-lib>=2.170,<3", "constructs>=10"],
    },
    entry_points={
        "console_scripts": [
            "sm-ssh=sagemaker_ssh_helper.sm_ssh:main",
            "sm-ssh-deregister-instances="
            "sagemaker_ssh_helper.deregister_old_instances_from_ssm:main",
            *(f"{name}={target}" for name, target in sorted(LAPTOP.items())),
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT No Attribution License (MIT-0)",
        "Operating System :: POSIX :: Linux",
        "Operating System :: MacOS",
    ],
)
