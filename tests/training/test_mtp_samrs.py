"""SAMRS readers on the tiny SAMRS-format sample (regenerated from ../shared/data/dota and loveda)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from training.detection.boxes import rbox_to_hbox
from training.mtp.sample import write_tiny_samrs
from training.mtp.samrs import (SAMRSDataset, SAMRSFormatError, SUBSETS, rle_counts_from_string,
                                rle_counts_to_string, rle_decode, rle_encode)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_samrs(tmp_path_factory.mktemp("samrs"))


def test_rle_round_trip_and_known_runs():
    rng = np.random.default_rng(0)
    for shape in [(7, 5), (1, 1), (32, 17)]:
        for p in (0.0, 0.3, 1.0):
            mask = rng.random(shape) < p
            assert np.array_equal(rle_decode(rle_encode(mask)), mask)
    # large runs and the delta coding of runs 3+ (negative deltas included)
    counts = [0, 5000, 3, 70000, 2, 1]
    assert rle_counts_from_string(rle_counts_to_string(counts)) == counts
    # uncompressed counts, column-major: 2x2 with the right column set
    assert rle_decode({"size": [2, 2], "counts": [2, 2]}).tolist() == [[False, True], [False, True]]


@pytest.mark.parametrize("subset", list(SUBSETS))
def test_readers_return_consistent_labels(tiny, subset):
    ds = SAMRSDataset(tiny[subset], subset)
    assert len(ds) == 5 and ds.num_semantic_classes == len(SUBSETS[subset].classes) + 1
    total = 0
    for i in range(len(ds)):
        s = ds[i]
        h, w = s.semantic.shape
        assert s.image.shape == (h, w, 3) and s.image.dtype == np.uint8
        n = len(s.labels)
        total += n
        assert s.masks.shape == (n, h, w) and s.boxes.shape == (n, 4)
        # each instance is one object, with its rotated box: same count, same classes
        assert len(s.rlabels) == n and sorted(s.rlabels.tolist()) == sorted(s.labels.tolist())
        if n:
            # masks lie in their boxes; the semantic mask is background exactly off every instance
            for m, b in zip(s.masks, s.boxes):
                ys, xs = np.nonzero(m)
                assert xs.min() >= b[0] - 1e-3 and xs.max() + 1 <= b[2] + 1e-3
            assert np.array_equal(s.semantic > 0, s.masks.any(0))
            assert set(np.unique(s.semantic[s.semantic > 0]) - 1) <= set(s.labels.tolist())
            # the rotated boxes' horizontal extents match the instance boxes (filled quadrilaterals)
            rh = rbox_to_hbox(s.rboxes)
            assert float((rh[:, 2] - rh[:, 0]).sum()) == pytest.approx(float((s.boxes[:, 2] - s.boxes[:, 0]).sum()), rel=0.15)
        else:
            assert (s.semantic == 0).all() and len(s.rboxes) == 0
    assert total > 100  # real ships


def _copy(tiny, subset, tmp_path):
    import shutil
    dst = tmp_path / subset
    shutil.copytree(tiny[subset], dst)
    return dst


def test_malformed_files_give_clear_errors(tiny, tmp_path):
    root = _copy(tiny, "sota", tmp_path)
    layout = SUBSETS["sota"]
    ann = root / layout.ann_files["train"]
    coco = json.loads(ann.read_text())
    ds = SAMRSDataset(root, "sota")
    stem = ds.stem(0)

    with pytest.raises(SAMRSFormatError, match="instance annotation file missing"):
        SAMRSDataset(root, "sota", ann_file="trainval/sota_rbb_test_ins_segmentation.json")
    with pytest.raises(ValueError, match="unknown SAMRS subset"):
        SAMRSDataset(root, "dota")

    # a rotated-box line with an unknown class names file and line
    txt = root / layout.rbox_dir / f"{stem}.txt"
    good = txt.read_text()
    txt.write_text("1 1 5 1 5 5 1 5 car 0\n" + good)
    with pytest.raises(SAMRSFormatError, match=r"\.txt:1: unknown class 'car'"):
        ds[0]
    txt.write_text("1 1 5 1 5 ship\n")
    with pytest.raises(SAMRSFormatError, match=r"\.txt:1: expected"):
        ds[0]
    txt.unlink()
    with pytest.raises(SAMRSFormatError, match="rotated-box annotation missing"):
        ds[0]
    txt.write_text(good)

    # a semantic mask with a class value beyond the subset's list
    seg = root / layout.seg_dir / f"{stem}.png"
    gray = np.asarray(Image.open(seg)).copy()
    Image.fromarray(np.full_like(gray, 200)).save(seg)
    with pytest.raises(SAMRSFormatError, match="class value 200 outside"):
        ds[0]
    Image.fromarray(gray).save(seg)

    # an RLE whose size disagrees with the image
    bad = json.loads(json.dumps(coco))
    first = next(a for a in bad["annotations"] if a["image_id"] == bad["images"][0]["id"])
    first["segmentation"]["size"] = [3, 3]
    ann.write_text(json.dumps(bad))
    with pytest.raises(SAMRSFormatError, match="RLE runs add up"):
        SAMRSDataset(root, "sota")[0]

    ann.write_text("{not json")
    with pytest.raises(SAMRSFormatError, match="not valid JSON"):
        SAMRSDataset(root, "sota")
    ann.write_text(json.dumps({"images": []}))
    with pytest.raises(SAMRSFormatError, match="needs lists"):
        SAMRSDataset(root, "sota")

    # a listed image that is not there
    ann.write_text(json.dumps(coco))
    (root / layout.image_dir / coco["images"][0]["file_name"]).unlink()
    with pytest.raises(SAMRSFormatError, match="image listed in .* is missing"):
        SAMRSDataset(root, "sota")[0]


def test_sior_polygons_and_xml(tiny):
    ds = SAMRSDataset(tiny["sior"], "sior")
    s = ds[0]
    assert s.masks.shape[0] > 10 and SUBSETS["sior"].classes[int(s.labels[0])] == "ship"
    assert torch.all(s.rboxes[:, 2] >= s.rboxes[:, 3])  # le90
