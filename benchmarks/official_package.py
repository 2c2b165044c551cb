"""Make a full-size package of an official MTP finetune architecture for the benchmarks, the way an analyst
makes one: an official-format checkpoint -> `python -m training import-official`.

The released weights cannot be downloaded here, so the checkpoint holds the project's equivalent model with
its initial (random) weights under the official key names, saved as mmengine saves runner checkpoints; the
config is written from the official config fields recorded in tests/fixtures/official/architectures.json.gz.
Speed and memory do not depend on the weights' values.

    .venv/bin/python benchmarks/official_package.py rvsa-b-upernet-512-mae-mtp-loveda --out build/official
"""
from __future__ import annotations

import argparse
import gzip
import json
import pprint
import sys
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


def make_package(name: str, out: Path) -> Path:
    import torch

    from training.official.importer import default_model_id, import_official
    from training.official.models import build_model, read_spec
    from training.official.weights import save_like_mmengine

    config_name = name if name.endswith(".py") else f"{name}.py"
    out.mkdir(parents=True, exist_ok=True)
    config = out / config_name
    package = out / f"{default_model_id(config)}.onnx"
    if package.exists():
        print(f"{package} exists (delete it to make it again)")
        return package
    fields = official_fields(config_name)
    config.write_text("".join(f"{key} = {pprint.pformat(value)}\n" for key, value in fields.items()))
    model = build_model(read_spec(fields, config))
    checkpoint = out / f"{config.stem}.pth"
    save_like_mmengine(checkpoint, model.state_dict(), {"note": "random weights, for benchmarks only"})
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = import_official(checkpoint, config, out)
    checkpoint.unlink()
    print(json.dumps({"package": result["path"], "parity": result["metadata"]["provenance"]["parity"]}, indent=2))
    return Path(result["path"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="official config name, e.g. rvsa-b-upernet-512-mae-mtp-loveda")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "official")
    args = parser.parse_args()
    make_package(args.config, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
