#!/usr/bin/env bash
# Lifecycle configuration for a SageMaker Studio app (KernelGateway, JupyterLab or Code Editor):
# sets up SSH over SSM so that `sm-ssh connect <app>.<space-or-user>.<domain>.studio.sagemaker`
# works from a laptop. Attach it to the domain, user profile or space as an administrator.
#
# Set LOCAL_USER_ID to the AWS UserId of the laptop user (`aws sts get-caller-identity --query
# UserId`); only that user's `sm-ssh` finds the app. Set SSH_ONLY=false for a VNC desktop too.
set -euo pipefail

LOCAL_USER_ID="${LOCAL_USER_ID:-AIDACKCEVSQ6C2EXAMPLE:terry@SSO}"
SSH_ONLY="${SSH_ONLY:-true}"

log() { printf 'kernel-lc-config.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if ((EUID != 0)); then  # e.g. sagemaker-user: again as root, with the same PATH (and Python)
  command -v sudo >/dev/null || die "run as root"
  exec sudo -E env "PATH=$PATH" ${PYTHONPATH:+"PYTHONPATH=$PYTHONPATH"} \
    bash "$(readlink -f "${BASH_SOURCE[0]}")" "$@"
fi

# Where sagemaker-ssh-helper comes from: the SM_SSH_PACKAGE=s3://... line that `sm-ssh
# stage-wheel` prints on the laptop (the wheel of the laptop's version), or a pip requirement,
# wheel path or URL. `pip install sagemaker-ssh-helper` from the public package index gives the
# upstream project (2.x), which does not work with this client (3.x): it is refused.
SM_SSH_PACKAGE="${SM_SSH_PACKAGE:-sagemaker-ssh-helper==3.0.0}"
py="${SM_SSH_PYTHON:-python3}"

ours() { "$py" -m sagemaker_ssh_helper.dist check >/dev/null 2>&1; }

install_helper() {  # pip install SM_SSH_PACKAGE into $py's environment, never a 2.x
  local spec="$SM_SSH_PACKAGE" tmp
  tmp="$(mktemp -d)"
  if [[ "$spec" == s3://* ]]; then
    spec="$tmp/${spec##*/}"
    "$py" -c 'import sys, boto3; b, _, k = sys.argv[1][5:].partition("/")
boto3.client("s3").download_file(b, k, sys.argv[2])' "$SM_SSH_PACKAGE" "$spec" ||
      die "cannot download $SM_SSH_PACKAGE (does the execution role have s3:GetObject on it?)"
  fi
  printf 'sagemaker-ssh-helper>=3\n' >"$tmp/constraints.txt"
  PIP_CONSTRAINT="$tmp/constraints.txt" "$py" -m pip install -q "$spec" ||
    die "pip could not install $SM_SSH_PACKAGE as sagemaker-ssh-helper 3.x: set SM_SSH_PACKAGE to the s3:// URL that 'sm-ssh stage-wheel' prints on your laptop"
  rm -rf "$tmp"
  ours || die "$SM_SSH_PACKAGE did not give sagemaker-ssh-helper 3.x for $py"
}

ide="${SM_SSH_IDE:-}"
if [[ -z "$ide" ]]; then
  if ! command -v sm-ssh-ide >/dev/null || ! ours; then
    install_helper
  fi
  ide="$(command -v sm-ssh-ide)"
fi

if [[ "$SSH_ONLY" == "true" ]]; then
  "$ide" configure --ssh-only
else
  "$ide" configure
fi
"$ide" set-local-user-id "$LOCAL_USER_ID"
"$ide" init-ssm
"$ide" start
# The agent runs in the background for the life of the app.
nohup "$ide" ssm-agent >/var/log/sm-ssh-ide-agent.log 2>&1 </dev/null &
"$ide" get-metadata
