"""What an official MTP finetune config implies about its dataset: class names and colours, ground sample
distance, the metric the paper reports and its values for the released (MTP-pretrained) weights.

Class names and orders are those of the official dataset classes (mmseg `LoveDADataset`,
`SpaceNetV1Dataset`; mmpretrain `CustomDataset` sorts class folders alphabetically; Open-CD change sets
have two classes, named here as the contract names them; detection: MTP's mmdet `DIORDataset` /
`XviewDataset` and mmrotate `DIORDataset` / `DOTADataset` / `DOTAv2Dataset` / `FAIR1Mv2Dataset`, with their
palettes). Paper figures: the MTP README's "Finetuned Models" tables (ViTAE-Transformer/MTP at 13cc2b7), as
fractions; the README gives none for DOTA.
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

DIOR = ("airplane", "airport", "baseballfield", "basketballcourt", "bridge", "chimney", "expressway-service-area",
        "expressway-toll-station", "dam", "golffield", "groundtrackfield", "harbor", "overpass", "ship", "stadium",
        "storagetank", "tenniscourt", "trainstation", "vehicle", "windmill")
COCO_PALETTE_60 = (
    "#dc143c", "#770b20", "#00008e", "#0000e6", "#6a00e4", "#003c64", "#005064", "#000046", "#0000c0", "#faaa1e",
    "#64aa1e", "#dcdc00", "#af74af", "#fa001e", "#a52a2a", "#ff4dff", "#00e2fc", "#b6b6ff", "#005200", "#78a69d",
    "#6e4c00", "#ae39ff", "#c76400", "#480076", "#ffb3f0", "#007d5c", "#d10097", "#bcd0b6", "#00dcb0", "#ff63a4",
    "#5c0049", "#8581ff", "#4eb4ff", "#00e400", "#aefff3", "#2d59ff", "#868667", "#9194ae", "#ffd0ba", "#c5e2ff",
    "#ab8601", "#6d3f36", "#cf8aff", "#97005f", "#09503d", "#546933", "#4a4169", "#a6c466", "#d0c3d2", "#ff6d41",
    "#008f95", "#b300c2", "#d1636a", "#057900", "#e3ffcd", "#93bad0", "#994501", "#035fa1", "#a3ff00", "#7700aa")
XVIEW = (
    "Fixed-wing Aircraft", "Small Aircraft", "Cargo Plane", "Helicopter", "Passenger Vehicle", "Small Car", "Bus",
    "Pickup Truck", "Utility Truck", "Truck", "Cargo Truck", "Truck w/Box", "Truck Tractor", "Trailer",
    "Truck w/Flatbed", "Truck w/Liquid", "Crane Truck", "Railway Vehicle", "Passenger Car", "Cargo Car", "Flat Car",
    "Tank car", "Locomotive", "Maritime Vessel", "Motorboat", "Sailboat", "Tugboat", "Barge", "Fishing Vessel",
    "Ferry", "Yacht", "Container Ship", "Oil Tanker", "Engineering Vehicle", "Tower crane", "Container Crane",
    "Reach Stacker", "Straddle Carrier", "Mobile Crane", "Dump Truck", "Haul Truck", "Scraper/Tractor",
    "Front loader/Bulldozer", "Excavator", "Cement Mixer", "Ground Grader", "Hut/Tent", "Shed", "Building",
    "Aircraft Hangar", "Damaged Building", "Facility", "Construction Site", "Vehicle Lot", "Helipad", "Storage Tank",
    "Shipping container lot", "Shipping Container", "Pylon", "Tower")
DOTA_V2 = ("plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle", "ship",
           "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout", "harbor",
           "swimming-pool", "helicopter", "container-crane", "airport", "helipad")
DOTA_PALETTE = ("#a52a2a", "#bdb76b", "#00ff00", "#ff0000", "#8a2be2", "#ff8000", "#ff00ff", "#00ffff", "#ffc1c1",
                "#003399", "#fffacd", "#008b8b", "#ffff00", "#937474", "#0000ff", "#dc143c", "#770b20", "#00008e")
FAIR1M2 = (
    "A220", "A321", "A330", "A350", "ARJ21", "Baseball-Field", "Basketball-Court", "Boeing737", "Boeing747",
    "Boeing777", "Boeing787", "Bridge", "Bus", "C919", "Cargo-Truck", "Dry-Cargo-Ship", "Dump-Truck",
    "Engineering-Ship", "Excavator", "Fishing-Boat", "Football-Field", "Intersection", "Liquid-Cargo-Ship",
    "Motorboat", "other-airplane", "other-ship", "other-vehicle", "Passenger-Ship", "Roundabout", "Small-Car",
    "Tennis-Court", "Tractor", "Trailer", "Truck-Tractor", "Tugboat", "Van", "Warship")
FAIR1M_PALETTE = COCO_PALETTE_60[43:] + (
    "#00b6c7", "#00a578", "#b78258", "#5f2000", "#827287", "#6e8185", "#a64a76", "#db8eb9", "#4fd272", "#b25a3e",
    "#41460f", "#7fa773", "#3b696a", "#8e6c2d", "#c4ac00", "#5f3650", "#804cff", "#c93901", "#f6007a", "#bfa2d0")

DETECTION_DATASETS: Dict[str, DatasetFacts] = {
    "dior": DatasetFacts(
        "dior", "DIOR", _palette(DIOR, COCO_PALETTE_60), None,
        "DIOR: 800 px Google Earth images of 0.5-30 m (no single GSD)", "mAP50", "AP50",
        "DIOR test set, COCO-style AP at IoU 0.5 (MTP paper)",
        {"ViT-B+RVSA": 0.7900, "ViT-L+RVSA": 0.8170, "InternImage-XL": 0.7830}),
    "dior_r": DatasetFacts(
        "dior_r", "DIOR-R", _palette(DIOR, COCO_PALETTE_60), None,
        "DIOR-R: 800 px Google Earth images of 0.5-30 m (no single GSD), oriented boxes", "mAP50", "mAP",
        "DIOR-R test set, VOC mAP at IoU 0.5 (MTP paper)",
        {"ViT-B+RVSA": 0.7129, "ViT-L+RVSA": 0.7454, "InternImage-XL": 0.7217}),
    "fair1m2": DatasetFacts(
        "fair1m2", "FAIR1M-2.0", _palette(FAIR1M2, FAIR1M_PALETTE), None,
        "FAIR1M-2.0: Gaofen / Google Earth images of 0.3-0.8 m, clipped to 800 px, oriented boxes", "mAP50", "mAP",
        "FAIR1M-2.0 test server, mAP at IoU 0.5 (MTP paper)",
        {"ViT-B+RVSA": 0.5192, "ViT-L+RVSA": 0.5300, "InternImage-XL": 0.5093}),
    "dota_v1": DatasetFacts(
        "dota_v1", "DOTA-v1.0", _palette(DOTA_V2[:15], DOTA_PALETTE), None,
        "DOTA-v1.0: aerial images of 0.1-4.5 m (no single GSD) split into 1024 px patches, oriented boxes",
        "mAP50", "mAP", "DOTA-v1.0 test server (no figure in the MTP README)"),
    "dota_v2": DatasetFacts(
        "dota_v2", "DOTA-v2.0", _palette(DOTA_V2, DOTA_PALETTE), None,
        "DOTA-v2.0: aerial and satellite images of 0.1-4.5 m (no single GSD) split into 1024 px patches, "
        "oriented boxes", "mAP50", "mAP", "DOTA-v2.0 test server (no figure in the MTP README)"),
    "xview": DatasetFacts(
        "xview", "xView", _palette(XVIEW, COCO_PALETTE_60), 0.3,
        "xView: WorldView-3 imagery at 0.3 m, clipped to 416 px patches", "mAP50", "AP50",
        "xView held-out patches, COCO-style AP at IoU 0.5 (MTP paper)",
        {"ViT-B+RVSA": 0.1640, "ViT-L+RVSA": 0.1940, "InternImage-XL": 0.1820}),
}
DATASETS.update(DETECTION_DATASETS)

# Official dataset types -> our key. mmpretrain's CustomDataset is told apart by its data_root; DIORDataset
# is DIOR (horizontal) in mmdet and DIOR-R in mmrotate (models.py picks by the detector's box type).
DATASET_TYPES = {
    "LoveDADataset": "loveda", "SpaceNetV1Dataset": "spacenetv1", "LEVIR_CD_Dataset": "levir_cd",
    "WHU_CD_Dataset": "whu_cd", "SVCD_Dataset": "cdd", "OSCD_RGB_CD_Dataset": "oscd_rgb",
    "DIORDataset": "dior", "XviewDataset": "xview", "DOTADataset": "dota_v1", "DOTAv2Dataset": "dota_v2",
    "FAIR1Mv2Dataset": "fair1m2",
}
CUSTOM_ROOT_HINTS = (("eurosat", "eurosat"), ("nwpu", "resisc45"), ("resisc", "resisc45"))
