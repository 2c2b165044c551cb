#!/usr/bin/env bash
# Run one mtp algorithm through qgis_process, as an analyst's command line would, with the plugin loaded
# from this checkout and a QGIS profile, token and backend state of its own (the user's are untouched).
# Usage: scripts/qgis_run.sh ALGORITHM [PARAMETER=VALUE ...]   e.g. mtp:change BEFORE=a.tif AFTER=b.tif OUTPUT=c.tif
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
algorithm=$1
shift
mkdir -p "$repo/build/demo-home/plugins"
ln -sfn "$repo/mtp_qgis" "$repo/build/demo-home/plugins/mtp_qgis"

export HOME="$repo/build/demo-home"
export QGIS_PLUGINPATH="$HOME/plugins"
export MTP_QGIS_BACKEND_PYTHON="$repo/.venv/bin/python"
export QT_QPA_PLATFORM=offscreen XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$HOME/run}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
# Debian's /usr/bin/qgis_process wrapper adds --noversioncheck, which qgis_process 3.22 rejects.
qgis_process=$(command -v qgis_process.bin || command -v qgis_process)

# qgis_process loads a plugin only once it is enabled in the profile ("already enabled" exits 1). Every
# qgis_process start costs seconds, so the profile is read rather than asking QGIS on each call.
ini="$HOME/.local/share/QGIS/QGIS3/profiles/default/QGIS/QGIS3.ini"
if ! grep -qs '^mtp_qgis=true' "$ini"; then
    "$qgis_process" plugins enable mtp_qgis >/dev/null 2>&1 || true
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
"$qgis_process" run "$algorithm" -- "$@" 2>&1 | tee "$log" | grep -v -e "^QStandardPaths" -e "setapi() is deprecated"
status=${PIPESTATUS[0]}
if grep -q "^Algorithm $algorithm not found" "$log"; then  # qgis_process 3.22 exits 0 here
    if ! grep -q "^\* mtp_qgis" <<<"$("$qgis_process" plugins 2>/dev/null)"; then
        echo "qgis_process did not load the mtp_qgis plugin from $QGIS_PLUGINPATH" >&2
    fi
    exit 1
fi
exit "$status"
