"""The model-package metadata schema shared by training and the backend (mtp_common/package_schema.py): the
committed JSON Schema is the one generated from it, every bundled package fits it, its task list is the
backend's, and its problems name the key path."""
import copy
import json

import onnx
import pytest

from mtp_common import package_schema
from mtp_common.package_schema import SCHEMA_PATH, json_schema_text, problems

REPO = SCHEMA_PATH.parents[1]
BUNDLED = sorted((REPO / "resources" / "models").glob("*.onnx"))


def bundled_metadata(path):
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props["mtp_qgis"])


def test_committed_json_schema_is_up_to_date():
    assert SCHEMA_PATH.read_text() == json_schema_text(), "run `make schema`, commit docs/package_metadata.schema.json"
    assert "package_metadata.schema.json" in (REPO / "docs" / "contract.md").read_text()


def test_the_schemas_tasks_are_the_backends():
    from backend.model_package import known_tasks
    assert set(package_schema.KNOWN_TASKS) == set(known_tasks())


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_every_bundled_package_fits_the_schema(path):
    assert problems(bundled_metadata(path)) == []


def test_problems_name_the_key_path_and_what_it_must_be():
    meta = bundled_metadata(next(p for p in BUNDLED if p.stem == "mtp_det_default"))
    bad = copy.deepcopy(meta)
    del bad["tile_size"]
    bad["tile_overlap"] = "128"  # JSON types are checked strictly
    bad["classes"][0]["color"] = "orange"
    bad["input"]["std"][1] = True
    bad["detection"]["nms_iou"] = 0
    assert problems(bad) == ["classes[0].color 'orange' is not '#rrggbb'",
                             "'input.std' must be a list of numbers, one per band", "missing key 'tile_size'",
                             "'tile_overlap' must be a non-negative integer",
                             "'detection.nms_iou' must be a number in (0, 1]"]
    assert problems([meta]) == ["metadata must be a JSON object, got list"]
    with pytest.raises(ValueError, match=r"breaks docs/package_metadata.schema.json: classes\[0\].color 'orange'"):
        package_schema.checked(bad)
    assert package_schema.checked(meta) is meta
