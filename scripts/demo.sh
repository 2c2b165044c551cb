#!/usr/bin/env bash
# make demo: segment a raster with the bundled model through qgis_process, as an analyst's command line
# would, with the plugin loaded from this checkout.
# Usage: scripts/demo.sh INPUT OUTPUT.tif [PARAMETER=VALUE ...]   (e.g. "EXTENT=0,10,0,10 [EPSG:3857]")
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
input=$(realpath "$1")
output=$(realpath -m "$2")
shift 2
mkdir -p "$(dirname "$output")"
bash "$repo/scripts/qgis_run.sh" mtp:segment INPUT="$input" MODEL=mtp_seg_default OUTPUT="$output" "$@"

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
