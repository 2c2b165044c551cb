"""Typed training configs (training/config.py): every error names the file, the key path and the expected
type; `2e-3` is a number; every shipped config still loads."""
import copy
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from training.change_detection.config import ChangeDataConfig
from training.config import REPO_ROOT, InputBands, parse_config, yaml_load
from training.detection.config import DetDataConfig
from training.scene_classification.config import SceneDataConfig
from training.segmentation.config import DataConfig, load_config

# task -> (module, reader) of every config under training/configs
READERS = {"semantic_segmentation": ("training.segmentation.config", "config_from_dict"),
           "change_detection": ("training.change_detection.config", "config_from_dict"),
           "scene_classification": ("training.scene_classification.config", "config_from_dict"),
           "detection": ("training.detection.config", "config_from_dict"),
           "rotated_detection": ("training.detection.config", "config_from_dict"),
           "gersp_pretrain": ("training.gersp.config", "config_from_dict"),
           "land_cover_extraction": ("training.land_cover.config", "config_from_dict"),
           "instance_segmentation": ("training.instance_segmentation.config", "config_from_dict"),
           "mtp_pretrain": ("training.mtp.config", "mtp_config_from_dict")}


def write(tmp_path: Path, raw: dict, text_edit=None) -> Path:
    text = yaml.safe_dump(raw, sort_keys=False)
    path = tmp_path / "bad.yaml"
    path.write_text(text_edit(text) if text_edit else text)
    return path


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "training/configs").rglob("*.yaml")),
                         ids=lambda p: str(p.relative_to(REPO_ROOT / "training/configs")))
def test_every_shipped_config_reads(path):
    import importlib
    raw = yaml_load(path.read_text())
    module, reader = READERS[raw.get("task", "semantic_segmentation")]
    checks_files = ("detection", "rotated_detection", "instance_segmentation")  # their readers take check_files
    kwargs = {"check_files": False} if raw.get("task") in checks_files else {}
    cfg = getattr(importlib.import_module(module), reader)(raw, **kwargs)
    assert isinstance(cfg.train.lr, float) and cfg.train.lr > 0


def test_unknown_key_names_file_key_path_and_the_likely_key(tmp_path):
    raw = copy.deepcopy(TINY)
    raw["train"]["lrr"] = 0.01
    path = write(tmp_path, raw)
    with pytest.raises(ValueError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: train.lrr: unknown key; did you mean 'lr'?"


def test_wrong_types_name_key_path_and_expected_type_all_at_once(tmp_path):
    raw = copy.deepcopy(TINY)
    raw["train"]["lr"] = "fast"
    raw["data"]["classes"][1]["name"] = 3
    raw["data"]["train"][0]["tiles"] = "0.png"
    path = write(tmp_path, raw)
    with pytest.raises(ValueError) as err:
        load_config(path)
    problems = str(err.value).removeprefix(f"{path}: ").split("; ")
    assert problems == [
        "data.classes[1].name: Input should be a valid string (expected string, got 3)",
        "data.train[0].tiles: Input should be a valid list (expected a list of string, got '0.png')",
        "train.lr: Input should be a valid number, unable to parse string as a number (expected number, got 'fast')"]


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML alone (YAML 1.1) reads 2e-3 as the string "2e-3": the optimizer failed much later, naming no key.
    assert yaml.safe_load("lr: 2e-3")["lr"] == "2e-3"
    assert yaml_load("a: 2e-3\nb: -1E+5\nc: 7\nd: '2e-3'\ne: 1.5e-4\nf: e5") == {
        "a": 0.002, "b": -100000.0, "c": 7, "d": "2e-3", "e": 1.5e-4, "f": "e5"}
    path = write(tmp_path, TINY, lambda text: text.replace("lr: 0.002", "lr: 2e-3"))
    assert "lr: 2e-3" in path.read_text()
    cfg = load_config(path)
    assert cfg.train.lr == 0.002 and isinstance(cfg.train.lr, float)


def test_normalisation_fields_are_declared_once():
    for data_class in (DataConfig, ChangeDataConfig, DetDataConfig, SceneDataConfig):
        assert issubclass(data_class, InputBands)
        assert not {"scale", "mean", "std", "bands", "band_names"} & set(vars(data_class).get("__annotations__", {}))
    with pytest.raises(ValueError, match=r"must agree on the number of channels \(data.bands 3, data.band_names 3, "
                                         r"data.mean 2, data.std 3, model.encoder.in_chans 3\)"):
        parse_config(InputBands, {"mean": [0.5, 0.5]}).check_channels(3)
