"""The rules plugins.qgis.org applies to an uploaded plugin zip, as our own checks.

Read from the official repository's upload validator (QGIS-Django, `qgis-app/plugins/validator.py`) and its
publishing guidelines ("don't include binaries", no hidden folders, a LICENSE). Only the one rule that
needs the internet (the metadata links must answer) is checked here as "is a well-formed http(s) URL".

    python scripts/plugin_zip_rules.py dist/mtp_qgis.0.1.0.zip     # prints the problems, exits 1 if any
"""
from __future__ import annotations

import configparser
import re
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlparse

MAX_SIZE_BYTES = 25_000_000  # the validator's PLUGIN_MAX_UPLOAD_SIZE ("Max size is 25.0 Megabytes")
REQUIRED_METADATA = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about",
                     "tracker", "repository")
URL_METADATA = {"tracker": "http://bugs", "repository": "http://repo", "homepage": "http://homepage"}
FORBIDDEN_DIRS = ("__MACOSX", ".git", "__pycache__")
# "Don't include binaries": compiled code, executables and model weights have no place in the zip.
BINARY_SUFFIXES = (".pyc", ".pyo", ".pyd", ".so", ".dll", ".dylib", ".exe", ".bin", ".onnx", ".pt", ".pth",
                   ".ckpt", ".safetensors", ".whl", ".egg", ".a", ".lib", ".o", ".obj", ".qm")


def metadata_of(archive: zipfile.ZipFile, package: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive for QGIS
    parser.read_string(archive.read(f"{package}/metadata.txt").decode("utf-8"))
    return parser


def problems(zip_path: str | Path, new_plugin: bool = True) -> list[str]:
    """Every rule the zip breaks, as sentences; [] when plugins.qgis.org would accept it."""
    zip_path = Path(zip_path)
    found: list[str] = []
    size = zip_path.stat().st_size
    if size > MAX_SIZE_BYTES:
        found.append(f"{zip_path.name} is {size / 1e6:.1f} MB; the repository accepts at most "
                     f"{MAX_SIZE_BYTES / 1e6:.1f} MB.")
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        return found + [f"{zip_path.name} is not a readable zip file."]
    with archive:
        names = archive.namelist()
        for name in names:
            parts = name.split("/")
            if ".." in name or name.startswith("/"):
                found.append(f"'{name}' holds path information ('..' or a leading '/').")
            if ".pyc" in name:
                found.append(f"'{name}' is compiled Python (.pyc).")
            for forbidden in FORBIDDEN_DIRS:
                if forbidden in parts:
                    found.append(f"'{name}' lies in a '{forbidden}' folder.")
            if any(p.startswith(".") for p in parts if p):
                found.append(f"'{name}' is hidden (a name starting with '.').")
            if name.lower().endswith(BINARY_SUFFIXES):
                found.append(f"'{name}' is a binary file; the repository takes no binaries.")
        bad = archive.testzip()
        if bad:
            found.append(f"'{bad}' is damaged in the zip (CRC error).")
        roots = sorted({n.split("/")[0] for n in names})
        if not names or "/" not in names[0]:
            return found + ["The zip has no plugin folder at its top level."]
        package = names[0].split("/")[0]
        if len(roots) > 1:
            found.append(f"The zip has several top-level entries ({', '.join(roots)}); it needs exactly one folder.")
        if new_plugin and not re.match(r"^[a-z_][a-z0-9_]*$", package):
            found.append(f"The folder name '{package}' is not PEP 8 (lowercase letters, digits, underscores).")
        if not re.match(r"^[A-Za-z][A-Za-z0-9-_]+$", package):
            found.append(f"The folder name '{package}' must start with a letter and use only letters, digits, - and _.")
        if f"{package}/__init__.py" not in names:
            found.append(f"{package}/__init__.py is missing.")
        if f"{package}/LICENSE" not in names:
            found.append(f"{package}/LICENSE is missing (required since June 2024).")
        if f"{package}/metadata.txt" not in names:
            return found + [f"{package}/metadata.txt is missing."]
        try:
            meta = metadata_of(archive, package)
        except (configparser.Error, UnicodeDecodeError) as exc:
            return found + [f"{package}/metadata.txt cannot be parsed: {exc}"]
        if not meta.has_section("general"):
            return found + [f"{package}/metadata.txt has no [general] section."]
        general = meta["general"]
        missing = [k for k in REQUIRED_METADATA if not general.get(k, "").strip()]
        if missing:
            found.append(f"metadata.txt lacks {', '.join(missing)}.")
        for key, placeholder in URL_METADATA.items():
            url = general.get(key, "").strip()
            if key == "homepage" and not url:
                continue
            parsed = urlparse(url)
            if url == placeholder or parsed.scheme not in ("http", "https") or not parsed.netloc:
                found.append(f"metadata.txt {key}={url!r} is not a valid http(s) link.")
        if "/" in general.get("author", ""):
            found.append("metadata.txt author must not contain slashes.")
        if not re.match(r"^\d+\.\d+(\.\d+)?$", general.get("qgisMinimumVersion", "")):
            found.append("metadata.txt qgisMinimumVersion must look like 3.22.")
        icon = general.get("icon", "").strip().removeprefix("./")
        if icon and f"{package}/{icon}" not in names:
            found.append(f"metadata.txt icon={icon} is not in the zip.")
    return found


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    listed = problems(sys.argv[1])
    for line in listed:
        print(line)
    sys.exit(1 if listed else 0)
