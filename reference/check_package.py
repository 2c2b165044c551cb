"""Convert an official-format checkpoint with the project's importer and compare the package, run by ONNX
Runtime exactly as the backend feeds it (the package's own bands, scale, mean and std), with the official
model's logits stored beside the inputs. Runs in the project environment (.venv); prints one JSON line.

    .venv/bin/python reference/check_package.py --checkpoint C.pth --config C.py --reference R.npz --out-dir DIR
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def package_inputs(metadata: Dict, rgb: np.ndarray) -> np.ndarray:
    """N x H x W x 3 uint8 RGB tiles -> N x C x H x W float32, as the backend normalises a 3-band raster."""
    spec = metadata["input"]
    x = rgb[..., [b - 1 for b in spec["bands"]]].astype(np.float32) / float(spec["scale"])
    x = (x - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def run_package(path: Path, metadata: Dict, reference) -> np.ndarray:
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    arrays = [reference["before"], reference["after"]] if len(names) == 2 else [reference["inputs"]]
    return session.run(None, {n: package_inputs(metadata, a) for n, a in zip(names, arrays)})[0]


def compare(ours: np.ndarray, official: np.ndarray) -> Dict:
    diff = float(np.abs(ours - official).max())
    scale = float(np.abs(official).max())
    return {"max_abs_diff": diff, "max_abs_logit": scale, "relative_diff": diff / max(scale, 1e-12),
            "argmax_agreement": float((ours.argmax(1) == official.argmax(1)).mean())}


def check(checkpoint: Path, config: Path, reference_npz: Path, out_dir: Path, model_id: str | None = None) -> Dict:
    from training.official.importer import import_official
    result = import_official(checkpoint, config, out_dir, model_id=model_id, overwrite=True)
    reference = np.load(reference_npz)
    ours = run_package(Path(result["path"]), result["metadata"], reference)
    return {**compare(ours, reference["logits"]), "package": result["path"],
            "loaded_tensors": result["report"]["loaded"], "dropped_tensors": len(result["report"]["dropped"]),
            "export_parity": result["metadata"]["provenance"]["parity"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(check(args.checkpoint, args.config, args.reference, args.out_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
