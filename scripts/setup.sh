#!/usr/bin/env bash
# Installs what mtp_qgis needs on a fresh Debian 12 machine, and nothing that is already there:
#   1. Debian packages: QGIS 3.22 LTR with PyQGIS, GDAL (tools + Python bindings), Xvfb for headless tests.
#   2. A virtual environment (.venv) made from /usr/bin/python3 with --system-site-packages, so that
#      PyQGIS and GDAL's bindings (Debian builds) stay importable next to the pinned pip packages.
#      ONNX Runtime's build is chosen as the backend installer chooses it (mtp_qgis/backend_installer.py
#      --choose-device): the GPU build (requirements/backend-gpu.txt) when nvidia-smi shows a new enough NVIDIA
#      driver, the CPU build otherwise; MTP_QGIS_DEVICE=cpu|cuda|auto overrides.
# Re-running is cheap: each step is skipped when its stamp is up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="qgis python3-qgis qgis-providers gdal-bin python3-gdal python3-requests python3-venv xvfb zip qttools5-dev-tools"
VENV=${VENV:-.venv}

missing=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

choice=$(/usr/bin/python3 mtp_qgis/backend_installer.py --choose-device)
device=${choice%%$'\t'*}
stamp="$VENV/.requirements.sha256"
# The CPU build's stamp is the hash of the CPU requirements alone (as before the GPU choice existed).
cpu_files=$(ls requirements/*.txt | grep -v -- '-gpu\.txt$')
if [ "$device" = cuda ]; then
  want=$( (cat $cpu_files requirements/backend-gpu.txt; echo cuda) | sha256sum | cut -d' ' -f1)
else
  want=$(cat $cpu_files | sha256sum | cut -d' ' -f1)
fi
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating $VENV (pinned packages in requirements/); ONNX Runtime: ${choice#*$'\t'}"
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$VENV"
  backend=requirements/backend.txt
  if [ "$device" = cuda ]; then
    # Both builds install the module `onnxruntime`: the CPU one goes, the GPU pins replace its line.
    "$VENV/bin/pip" uninstall -y -q onnxruntime 2>/dev/null || true
    backend=$(mktemp); grep -v '^onnxruntime==' requirements/backend.txt > "$backend"
    cat requirements/backend-gpu.txt >> "$backend"
  else
    "$VENV/bin/pip" uninstall -y -q onnxruntime-gpu 2>/dev/null || true
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check \
      -r "$backend" -r requirements/cluster.txt -r requirements/training.txt -r requirements/dev.txt 2>&1 \
      | grep -v "is ignored: it is neither a file nor a directory" || true
  "$VENV/bin/python" -c "import torch, onnxruntime, osgeo.gdal, qgis.core, fastapi" \
      || { echo "setup: the virtual environment is incomplete" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
