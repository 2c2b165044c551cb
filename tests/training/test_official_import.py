"""The official MTP finetuned models as packages (`python -m training import-official`), checked against the
official frameworks through the fixtures `make reference` writes (tests/fixtures/official/README.md):

* six reduced-width official models (ViT+RVSA and InternImage x mmseg UperNet / mmpretrain classifier /
  Open-CD UNet), random weights saved as mmengine saves them, with the official model's logits on real
  tiles of ../shared/data: the importer's package, run by ONNX Runtime and fed as the backend feeds it,
  must give the same logits (1e-4 of the largest, argmax agreeing);
* the key sets with shapes and the parameter counts of every full-size official seg / scene / change
  architecture: the project's models must have exactly those keys, apart from the documented drops;
* bad input: a checkpoint of another family, a truncated file, an unsupported config, a class count
  that does not match: a message naming the file, and nothing written.
"""
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reference.check_package import compare, run_package
from training.models.encoders.checkpoints import CheckpointMismatch
from training.official.config_file import ConfigError, read_official_config
from training.official.importer import import_official
from training.official.models import build_model, read_spec
from training.official.weights import Opaque, drop_rules, read_official_checkpoint

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "official"
# Segmentation, scene and change fixtures; the detectors' (det_*, rdet_*) are test_official_detection.py's.
REDUCED = sorted(p.name for p in FIXTURES.iterdir()
                 if (p / "checkpoint.pth").is_file() and not p.name.startswith(("det_", "rdet_")))
with gzip.open(FIXTURES / "architectures.json.gz", "rt") as _f:
    ARCHITECTURES = json.load(_f)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fixture(name):
    folder = FIXTURES / name
    return folder / "checkpoint.pth", folder / "config.py", folder / "reference.npz"


@pytest.fixture(scope="module")
def imported(official_import):
    """Every reduced fixture through the importer's CLI (tests/conftest.py: once per session, shared with the
    end-to-end tests; each export takes 10-30 s): name -> result."""
    return {name: official_import(name) for name in REDUCED}


def test_fixtures_cover_every_family_and_both_encoders():
    families = {read_spec(read_official_config(fixture(n)[1]), fixture(n)[1]).family for n in REDUCED}
    assert families == {"mmseg-upernet", "mmpretrain-linear", "opencd-unet"}
    assert len(REDUCED) == 6 and {n.rsplit("_", 1)[-1] for n in REDUCED} >= {"internimage", "rvsa"}


@pytest.mark.slow
@pytest.mark.parametrize("name", REDUCED)
def test_reduced_official_model_converts_to_a_package_with_the_official_outputs(name, imported):
    checkpoint, config, reference_npz = fixture(name)
    result = imported[name]
    reference = np.load(reference_npz)
    ours = run_package(Path(result["path"]), result["metadata"], reference)
    parity = compare(ours, reference["logits"])
    print(f"{name}: ONNX Runtime vs official logits {parity}")
    assert parity["relative_diff"] <= 1e-4 and parity["argmax_agreement"] >= 0.999
    # The backend accepts it (graph checked against the metadata), and every official tensor was accounted for.
    from backend.model_package import load_package
    package = load_package(result["path"])
    meta = package.raw
    assert meta["provenance"]["checkpoint_sha256"] and meta["provenance"]["config"] == "config.py"
    state, _ = read_official_checkpoint(checkpoint)
    dropped = result["report"]["dropped"]
    assert result["report"]["loaded"] + len(dropped) == len(state)
    rules = drop_rules(build_model(read_spec(read_official_config(config), config)))
    assert all(any(k.startswith(p) for p in rules) for k in dropped)
    if "vit_rvsa" in name and not name.startswith("seg"):
        # mmpretrain / Open-CD build RVSA_MTP's norm and pyramid but never apply them.
        assert any(k.startswith("backbone.fpn1.") for k in dropped) and "backbone.norm.weight" in dropped
    else:
        assert dropped == set()


