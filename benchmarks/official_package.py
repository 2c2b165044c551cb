"""Make a full-size package of an official MTP finetune architecture for the benchmarks, the way an analyst
makes one: an official-format checkpoint -> `python -m training import-official`.

The released weights cannot be downloaded here, so the checkpoint holds the project's equivalent model with
its initial (random) weights under the official key names, saved as mmengine saves runner checkpoints; the
config is written from the official config fields recorded in tests/fixtures/official/architectures.json.gz.
Speed and memory do not depend on the weights' values.

    .venv/bin/python benchmarks/official_package.py rvsa-b-upernet-512-mae-mtp-loveda --out build/official

The importer's parity check reads the bundled sample raster with GDAL. A machine without GDAL's bindings (the
lent GPU machine) reads it with Pillow instead (`pillow_gdal`): the sample is an 8-bit RGB JPEG-in-TIFF that
Pillow decodes to the same values (tested).
"""
from __future__ import annotations

import argparse
import gzip
import json
import pprint
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
ARCHITECTURES = REPO / "tests" / "fixtures" / "official" / "architectures.json.gz"


def official_fields(config_name: str) -> dict:
    with gzip.open(ARCHITECTURES, "rt") as f:
        for record in json.load(f):
            if config_name in record["configs"]:
                return record["fields"]
    raise SystemExit(f"{config_name} is not among the recorded official architectures ({ARCHITECTURES})")


def pillow_gdal() -> bool:
    """Where `from osgeo import gdal` fails, register a stand-in that serves what the importer reads of the sample
    (gdal.Open(path).GetRasterBand(b).ReadAsArray()) through Pillow. Returns whether it did; real GDAL is never
    replaced."""
    try:
        from osgeo import gdal  # noqa: F401
        return False
    except ImportError:
        pass
    import numpy as np
    from PIL import Image

    class Band:
        def __init__(self, pixels, index: int):
            self.pixels, self.index = pixels, index

        def ReadAsArray(self):  # noqa: N802 - GDAL's name
            return self.pixels[..., self.index - 1].copy()

    class Dataset:
        def __init__(self, path):
            self.pixels = np.asarray(Image.open(path).convert("RGB"))

        def GetRasterBand(self, index: int):  # noqa: N802 - GDAL's name
            return Band(self.pixels, index)

    gdal_module = types.ModuleType("osgeo.gdal")
    gdal_module.Open = Dataset
    gdal_module.__doc__ = "Pillow stand-in (benchmarks/official_package.py): RGB rasters only, no GDAL here"
    osgeo = types.ModuleType("osgeo")
    osgeo.gdal = gdal_module
    sys.modules["osgeo"], sys.modules["osgeo.gdal"] = osgeo, gdal_module
    return True


def make_package(name: str, out: Path, keep_model: bool = False):
    """The package's path; with keep_model, (path, the torch model with the package's weights, its spec)."""
    import torch

    from training.official.importer import default_model_id, import_official
    from training.official.models import build_model, read_spec
    from training.official.weights import save_like_mmengine

    pillow_gdal()
    config_name = name if name.endswith(".py") else f"{name}.py"
    out.mkdir(parents=True, exist_ok=True)
    config = out / config_name
    package = out / f"{default_model_id(config)}.onnx"
    if package.exists() and not keep_model:
        print(f"{package} exists (delete it to make it again)")
        return package
    fields = official_fields(config_name)
    config.write_text("".join(f"{key} = {pprint.pformat(value)}\n" for key, value in fields.items()))
    spec = read_spec(fields, config)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    checkpoint = out / f"{config.stem}.pth"
    save_like_mmengine(checkpoint, model.state_dict(), {"note": "random weights, for benchmarks only"})
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = import_official(checkpoint, config, out, overwrite=True)
    checkpoint.unlink()
    print(json.dumps({"package": result["path"], "parity": result["metadata"]["provenance"]["parity"]}, indent=2))
    return (Path(result["path"]), model, spec) if keep_model else Path(result["path"])


def import_fixture(fixture: Path, out: Path):
    """(package, torch model, spec) of one of tests/fixtures/official's reduced-width official models (its
    config.py and checkpoint.pth): the same import path as make_package, in seconds (smoke runs)."""
    from training.official.config_file import read_official_config
    from training.official.importer import import_official
    from training.official.models import build_model, read_spec
    from training.official.weights import load_official_state, read_official_checkpoint

    pillow_gdal()
    config, checkpoint = fixture / "config.py", fixture / "checkpoint.pth"
    out.mkdir(parents=True, exist_ok=True)
    result = import_official(checkpoint, config, out, model_id=f"mtp_{fixture.name}", overwrite=True)
    spec = read_spec(read_official_config(config), config)
    model = build_model(spec)
    load_official_state(model, read_official_checkpoint(checkpoint)[0], checkpoint, config, "fixture")
    return Path(result["path"]), model.eval(), spec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="official config name, e.g. rvsa-b-upernet-512-mae-mtp-loveda")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "official")
    args = parser.parse_args()
    make_package(args.config, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
