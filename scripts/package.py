"""Build what a QGIS user installs from: the plugin zip, a plugin repository and a model index.

    python scripts/package.py --dist dist [--base-url URL]     # `make package`
    python scripts/package.py --out some.zip                   # the zip alone

`--dist DIR` writes
    DIR/mtp_qgis.<version>.zip     the plugin; passes plugins.qgis.org's upload rules (scripts/plugin_zip_rules.py)
    DIR/plugins.xml                makes DIR a custom plugin repository: add <base URL>/plugins.xml in QGIS's
                                   plugin manager (Settings → Plugin repositories)
    DIR/models/index.json          the model index the dock's Models tab reads, and the model files beside it

The zip holds one folder, `mtp_qgis/`: the plugin with its metadata.txt and LICENSE, and
`mtp_qgis/backend_bundle/` with the backend's source, the `mtp_common` package it imports and its requirements
(the plugin starts the backend from there). No model is inside: models are published beside the index and
downloaded by the model manager.
`--base-url` is where DIR will be served (default: DIR's own file:// URL, which QGIS can use as it is).
"""
from __future__ import annotations

import argparse
import configparser
import json
import shutil
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mtp_qgis import model_store  # noqa: E402
from plugin_zip_rules import problems  # noqa: E402

PLUGIN = "mtp_qgis"
MODELS = REPO / "resources" / "models"
# The bundled demonstration models come first in the index, in this order, with the data they learnt from.
DEMO_MODELS = {
    "mtp_seg_default": "LoveDA (3 tiles) + ISPRS Potsdam (1 tile)",
    "mtp_change_default": "LEVIR-CD (8 pairs)",
    "mtp_scene_default": "LoveDA (majority-class chips)",
    "mtp_det_default": "DOTA v1.0 (scene P0706, ships)",
    "mtp_rdet_default": "DOTA v1.0 (scene P0706, ships)",
    "mtp_inst_default": "DOTA v1.0 (scene P0706, ship quadrilaterals as outlines)",
    "mtp_landcover_default": "Sentinel-2 L1C (Slovenia, land-use map) + NAIP RGBN (hand-drawn boxes)",
}


def read_metadata(path: Path = REPO / "metadata.txt") -> configparser.SectionProxy:
    meta = configparser.ConfigParser(interpolation=None)
    meta.optionxform = str  # keys are case-sensitive for QGIS
    meta.read(path, encoding="utf-8")
    if "general" not in meta:
        sys.exit(f"{path}: no [general] section")
    return meta["general"]


def zip_name(version: str) -> str:
    """QGIS takes the plugin id from the file name up to its first dot: mtp_qgis.0.1.0.zip → mtp_qgis."""
    return f"{PLUGIN}.{version}.zip"


def wanted(path: Path) -> bool:
    return (path.is_file() and "__pycache__" not in path.parts and not path.name.startswith(".")
            and path.suffix not in {".pyc", ".partial", ".qm"})


def build_zip(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted((REPO / PLUGIN).rglob("*")):
            rel = f.relative_to(REPO)
            if rel == Path(PLUGIN, "metadata.txt") or not wanted(f):
                continue
            zf.write(f, rel.as_posix())
        # The symlink in the checkout becomes a real file in the zip.
        zf.write(REPO / "metadata.txt", f"{PLUGIN}/metadata.txt")
        zf.write(REPO / "LICENSE", f"{PLUGIN}/LICENSE")
        bundle = f"{PLUGIN}/backend_bundle"
        # The backend imports mtp_common (code it shares with training): both go beside each other, and the
        # training code its finetune job runs (with requirements-finetune.txt, installed from the dock on demand).
        for f in sorted([*(REPO / "backend").rglob("*"), *(REPO / "mtp_common").rglob("*"),
                         *(REPO / "training").rglob("*")]):
            if wanted(f):
                zf.write(f, f"{bundle}/{f.relative_to(REPO).as_posix()}")
        zf.write(REPO / "requirements/backend.txt", f"{bundle}/requirements.txt")
        zf.write(REPO / "requirements/backend-gpu.txt", f"{bundle}/requirements-gpu.txt")  # the installer's GPU pins
        zf.write(REPO / "requirements/finetune.txt", f"{bundle}/requirements-finetune.txt")
    found = problems(tmp)
    if found:
        tmp.unlink()
        sys.exit("The plugin zip breaks the plugin repository's rules:\n  " + "\n  ".join(found))
    tmp.replace(out)
    return out


def repository_xml(general: configparser.SectionProxy, file_name: str, base_url: str) -> bytes:
    """plugins.xml in the layout of plugins.qgis.org, which QGIS's plugin installer reads."""
    root = ElementTree.Element("plugins")
    plugin = ElementTree.SubElement(root, "pyqgis_plugin", name=general["name"], version=general["version"])
    fields = {
        "description": general["description"], "about": general.get("about", ""),
        "version": general["version"], "qgis_minimum_version": general["qgisMinimumVersion"],
        "qgis_maximum_version": general.get("qgisMaximumVersion", ""), "homepage": general.get("homepage", ""),
        "file_name": file_name, "icon": "", "author_name": general["author"],
        "download_url": base_url + file_name, "uploaded_by": general["author"], "create_date": "",
        "update_date": "", "experimental": general.get("experimental", "False"),
        "deprecated": general.get("deprecated", "False"), "tracker": general.get("tracker", ""),
        "repository": general.get("repository", ""), "tags": general.get("tags", ""), "downloads": "0",
        "average_vote": "0", "rating_votes": "0", "external_dependencies": "", "server": "False",
    }
    for key, value in fields.items():
        ElementTree.SubElement(plugin, key).text = value
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="utf-8")


def write_model_index(folder: Path, model_paths: list[Path]) -> Path:
    """folder/index.json plus a copy of each model beside it; entry URLs are relative to the index."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for path in model_paths:
        shutil.copyfile(path, folder / path.name)
        entries.append(model_store.index_entry(path, path.name, DEMO_MODELS.get(path.stem, "")))
    index = folder / "index.json"
    index.write_text(json.dumps({"format_version": model_store.INDEX_FORMAT_VERSION, "models": entries},
                                indent=1) + "\n", encoding="utf-8")
    return index


def demo_model_paths() -> list[Path]:
    demo = [MODELS / f"{m}.onnx" for m in DEMO_MODELS if (MODELS / f"{m}.onnx").is_file()]
    others = [p for p in sorted(MODELS.glob("*.onnx")) if p.stem not in DEMO_MODELS]
    return demo + others


def build_dist(dist: Path, base_url: str | None = None) -> Path:
    dist.mkdir(parents=True, exist_ok=True)
    general = read_metadata()
    name = zip_name(general["version"])
    build_zip(dist / name)
    base_url = base_url or dist.resolve().as_uri() + "/"
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    (dist / "plugins.xml").write_bytes(repository_xml(general, name, base_url))
    write_model_index(dist / "models", demo_model_paths())
    return dist / name


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--dist", type=Path, help="folder for the zip, plugins.xml and models/")
    target.add_argument("--out", type=Path, help="write only the zip, to this path")
    parser.add_argument("--base-url", default=None, help="URL the --dist folder is served at")
    args = parser.parse_args()
    print(build_dist(args.dist, args.base_url) if args.dist else build_zip(args.out))
