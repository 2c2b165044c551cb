"""What an official MTP finetune config implies about its dataset: class names and colours, ground sample
distance, the metric the paper reports and its values for the released (MTP-pretrained) weights.

Class names and orders are those of the official dataset classes (mmseg `LoveDADataset`,
`SpaceNetV1Dataset`; mmpretrain `CustomDataset` sorts class folders alphabetically; Open-CD change sets
have two classes, named here as the contract names them). Paper figures: the MTP README's "Finetuned
Models" tables (ViTAE-Transformer/MTP at 13cc2b7), as fractions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

CHANGE_CLASSES = (("no change", "#000000"), ("change", "#ff0000"))


@dataclass(frozen=True)
class DatasetFacts:
    key: str
    name: str
    classes: Tuple[Tuple[str, str], ...]  # (name, "#rrggbb") in class-id order
    gsd_m: Optional[float]  # metres per pixel of the pixels the network saw; None where the dataset mixes GSDs
    gsd_note: str
    metric: str  # the package's metrics key (as our own packages name it)
    metric_label: str
    evaluated_on: str
    paper: Dict[str, float] = field(default_factory=dict)  # encoder name -> metric of the released weights
    scene_cell_size: Optional[int] = None  # scene classification: source pixels per image of the dataset


def _palette(names, colours):
    return tuple(zip(names, colours))


# 45 NWPU-RESISC45 classes, alphabetical (the order mmpretrain's CustomDataset gives its folders).
RESISC45 = (
    "airplane", "airport", "baseball_diamond", "basketball_court", "beach", "bridge", "chaparral", "church",
    "circular_farmland", "cloud", "commercial_area", "dense_residential", "desert", "forest", "freeway",
    "golf_course", "ground_track_field", "harbor", "industrial_area", "intersection", "island", "lake",
    "meadow", "medium_residential", "mobile_home_park", "mountain", "overpass", "palace", "parking_lot",
    "railway", "railway_station", "rectangular_farmland", "river", "roundabout", "runway", "sea_ice", "ship",
    "snowberg", "sparse_residential", "stadium", "storage_tank", "tennis_court", "terrace",
    "thermal_power_station", "wetland")
EUROSAT = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
           "PermanentCrop", "Residential", "River", "SeaLake")
EUROSAT_COLOURS = ("#e6c84b", "#1b7837", "#a6d96a", "#bdbdbd", "#d73027", "#d9f0a3", "#8c510a", "#f46d43",
                   "#4575b4", "#313695")


def _spread(n: int) -> Tuple[str, ...]:
    """n distinct colours around the hue circle (for class sets without an official palette)."""
    import colorsys
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65 + 0.35 * (i % 2), 0.95 - 0.3 * ((i // 2) % 2))
        out.append("#%02x%02x%02x" % (int(r * 255), int(g * 255), int(b * 255)))
    return tuple(out)


DATASETS: Dict[str, DatasetFacts] = {
    "loveda": DatasetFacts(
        "loveda", "LoveDA",
        _palette(("background", "building", "road", "water", "barren", "forest", "agricultural"),
                 ("#ffffff", "#ff0000", "#ffff00", "#0000ff", "#9f81b7", "#00ff00", "#ffc380")),
        0.3, "LoveDA: 0.3 m aerial imagery", "mIoU", "mIoU", "LoveDA test set (MTP paper)",
        {"ViT-B+RVSA": 0.5239, "ViT-L+RVSA": 0.5417, "InternImage-XL": 0.5417}),
    "spacenetv1": DatasetFacts(
        "spacenetv1", "SpaceNet v1 (buildings)",
        _palette(("background", "building"), ("#ffffff", "#ff0000")),
        0.5, "SpaceNet v1 (Rio de Janeiro): 0.5 m pan-sharpened WorldView-2 RGB", "mIoU", "mIoU",
        "SpaceNet v1 test split (MTP paper)", {"ViT-B+RVSA": 0.7963, "ViT-L+RVSA": 0.7954, "InternImage-XL": 0.7916}),
    "eurosat": DatasetFacts(
        "eurosat", "EuroSAT", _palette(EUROSAT, EUROSAT_COLOURS),
        10.0, "EuroSAT: Sentinel-2 RGB at 10 m, 64 px images (resized to 256, centre 224 px for the network)",
        "overall_accuracy", "OA", "EuroSAT test split (MTP paper)",
        {"ViT-B+RVSA": 0.9876, "ViT-L+RVSA": 0.9878, "InternImage-XL": 0.9924}, scene_cell_size=64),
    "resisc45": DatasetFacts(
        "resisc45", "NWPU-RESISC45", _palette(RESISC45, _spread(len(RESISC45))),
        None, "NWPU-RESISC45: 256 px images of 0.2-30 m (no single GSD)", "overall_accuracy", "OA",
        "NWPU-RESISC45, 20 % training split (MTP paper)",
        {"ViT-B+RVSA": 0.9557, "ViT-L+RVSA": 0.9588, "InternImage-XL": 0.9627}, scene_cell_size=256),
    "levir_cd": DatasetFacts(
        "levir_cd", "LEVIR-CD", CHANGE_CLASSES, 0.5, "LEVIR-CD: 0.5 m Google Earth imagery, 256 px patches",
        "f1", "F1 (change)", "LEVIR-CD test set (MTP paper)",
        {"ViT-B+RVSA": 0.9222, "ViT-L+RVSA": 0.9267, "InternImage-XL": 0.9254}),
    "whu_cd": DatasetFacts(
        "whu_cd", "WHU-CD (buildings)", CHANGE_CLASSES, 0.2, "WHU building change set: 0.2 m aerial imagery",
        "f1", "F1 (change)", "WHU-CD test set (MTP paper)",
        {"ViT-B+RVSA": 0.9432, "ViT-L+RVSA": 0.9475, "InternImage-XL": 0.9559}),
    "cdd": DatasetFacts(
        "cdd", "CDD / SVCD (seasonal change)", CHANGE_CLASSES, None,
        "CDD: Google Earth pairs of 0.03-1 m (no single GSD), 256 px patches", "f1", "F1 (change)",
        "CDD test set (MTP paper)", {"ViT-B+RVSA": 0.9787, "ViT-L+RVSA": 0.9798, "InternImage-XL": 0.9833}),
    "oscd_rgb": DatasetFacts(
        "oscd_rgb", "OSCD (Sentinel-2 RGB)", CHANGE_CLASSES, round(10.0 * 96 / 224, 3),
        "OSCD: Sentinel-2 RGB at 10 m in 96 px patches resized to 224 px, i.e. 4.286 m per network pixel",
        "f1", "F1 (change)", "OSCD test cities (MTP paper)",
        {"ViT-B+RVSA": 0.5336, "ViT-L+RVSA": 0.5592, "InternImage-XL": 0.5561}),
}

# Official dataset types -> our key. mmpretrain's CustomDataset is told apart by its data_root.
DATASET_TYPES = {
    "LoveDADataset": "loveda", "SpaceNetV1Dataset": "spacenetv1", "LEVIR_CD_Dataset": "levir_cd",
    "WHU_CD_Dataset": "whu_cd", "SVCD_Dataset": "cdd", "OSCD_RGB_CD_Dataset": "oscd_rgb",
}
CUSTOM_ROOT_HINTS = (("eurosat", "eurosat"), ("nwpu", "resisc45"), ("resisc", "resisc45"))
