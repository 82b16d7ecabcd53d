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
HELPER_VERSION="${HELPER_VERSION:-}"

if ((EUID != 0)); then  # e.g. sagemaker-user: again as root, with the same PATH (and Python)
  command -v sudo >/dev/null || { echo "kernel-lc-config.sh: run as root" >&2; exit 1; }
  exec sudo -E env "PATH=$PATH" ${PYTHONPATH:+"PYTHONPATH=$PYTHONPATH"} \
    bash "$(readlink -f "${BASH_SOURCE[0]}")" "$@"
fi

ide="${SM_SSH_IDE:-}"
if [[ -z "$ide" ]]; then
  if ! command -v sm-ssh-ide >/dev/null; then
    "${SM_SSH_PYTHON:-python3}" -m pip install -q "sagemaker-ssh-helper${HELPER_VERSION:+==$HELPER_VERSION}"
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
