"""Change pairs in the LEVIR-CD layout (A/ before, B/ after, label/ 0/255 masks; also WHU-CD's and EGY-BCD's),
CDD's (A/, B/, OUT/), CLCD's (time1/, time2/, label/) or GVLM's (one folder per site with im1.png, im2.png,
ref.png), and paired augmentation.

A pair name is a file name in the data root's A/ (`train_1.png`), or `<split>/<file>` for datasets shipped
as one folder per split (`train/00001.jpg` -> root/train/A/00001.jpg; LEVIR-CD's and CDD's releases), and
`<split>/*` stands for every labelled pair of that split folder."""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from training.config import repo_path
from training.data.transforms import normalize, random_color_jitter, random_crop, random_flip_rotate

BEFORE_DIR, AFTER_DIR, LABEL_DIR = "A", "B", "label"
LABEL_DIRS = ("label", "OUT")  # LEVIR-CD / WHU-CD / EGY-BCD, CDD (season-varying)


@dataclass(frozen=True)
class PairLayout:
    """Folder names of a pair folder: before images, after images, the change-mask folder candidates."""
    before: str = BEFORE_DIR
    after: str = AFTER_DIR
    labels: Tuple[str, ...] = LABEL_DIRS
    description: str = "the LEVIR-CD layout A/, B/, label/ (or CDD's A/, B/, OUT/)"


LEVIR = PairLayout()
LAYOUTS = {"levir": LEVIR, "clcd": PairLayout("time1", "time2", ("label",), "CLCD's layout time1/, time2/, label/")}
GVLM_FILES = ("im1.png", "im2.png", "ref.png")   # GVLM: <site>/im1.png (before), im2.png (after), ref.png
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class ChangePair:
    name: str
    before: np.ndarray  # H x W x C uint8 (uint16 DN for 13-band OSCD)
    after: np.ndarray  # H x W x 3 uint8, co-registered with before
    label: np.ndarray  # H x W uint8, 1 = change, 0 = no change


def label_dir(folder: Path, layout: PairLayout = LEVIR) -> str:
    """The change-mask folder of a pair folder: `label` (LEVIR-CD, CLCD) or `OUT` (CDD)."""
    for name in layout.labels:
        if (folder / name).is_dir():
            return name
    return layout.labels[0]


def _split(root: Path, name: str) -> Tuple[Path, str]:
    """Pair name -> (folder holding A/ B/ label|OUT/, file name)."""
    parts = Path(name)
    return (root / parts.parent, parts.name) if len(parts.parts) > 1 else (root, name)


def labelled_pair_names(root, prefix: str = "", layout: PairLayout = LEVIR) -> List[str]:
    """Pair names that have before, after and label files (in root, or in root/prefix)."""
    folder = repo_path(str(root)) / prefix
    labels = folder / label_dir(folder, layout)
    names = sorted(p.name for p in (folder / layout.before).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and (folder / layout.after / p.name).is_file() and (labels / p.name).is_file())
    return [f"{prefix}/{n}" if prefix else n for n in names]


def expand_pair_names(root, names: Sequence[str], layout: PairLayout = LEVIR) -> List[str]:
    """`<split>/*` entries -> every labelled pair of that split folder; other names as given."""
    out = []
    for name in names:
        if Path(name).name == "*":
            prefix = str(Path(name).parent)
            found = labelled_pair_names(root, "" if prefix == "." else prefix, layout)
            if not found:
                raise FileNotFoundError(f"{name!r}: no labelled pair in {repo_path(str(root)) / prefix} "
                                        f"(expected {layout.before}/, {layout.after}/ and {' or '.join(layout.labels)}/)")
            out += found
        else:
            out.append(name)
    return out


def read_change_label(path: Path) -> np.ndarray:
    label = Image.open(path)
    if label.mode not in ("L", "P", "1", "RGB"):
        raise ValueError(f"{path}: expected a single-band change mask, got mode {label.mode}")
    if label.mode == "RGB":  # CDD stores masks as 3 equal bands
        rgb = np.array(label)
        if not (np.abs(rgb.astype(np.int16) - rgb[..., :1]).max() <= 8):
            raise ValueError(f"{path}: an RGB change mask must have 3 equal bands")
    raw = np.array(label.convert("L"))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        # CDD's masks are JPEGs: compression leaves values near 0 and 255; threshold in the middle.
        return (raw > 127).astype(np.uint8)
    values = set(np.unique(raw).tolist())
    # LEVIR-CD codes change as 255; 0/1 masks are accepted too. Anything else is not a binary mask.
    if not (values <= {0, 255} or values <= {0, 1}):
        raise ValueError(f"{path}: a change mask must hold only 0/255 (or 0/1), found values {sorted(values)[:8]}")
    return (raw > 0).astype(np.uint8)


def read_pair(root, name: str, layout: PairLayout = LEVIR) -> ChangePair:
    folder, file_name = _split(repo_path(str(root)), name)
    before_path, after_path, label_path = (folder / d / file_name
                                           for d in (layout.before, layout.after, label_dir(folder, layout)))
    return read_pair_files(name, before_path, after_path, label_path,
                           lambda: ", ".join(labelled_pair_names(root, "", layout)))


