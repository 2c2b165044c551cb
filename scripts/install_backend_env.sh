#!/usr/bin/env bash
# For a plugin installed from the zip: make the Python environment the local backend runs in.
# It goes to ~/.local/share/mtp_qgis/venv, where the plugin looks for it. GDAL's Python bindings come
# from the system (Debian: python3-gdal), so the environment sees the system site-packages.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="${1:-$HOME/.local/share/mtp_qgis/venv}"
python=${PYTHON:-/usr/bin/python3}
"$python" -c "from osgeo import gdal" 2>/dev/null \
    || { echo "GDAL's Python bindings are missing: install python3-gdal (Debian/Ubuntu) first." >&2; exit 1; }
"$python" -m venv --system-site-packages "$venv"
"$venv/bin/pip" install -q -r "$here/requirements.txt"
echo "backend environment ready: $venv/bin/python"