@pytest.mark.slow
def test_package_metadata_comes_from_the_config_and_the_dataset(imported):
    meta = imported["seg_upernet_vit_rvsa"]["metadata"]
    assert meta["task"] == "semantic_segmentation" and meta["dataset"] == "LoveDA"
    assert [c["name"] for c in meta["classes"]] == ["background", "building", "road", "water", "barren",
                                                   "forest", "agricultural"]
    assert meta["classes"][1]["color"] == "#ff0000"
    # mmseg's SegDataPreProcessor: RGB (bgr_to_rgb on BGR-read files), ImageNet mean/std in 0..255.
    assert meta["input"]["bands"] == [1, 2, 3] and meta["input"]["scale"] == 255.0
    assert meta["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["input"]["std"] == pytest.approx([0.229, 0.224, 0.225])
    # The reduced config slides 128 px windows with stride 96 (official: 512 / 384).
    assert (meta["tile_size"], meta["tile_overlap"], meta["trained_tile_size"]) == (128, 32, 128)
    assert meta["gsd_m"] == 0.3
    # A reduced-width model is not a released one: no paper figure is claimed for it.
    assert "mIoU" not in meta["metrics"] and "no published mIoU" in meta["metrics"]["note"]
    scene = imported["scene_linear_vit_rvsa"]["metadata"]
    assert scene["dataset"] == "EuroSAT" and len(scene["classes"]) == 10 and scene["scene"] == {"cell_size": 64}
    assert scene["output"]["layout"] == "NC" and scene["tile_overlap"] == 0
    change = imported["change_unet_internimage"]["metadata"]
    assert [c["name"] for c in change["classes"]] == ["no change", "change"]
    assert change["dataset"].startswith("WHU") and change["tile_size"] == 64


def _official_keys_after_drops(record, model):
    rules = drop_rules(model)
    kept = {k: v for k, v in record["official_keys"].items() if not any(k.startswith(p) for p in rules)}
    return kept, {k: v for k, v in record["official_keys"].items() if k not in kept}


@pytest.mark.slow
@pytest.mark.parametrize("record", ARCHITECTURES, ids=[r["configs"][0] for r in ARCHITECTURES])
def test_full_size_official_architectures_have_exactly_our_keys_and_parameters(record):
    fields = record["fields"]
    path = Path(record["configs"][0])
    spec = read_spec(fields, path)
    with torch.device("meta"):
        model = build_model(spec)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    official, dropped = _official_keys_after_drops(record, model)
    assert ours == official
    params = sum(p.numel() for p in model.parameters())
    dropped_params = sum(int(np.prod(s)) for k, s in dropped.items() if not k.endswith(("running_mean", "running_var")))
    assert params + dropped_params == record["official_parameters"]


def test_full_size_architectures_cover_the_paper_encoders_for_every_family():
    seen = {(read_spec(r["fields"], Path(r["configs"][0])).family, read_spec(r["fields"], Path(r["configs"][0])).encoder_name)
            for r in ARCHITECTURES}
    for family in ("mmseg-upernet", "mmpretrain-linear", "opencd-unet"):
        for encoder in ("ViT-B+RVSA", "ViT-L+RVSA", "InternImage-XL"):
            assert (family, encoder) in seen
    loveda = [r for r in ARCHITECTURES if any("loveda" in c for c in r["configs"])]
    counts = {read_spec(r["fields"], Path(r["configs"][0])).encoder_name: r["official_parameters"] for r in loveda}
    print("LoveDA UperNet parameters:", counts)
    assert set(counts) == {"ViT-B+RVSA", "ViT-L+RVSA", "InternImage-XL"}


def test_released_configurations_carry_the_papers_figure_and_baselines_do_not():
    from training.official.importer import build_metadata
    by_config = {c: r for r in ARCHITECTURES for c in r["configs"]}
    expected = {"rvsa-b-upernet-512-mae-mtp-loveda.py": ("mIoU", 0.5239),
                "rvsa-l-unet-256-mae-mtp_cdd.py": ("f1", 0.9798),
                "intern-xl-224-imp-mtp_eurosat.py": ("overall_accuracy", 0.9924)}
    for config, (key, value) in expected.items():
        spec = read_spec(by_config[config]["fields"], Path(config))
        meta = build_metadata(spec, Path("weights.pth"), {"loaded": 1, "dropped": {}}, {}, {}, "0" * 64, "1" * 64)
        assert meta["metrics"][key] == value and "paper" in meta["metrics"]["source"]
        assert meta["pretraining"].endswith("+ MTP")
    baseline = read_spec(by_config["rvsa-b-upernet-512-mae-loveda.py"]["fields"], Path("rvsa-b-upernet-512-mae-loveda.py"))
    meta = build_metadata(baseline, Path("w.pth"), {"loaded": 1, "dropped": {}}, {}, {}, "0" * 64, "1" * 64)
    assert "mIoU" not in meta["metrics"] and "no MTP" in meta["pretraining"]


# --- bad input: a message naming the file and what was expected, nothing written -------------------------

def _nothing_written(folder: Path):
    assert list(folder.iterdir()) == []


def test_checkpoint_of_another_family_is_refused_naming_both(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    checkpoint, _, _ = fixture("seg_upernet_vit_rvsa")
    _, config, _ = fixture("change_unet_internimage")
    with pytest.raises(CheckpointMismatch) as err:
        import_official(checkpoint, config, out)
    text = str(err.value)
    assert "checkpoint.pth" in text and "RVSA_MTP" in text and "UPerHead" in text and "InternImage" in text
    _nothing_written(out)


def test_truncated_checkpoint_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    checkpoint, config, _ = fixture("scene_linear_vit_rvsa")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(CheckpointMismatch, match="cut.pth is not a readable PyTorch checkpoint"):
        import_official(cut, config, out)
    _nothing_written(out)


def test_unsupported_config_family_and_wrong_class_count_are_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    checkpoint, config, _ = fixture("seg_upernet_vit_rvsa")
    text = config.read_text()
    cascade = tmp_path / "cascade.py"
    cascade.write_text(text.replace("type='EncoderDecoder'", "type='CascadeEncoderDecoder'"))
    with pytest.raises(ConfigError, match="cascade.py: model type 'CascadeEncoderDecoder' is not an MTP finetune"):
        import_official(checkpoint, cascade, out)
    resnet = tmp_path / "resnet.py"
    resnet.write_text(text.replace("type='RVSA_MTP'", "type='ResNetV1c'"))
    with pytest.raises(ConfigError, match="backbone 'ResNetV1c' is not an MTP encoder"):
        import_official(checkpoint, resnet, out)
    two = tmp_path / "two_classes.py"
    two.write_text(text.replace("dataset_type = 'LoveDADataset'", "dataset_type = 'SpaceNetV1Dataset'")
                   .replace("num_classes=7", "num_classes=2"))
    with pytest.raises(CheckpointMismatch, match="head has 7 classes, the config's 2"):
        import_official(checkpoint, two, out)
    _nothing_written(out)
    (out / "mtp_config.onnx").write_bytes(b"an existing package")
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_official(checkpoint, config, out)
    assert (out / "mtp_config.onnx").read_bytes() == b"an existing package"


@pytest.mark.slow
def test_cli_prints_one_error_line_and_exit_code_2(tmp_path):
    checkpoint, config, _ = fixture("seg_upernet_vit_rvsa")
    done = subprocess.run([sys.executable, "-m", "training", "import-official", str(tmp_path / "missing.pth"),
                           "--config", str(config), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().startswith("error:") and "missing.pth" in done.stderr
    assert "Traceback" not in done.stderr


# --- reading configs and checkpoints without running their code ------------------------------------------

def test_config_reader_merges_bases_and_refuses_code(tmp_path):
    (tmp_path / "base.py").write_text("model = dict(type='EncoderDecoder', head=dict(a=1, b=2))\n"
                                      "mean = [123.675, 116.28, 103.53]\n")
    (tmp_path / "child.py").write_text(
        "_base_ = ['base.py']\nmodel = dict(head=dict(b=3))\nmean = [1.5, 2.5, 3.5]\n"
        "std = [x * 2 for x in mean[::-1]]\npair = mean * 2\nother = dict(_delete_=True, c=1)\n")
    cfg = read_official_config(tmp_path / "child.py")
    assert cfg["model"] == {"type": "EncoderDecoder", "head": {"a": 1, "b": 3}}
    # As in mmengine, a child's own names override the base's; base names are not variables of the child.
    assert cfg["mean"] == [1.5, 2.5, 3.5] and cfg["std"] == [7.0, 5.0, 3.0] and len(cfg["pair"]) == 6
    assert cfg["other"] == {"c": 1}
    marker = tmp_path / "ran"
    for body, what in ((f"import os\nos.system('touch {marker}')\n", "imports are not supported"),
                       (f"x = __import__('os').system('touch {marker}')\n", "calling __import__"),
                       (f"x = open('{marker}', 'w')\n", "calling open"),
                       ("x = (lambda: 1)()\n", "not supported"),
                       ("x = [0] * 10 ** 9\n", "too long"),
                       ("def f():\n    pass\n", "FunctionDef statement")):
        bad = tmp_path / "bad.py"
        bad.write_text(body)
        with pytest.raises(ConfigError, match=what):
            read_official_config(bad)
    assert not marker.exists()
    with pytest.raises(ConfigError, match="does not exist"):
        read_official_config(tmp_path / "nope.py")
    (tmp_path / "loop.py").write_text("_base_ = 'loop.py'\n")
    with pytest.raises(ConfigError, match="loops back"):
        read_official_config(tmp_path / "loop.py")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_reader_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"meta": {"note": "x"}, "message_hub": _Payload(marker),
                "state_dict": {"backbone.w": torch.ones(2)}}, path)
    state, meta = read_official_checkpoint(path)
    assert not marker.exists()
    assert torch.equal(state["backbone.w"], torch.ones(2)) and meta == {"note": "x"}
    obj = torch.load(path, weights_only=False, pickle_module=__import__(
        "training.official.weights", fromlist=["_SafePickleModule"])._SafePickleModule())
    assert isinstance(obj["message_hub"], Opaque) and not marker.exists()
