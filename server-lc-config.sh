#!/usr/bin/env bash
# Lifecycle configuration for the SageMaker Studio Jupyter server app: Web VNC in the browser.
# A VNC desktop on :1 (127.0.0.1:5901) is served by noVNC (websockify) on 127.0.0.1:6080, which
# jupyter-server-proxy exposes under the Jupyter server's base URL (/jupyter/default/ in Studio):
# <Studio URL>/jupyter/default/proxy/6080/vnc.html?path=jupyter/default/proxy/6080/websockify
# (noVNC's WebSocket has to go through the proxy too, hence ?path=).
# With START_IDE=true it also sets up SSH for local IDEs, like kernel-lc-config.sh.
#
# Settings (environment, or edit the defaults below): VNC_PASSWORD (required for Web VNC),
# WEB_VNC (true), START_IDE (false), LOCAL_USER_ID (for START_IDE), NOVNC_PORT (6080),
# JUPYTER_PYTHON (the Jupyter server's interpreter, python3), JUPYTER_BASE_URL (/jupyter/default/).
set -euo pipefail

WEB_VNC="${WEB_VNC:-true}"
START_IDE="${START_IDE:-false}"
VNC_PASSWORD="${VNC_PASSWORD:-}"
LOCAL_USER_ID="${LOCAL_USER_ID:-AIDACKCEVSQ6C2EXAMPLE:terry@SSO}"
NOVNC_PORT="${NOVNC_PORT:-6080}"
JUPYTER_PYTHON="${JUPYTER_PYTHON:-python3}"
JUPYTER_BASE_URL="${JUPYTER_BASE_URL:-/jupyter/default/}"

log() { printf 'server-lc-config.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if ((EUID != 0)); then  # e.g. sagemaker-user: again as root, with the same PATH (and Python)
  command -v sudo >/dev/null || { log "run as root"; exit 1; }
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

if [[ "$WEB_VNC" == "true" ]]; then
  [[ -n "$VNC_PASSWORD" ]] || { log "set VNC_PASSWORD for Web VNC (or WEB_VNC=false)"; exit 2; }
  "$ide" configure
  printf '%s\n' "$VNC_PASSWORD" | "$ide" set-vnc-password  # stdin: never in a process's argv
  if ! command -v websockify >/dev/null || [[ ! -f /usr/share/novnc/vnc.html ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends novnc websockify >&2
  fi
  if ! "$JUPYTER_PYTHON" -c "import jupyter_server_proxy" 2>/dev/null; then
    "$JUPYTER_PYTHON" -m pip install -q jupyter-server-proxy ||
      log "could not install jupyter-server-proxy: reach noVNC through ssh -L $NOVNC_PORT:127.0.0.1:$NOVNC_PORT"
  fi
else
  "$ide" configure --ssh-only
fi

if [[ "$START_IDE" == "true" ]]; then
  "$ide" set-local-user-id "$LOCAL_USER_ID"
  "$ide" init-ssm
  nohup "$ide" ssm-agent >/var/log/sm-ssh-ide-agent.log 2>&1 </dev/null &
fi
"$ide" start

if [[ "$WEB_VNC" == "true" ]]; then
  nohup setsid websockify --web /usr/share/novnc "127.0.0.1:$NOVNC_PORT" 127.0.0.1:5901 \
    >/var/log/sm-ssh-ide-novnc.log 2>&1 </dev/null &
  proxied="${JUPYTER_BASE_URL%/}/proxy/$NOVNC_PORT"
  log "Web VNC: open <Studio URL>$proxied/vnc.html?path=${proxied#/}/websockify"
fi
