#!/usr/bin/env bash
# Make the backend's Python environment (~/.local/share/mtp_qgis/venv, where the plugin looks). A thin wrapper:
# the installer is mtp_qgis/backend_installer.py (cross-platform Python, the same code the dock's
# "Install backend" button runs); pass --env DIR, --python BASE_PYTHON or --gpu through.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-python3}" "$here/../mtp_qgis/backend_installer.py" "$@"
