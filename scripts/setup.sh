#!/usr/bin/env bash
# Installs what mtp_qgis needs on a fresh Debian 12 machine, and nothing that is already there:
#   1. Debian packages: QGIS 3.22 LTR with PyQGIS, GDAL (tools + Python bindings), Xvfb for headless tests.
#   2. A virtual environment (.venv) made from /usr/bin/python3 with --system-site-packages, so that
#      PyQGIS and GDAL's bindings (Debian builds) stay importable next to the pinned pip packages.
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

stamp="$VENV/.requirements.sha256"
want=$(cat requirements/*.txt | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating $VENV (pinned packages in requirements/)"
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
      -r requirements/backend.txt -r requirements/cluster.txt -r requirements/training.txt -r requirements/dev.txt 2>&1 \
      | grep -v "is ignored: it is neither a file nor a directory" || true
  "$VENV/bin/python" -c "import torch, onnxruntime, osgeo.gdal, qgis.core, fastapi" \
      || { echo "setup: the virtual environment is incomplete" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