def read_pair_files(name: str, before_path: Path, after_path: Path, label_path: Path, labelled=lambda: "") -> ChangePair:
    for path in (before_path, after_path):
        if not path.is_file():
            raise FileNotFoundError(f"change pair {name!r}: {path} does not exist")
    if not label_path.is_file():
        # Unlabelled pairs (LEVIR's test_113 mosaic) cannot be trained or evaluated on.
        raise ValueError(f"change pair {name!r} has no label ({label_path} does not exist); list only labelled "
                         f"pairs in data.train/data.val (labelled here: {labelled()})")
    try:
        before = np.array(Image.open(before_path).convert("RGB"))
        after = np.array(Image.open(after_path).convert("RGB"))
    except OSError as exc:
        raise ValueError(f"change pair {name!r}: cannot read {before_path} / {after_path} ({exc})") from None
    label = read_change_label(label_path)
    if before.shape != after.shape or before.shape[:2] != label.shape:
        raise ValueError(f"change pair {name!r}: before {before.shape[1::-1]}, after {after.shape[1::-1]} and label "
                         f"{label.shape[::-1]} (width, height) must be the same size")
    return ChangePair(name=name, before=before, after=after, label=label)


def load_pairs(root, names: Sequence[str], layout: PairLayout = LEVIR) -> List[ChangePair]:
    root_path = repo_path(str(root))
    names = expand_pair_names(root, names, layout)
    for folder in sorted({_split(root_path, n)[0] for n in names}):
        if not (folder / layout.before).is_dir():
            raise FileNotFoundError(f"change data folder {folder} has no {layout.before}/ (before images); "
                                    f"expected {layout.description}")
    return [read_pair(root, name, layout) for name in names]


def gvlm_sites(root) -> List[str]:
    """Site folders of a GVLM root that hold im1.png, im2.png and ref.png."""
    base = repo_path(str(root))
    return sorted(d.name for d in base.iterdir() if d.is_dir() and all((d / f).is_file() for f in GVLM_FILES))


def load_gvlm(root, names: Sequence[str]) -> List[ChangePair]:
    """GVLM's published layout: one folder per site (`Pinhu_village/`) with im1.png (before), im2.png (after)
    and ref.png (landslide mask, 0/255). Names are site folders, `.txt` lists of them (relative to root) or
    `*` = every site."""
    base = repo_path(str(root))
    if not base.is_dir():
        raise FileNotFoundError(f"GVLM folder {base} does not exist (one folder per site with {', '.join(GVLM_FILES)})")
    sites = []
    for n in names:
        if n == "*":
            sites += gvlm_sites(base)
        elif n.endswith(".txt"):   # GVLM has no official split: site lists, one folder name per line
            listing = base / n
            if not listing.is_file():
                raise FileNotFoundError(f"GVLM site list {listing} does not exist")
            sites += [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        else:
            sites.append(n)
    if not sites:
        raise FileNotFoundError(f"no GVLM site in {base} (folders with {', '.join(GVLM_FILES)})")
    return [read_pair_files(site, *(base / site / f for f in GVLM_FILES), lambda: ", ".join(gvlm_sites(base)))
            for site in sites]


def load_data_pairs(data_cfg, side: str) -> List[ChangePair]:
    """The pairs of data.train or data.val (side 'train' / 'val') in the config's data.format."""
    fmt = getattr(data_cfg, "format", "levir")
    if fmt == "oscd":
        from training.change_detection.oscd import load_cities
        return load_cities(data_cfg, side)
    if fmt == "gvlm":
        return load_gvlm(data_cfg.root, getattr(data_cfg, side))
    return load_pairs(data_cfg.root, getattr(data_cfg, side), LAYOUTS[fmt])


def paired_augment(pair: ChangePair, crop_size: int, color_jitter: float,
                   rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random crop and flip/rotation for both dates and the label; colour jitter per date.

    The dates are stacked into one 6-channel image so the geometric transforms cannot treat them
    differently. Dates are never swapped: that would turn new buildings into demolished ones, a
    different kind of change, and the model is meant to know which image is the earlier one."""
    stacked = np.concatenate([pair.before, pair.after], axis=2)
    stacked, label = random_crop(stacked, pair.label, crop_size, rng)
    stacked, label = random_flip_rotate(stacked, label, rng)
    channels = pair.before.shape[2]
    before = random_color_jitter(np.ascontiguousarray(stacked[..., :channels]), color_jitter, rng)
    after = random_color_jitter(np.ascontiguousarray(stacked[..., channels:]), color_jitter, rng)
    return before, after, np.ascontiguousarray(label)


class PairSampler:
    """Augmented crops of training pairs. A batch depends only on (seed, iteration), so a resumed run
    sees the batches an uninterrupted run would have seen."""

    def __init__(self, pairs: Sequence[ChangePair], crop_size: int, scale: float, mean: Sequence[float],
                 std: Sequence[float], seed: int = 0, color_jitter: float = 0.0):
        if not pairs:
            raise ValueError("no training pairs")
        self.pairs = list(pairs)
        self.crop_size, self.scale, self.mean, self.std = crop_size, scale, mean, std
        self.seed, self.color_jitter = seed, color_jitter

    def batch(self, iteration: int, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, iteration])
        befores, afters, labels = [], [], []
        for _ in range(batch_size):
            pair = self.pairs[int(rng.integers(0, len(self.pairs)))]
            before, after, label = paired_augment(pair, self.crop_size, self.color_jitter, rng)
            befores.append(normalize(before, self.scale, self.mean, self.std))
            afters.append(normalize(after, self.scale, self.mean, self.std))
            labels.append(torch.from_numpy(label).long())
        return torch.stack(befores), torch.stack(afters), torch.stack(labels)

    def change_fraction(self) -> float:
        return float(np.mean([p.label.mean() for p in self.pairs]))
