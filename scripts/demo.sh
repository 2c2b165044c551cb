#!/usr/bin/env bash
# make demo: segment a raster with the bundled model through qgis_process, as an analyst's command line
# would, with the plugin loaded from this checkout.
# Usage: scripts/demo.sh INPUT OUTPUT.tif [PARAMETER=VALUE ...]   (e.g. "EXTENT=0,10,0,10 [EPSG:3857]")
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
input=$(realpath "$1")
output=$(realpath -m "$2")
shift 2
mkdir -p "$(dirname "$output")" "$repo/build/demo-home/plugins"
ln -sfn "$repo/mtp_qgis" "$repo/build/demo-home/plugins/mtp_qgis"

# A QGIS profile, token and backend state of the demo's own, so the user's profile is left untouched.
export HOME="$repo/build/demo-home"
export QGIS_PLUGINPATH="$HOME/plugins"
export MTP_QGIS_BACKEND_PYTHON="$repo/.venv/bin/python"
export QT_QPA_PLATFORM=offscreen XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$HOME/run}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
# Debian's /usr/bin/qgis_process wrapper adds --noversioncheck, which qgis_process 3.22 rejects.
qgis_process=$(command -v qgis_process.bin || command -v qgis_process)

# qgis_process loads a plugin only once it is enabled in the profile ("already enabled" exits 1).
"$qgis_process" plugins enable mtp_qgis >/dev/null 2>&1 || true
if ! grep -q "^\* mtp_qgis" <<<"$("$qgis_process" plugins 2>/dev/null)"; then
    echo "qgis_process did not load the mtp_qgis plugin from $QGIS_PLUGINPATH" >&2; exit 1
fi
"$qgis_process" run mtp:segment -- INPUT="$input" MODEL=mtp_seg_default OUTPUT="$output" "$@" 2>&1 \
    | grep -v -e "^QStandardPaths" -e "setapi() is deprecated"

"$repo/.venv/bin/python" - "$input" "$output" <<'PY'
import json
import sys
import numpy as np
from osgeo import gdal

def describe(path):
    ds = gdal.Open(path)
    srs = ds.GetSpatialRef()
    crs = f"EPSG:{srs.GetAuthorityCode(None)}" if srs else "no CRS (pixel space)"
    gt = ds.GetGeoTransform(can_return_null=True) or (0, 1, 0, 0, 0, -1)  # QGIS's convention
    return ds, f"{path}: {ds.RasterXSize}x{ds.RasterYSize} px, {crs}, origin {gt[0]:.2f},{gt[3]:.2f}, pixel {gt[1]:.3f}"

_, text = describe(sys.argv[1]); print("input : " + text)
out, text = describe(sys.argv[2]); print("result: " + text)
ids = out.GetRasterBand(1).ReadAsArray()
names = json.loads(out.GetMetadataItem("CLASS_NAMES") or "[]")
values, counts = np.unique(ids, return_counts=True)
label = lambda v: names[v] if v < len(names) else ("nodata" if v == 255 else str(v))
print("classes: " + ", ".join(f"{label(v)} {100 * c / ids.size:.1f}%" for v, c in zip(values, counts)))
PY
echo "style : ${output%.*}.qml"
