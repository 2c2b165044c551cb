#!/usr/bin/env bash
# make demo: segment a raster with the bundled model through qgis_process, as an analyst's command line
# would, with the plugin loaded from this checkout. Usage: scripts/demo.sh INPUT.tif OUTPUT.tif
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
input=$(realpath "$1")
output=$(realpath -m "$2")
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

"$qgis_process" plugins enable mtp_qgis >/dev/null 2>&1
"$qgis_process" run mtp:segment -- INPUT="$input" MODEL=mtp_seg_default OUTPUT="$output" 2>&1 \
    | grep -v -e "^QStandardPaths" -e "setapi() is deprecated"

"$repo/.venv/bin/python" - "$input" "$output" <<'PY'
import sys
from osgeo import gdal
import numpy as np
src, out = (gdal.Open(p) for p in sys.argv[1:3])
ids = out.GetRasterBand(1).ReadAsArray()
values, counts = np.unique(ids, return_counts=True)
print(f"input : {sys.argv[1]} {src.RasterXSize}x{src.RasterYSize} {src.GetSpatialRef().GetAuthorityCode(None) if src.GetSpatialRef() else 'no CRS'}")
print(f"result: {sys.argv[2]} {out.RasterXSize}x{out.RasterYSize} "
      f"{out.GetSpatialRef().GetAuthorityCode(None) if out.GetSpatialRef() else 'no CRS'}, "
      f"same grid as input: {src.GetGeoTransform() == out.GetGeoTransform()}")
import json
names = json.loads(out.GetMetadataItem("CLASS_NAMES") or "[]")
label = lambda v: names[v] if v < len(names) else ("nodata" if v == 255 else str(v))
print("class share: " + ", ".join(f"{label(v)} {100 * c / ids.size:.1f}%" for v, c in zip(values, counts)))
PY
echo "style : ${output%.*}.qml"
