"""A tiny SAMRS-format sample from the shared real data, regenerated on demand (nothing binary committed).

`write_tiny_samrs(out_dir)` writes `out_dir/{sota,sior,fast}` in the published layout (see samrs.py):
crops of DOTA P0706 (531 ships, 5 harbours) become the labelled images, with the instance mask of each
object its annotated quadrilateral filled (SAMRS's masks come from SAM, which is not available here),
the semantic mask those polygons painted with the class index, and the rotated boxes the quadrilaterals.
Class names follow each subset's list (FAST has no harbour and names ships `other-ship`).
LoveDA tiles are added as object-free images (`empty_images` per subset): LoveDA's land-cover classes
(building, road, water, ...) have no counterpart among SAMRS's object classes, so their pixels are all
background, which exercises images without instances as SAMRS has them.
"""
import json
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from training.config import REPO_ROOT
from training.detection.datasets import crop_image_and_annotations, read_dota_labels
from training.mtp.samrs import SUBSETS, rle_encode

SHARED = REPO_ROOT / "../shared/data"
# DOTA class -> class name per subset (None: the subset has no such class)
CLASS_MAP = {"sota": {"ship": "ship", "harbor": "harbor"},
             "sior": {"ship": "ship", "harbor": "harbor"},
             "fast": {"ship": "other-ship", "harbor": None}}


def _dior_xml(stem: str, width: int, height: int, objects: List) -> str:
    tags = ("x_left_top", "y_left_top", "x_right_top", "y_right_top",
            "x_right_bottom", "y_right_bottom", "x_left_bottom", "y_left_bottom")
    body = []
    for name, poly in objects:
        corners = "".join(f"<{t}>{v:.1f}</{t}>" for t, v in zip(tags, poly.reshape(-1).tolist()))
        body.append(f"<object><name>{name}</name><difficult>0</difficult><robndbox>{corners}</robndbox></object>")
    return (f"<annotation><filename>{stem}.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{''.join(body)}</annotation>\n")


def write_tiny_samrs(out_dir: Union[str, Path], images_per_subset: int = 4, crop: int = 256, scale: float = 0.5,
                     empty_images: int = 1, dota_root: Optional[Path] = None,
                     loveda_root: Optional[Path] = None, valid_images: int = 2) -> Dict[str, Path]:
    """Write the sample; returns {subset: root}. With the defaults every image is 128 x 128 px. Each subset's
    valid split (`*_valid_ins_segmentation.json`) lists `valid_images` other DOTA crops."""
    out_dir = Path(out_dir)
    dota_root = Path(dota_root or SHARED / "dota")
    loveda_root = Path(loveda_root or SHARED / "loveda")
    ann = read_dota_labels(dota_root / "labelTxt/P0706.txt")
    image = np.asarray(Image.open(dota_root / "images/P0706.png").convert("RGB"))
    crops = crop_image_and_annotations(image, ann, crop_size=crop, overlap=crop // 4, min_visible=0.5)
    crops.sort(key=lambda c: -len(c[2]))  # the busiest crops first
    size = int(round(crop * scale))
    loveda_tiles = sorted((loveda_root / "img_dir").glob("*.png"))
    roots = {}
    for s, (subset, layout) in enumerate(SUBSETS.items()):
        root = out_dir / subset
        ext = "jpg" if subset == "sior" else "png"
        for rel in (layout.image_dir, layout.seg_dir, layout.rbox_dir):
            (root / rel).mkdir(parents=True, exist_ok=True)
        # Subsets take interleaved crops so they differ while all get busy ones.
        mine = crops[s::len(SUBSETS)]
        items = [(f"P0706_{w[0]}_{w[1]}", img, a) for w, img, a in mine[:images_per_subset]]
        for k in range(empty_images):
            if loveda_tiles:
                tile = loveda_tiles[k % len(loveda_tiles)]
                items.append((f"loveda_{tile.stem}_{k}", np.asarray(Image.open(tile).convert("RGB"))[:crop, :crop], None))
        valid = [(f"P0706_{w[0]}_{w[1]}", img, a) for w, img, a in mine[images_per_subset:images_per_subset + valid_images]]
        for split, split_items in (("train", items), ("valid", valid)):
            _write_split(root, subset, layout, split, split_items, size, scale, ext)
        roots[subset] = root
    return roots


def _write_split(root: Path, subset: str, layout, split: str, items, size: int, scale: float, ext: str) -> None:
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": c, "supercategory": "none"} for i, c in enumerate(layout.classes)]}
    for image_id, (stem, pixels, objs) in enumerate(items):
        Image.fromarray(np.ascontiguousarray(pixels)).resize((size, size), Image.BILINEAR).save(
            root / layout.image_dir / f"{stem}.{ext}", **({"quality": 95} if ext == "jpg" else {}))
        coco["images"].append({"id": image_id, "file_name": f"{stem}.{ext}", "height": size, "width": size})
        gray = Image.new("L", (size, size), 255)
        draw = ImageDraw.Draw(gray)
        rotated = []
        if objs is not None and len(objs):
            polys = objs.polygons * scale
            areas = (objs.hboxes[:, 2] - objs.hboxes[:, 0]) * (objs.hboxes[:, 3] - objs.hboxes[:, 1])
            for j in torch.argsort(areas, descending=True).tolist():  # small objects painted last, on top
                name = CLASS_MAP[subset][objs.class_names[int(objs.labels[j])]]
                if name is None:
                    continue
                poly = polys[j]
                cls = layout.classes.index(name)
                mask_img = Image.new("L", (size, size), 0)
                ImageDraw.Draw(mask_img).polygon([tuple(p) for p in poly.tolist()], fill=1)
                mask = np.asarray(mask_img, dtype=bool)
                if not mask.any():
                    continue
                draw.polygon([tuple(p) for p in poly.tolist()], fill=cls)
                ys, xs = np.nonzero(mask)
                x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
                seg = rle_encode(mask) if subset != "sior" else [poly.reshape(-1).tolist()]
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": cls + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum()), "iscrowd": 0,
                    "segmentation": seg})
                rotated.append((name, poly))
        gray.save(root / layout.seg_dir / f"{stem}.png")
        if layout.rbox_format == "txt":
            lines = [" ".join(f"{v:.1f}" for v in p.reshape(-1).tolist()) + f" {n} {layout.classes.index(n)}"
                     for n, p in rotated]
            (root / layout.rbox_dir / f"{stem}.txt").write_text("".join(l + "\n" for l in lines))
        else:
            (root / layout.rbox_dir / f"{stem}.xml").write_text(_dior_xml(stem, size, size, rotated))
    (root / layout.ann_files[split]).write_text(json.dumps(coco))


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="write the tiny SAMRS-format sample")
    parser.add_argument("out_dir")
    args = parser.parse_args()
    for name, path in write_tiny_samrs(args.out_dir).items():
        print(name, path)
