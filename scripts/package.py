"""Build the plugin zip that QGIS's "Install from ZIP" and a plugin repository accept.

Layout of the zip (QGIS wants exactly one top-level folder named like the plugin module):
    mtp_qgis/                  the plugin, metadata.txt included (the repo's top-level file)
    mtp_qgis/backend_bundle/   the backend's source, its requirements and the bundled default models,
                               so the plugin can start a local backend with any Python that has them
"""
import argparse
import configparser
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIRED_METADATA = ("name", "qgisMinimumVersion", "description", "about", "version", "author",
                     "email", "repository")


def check_metadata(path: Path) -> configparser.ConfigParser:
    meta = configparser.ConfigParser(interpolation=None)
    meta.optionxform = str  # keys are case-sensitive for QGIS
    meta.read(path, encoding="utf-8")
    if "general" not in meta:
        sys.exit(f"{path}: no [general] section")
    missing = [k for k in REQUIRED_METADATA if not meta["general"].get(k, "").strip()]
    if missing:
        sys.exit(f"{path}: missing required keys {missing}")
    return meta


def wanted(path: Path) -> bool:
    return "__pycache__" not in path.parts and path.suffix not in {".pyc", ".partial"} and path.is_file()


def build(out: Path) -> Path:
    check_metadata(REPO / "metadata.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted((REPO / "mtp_qgis").rglob("*")):
            rel = f.relative_to(REPO)
            if rel == Path("mtp_qgis/metadata.txt") or not wanted(f):
                continue
            zf.write(f, rel.as_posix())
        # The symlink in the checkout becomes a real file in the zip.
        zf.write(REPO / "metadata.txt", "mtp_qgis/metadata.txt")
        zf.write(REPO / "LICENSE", "mtp_qgis/LICENSE")
        bundle = "mtp_qgis/backend_bundle"
        for f in sorted((REPO / "backend").rglob("*")):
            if wanted(f):
                zf.write(f, f"{bundle}/{f.relative_to(REPO).as_posix()}")
        zf.write(REPO / "requirements/backend.txt", f"{bundle}/requirements.txt")
        zf.write(REPO / "scripts/install_backend_env.sh", f"{bundle}/install_backend_env.sh")
        for f in sorted((REPO / "resources/models").glob("*.onnx")):
            zf.write(f, f"{bundle}/resources/models/{f.name}")
    tmp.replace(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    print(build(parser.parse_args().out))
