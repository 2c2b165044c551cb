"""Land-cover extraction instructions: a small deterministic grammar, no language model (docs/contract.md §3).

"extract water bodies larger than half a hectare and vegetation with NDVI above 0.6" becomes two targets:
water (area > 5000 m²) and vegetation (mean NDVI > 0.6). A target names a land cover (with synonyms); a
clause may add size limits, index limits and a score limit; clauses are joined by "and", commas or
semicolons. A word the grammar does not know is refused with a message listing what it understands.
The same module words each polygon's explanation from its measured index means ("NDWI 0.42 (high) and NIR
reflectance 0.03 (low): open water").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from backend.errors import BackendError
from backend.spectral import INDICES

MAX_INSTRUCTION_CHARS = 1000


@dataclass(frozen=True)
class LandCover:
    key: str                       # the class name models use
    phrase: str                    # what an explanation calls it
    words: tuple[str, ...]         # phrases that name it in an instruction
    cues: tuple[tuple[str, str], ...]          # (quantity, level expected) explaining it, with SWIR bands
    cues_visible: tuple[tuple[str, str], ...]  # the same without SWIR bands (NAIP, PlanetScope)


LAND_COVERS = {c.key: c for c in (
    LandCover("water", "open water",
              ("water bodies", "water body", "waterbodies", "open water", "surface water", "water", "lakes", "lake",
               "ponds", "pond", "rivers", "river", "reservoirs", "reservoir", "streams", "stream", "sea"),
              (("ndwi", "high"), ("nir", "low")), (("ndwi", "high"), ("nir", "low"))),
    LandCover("vegetation", "vegetation",
              ("vegetation", "vegetated areas", "vegetated area", "green areas", "green area", "greenery", "plants",
               "tree cover", "trees", "forests", "forest", "woodland", "woods", "grassland", "grass", "meadows",
               "meadow", "cropland", "crops", "shrubland", "shrubs", "cultivated land"),
              (("ndvi", "high"), ("nir", "high")), (("ndvi", "high"), ("nir", "high"))),
    LandCover("built-up", "built-up surface",
              ("built-up areas", "built-up area", "built up areas", "built up area", "built-up", "built up",
               "buildings", "building", "houses", "roads", "road", "streets", "urban areas", "urban area", "urban",
               "settlements", "settlement", "artificial surfaces", "artificial surface", "impervious surfaces",
               "impervious surface", "paved areas", "infrastructure"),
              (("ndbi", "high"), ("ndvi", "low")), (("ndvi", "low"), ("visible", "high"))),
    LandCover("bare soil", "bare soil",
              ("bare soil", "bare ground", "bare land", "bare earth", "barren land", "barren", "exposed soil",
               "fallow land", "fallow fields", "fallow", "bare fields", "soil", "bare"),
              (("bsi", "high"), ("ndvi", "low")), (("ndvi", "low"), ("red", "high"))),
)}
EVERYTHING = ("all land cover", "land cover", "everything", "all classes")
# Quantities an explanation can cite: the indices and mean reflectance of a role (or of the visible bands).
REFLECTANCE_QUANTITIES = {"nir": ("NIR reflectance", ("nir",)), "red": ("red reflectance", ("red",)),
                          "visible": ("visible reflectance", ("blue", "green", "red"))}
# (below: low, from here: high); between the two: moderate. Index thresholds follow the usual reading of each
# index (NDWI, MNDWI > 0 water; NDBI > 0 built-up; BSI > 0 bare soil; NDVI > 0.5 dense vegetation).
LEVELS = {"ndvi": (0.2, 0.5), "ndwi": (-0.3, 0.0), "mndwi": (-0.3, 0.0), "ndbi": (-0.2, 0.0), "bsi": (-0.2, 0.0),
          "nir": (0.1, 0.25), "red": (0.05, 0.12), "visible": (0.05, 0.12)}
# Words that carry no meaning here ("extract all the lakes in this image please").
FILLER = set("""extract find show map detect get give select delineate outline mark identify locate highlight segment
list return me all the a an any every each of in on from this that these those image raster scene layer please
some with where whose which are is be area areas region regions zone zones patch patches polygon polygons feature
features object objects only just there here its their having has have""".split())
UNITS = {"m2": 1.0, "ha": 10_000.0, "km2": 1_000_000.0, "acre": 4046.8564224, "px": None}
WORD_NUMBERS = {"a quarter of a": 0.25, "a quarter of an": 0.25, "quarter of a": 0.25, "half a": 0.5,
                "half an": 0.5, "a half": 0.5, "a": 1.0, "an": 1.0, "one": 1.0, "two": 2.0, "three": 3.0,
                "four": 4.0, "five": 5.0, "ten": 10.0, "a hundred": 100.0, "a thousand": 1000.0}
_NUMBER = r"(-?\d+(?:[.,]\d+)*|" + "|".join(sorted((re.escape(w) for w in WORD_NUMBERS), key=len, reverse=True)) + ")"
_MORE = r"(?:larger|bigger|greater|more|higher|wider) than|over|above|at least|exceeding|>=|>"
_LESS = r"(?:smaller|less|lower) than|under|below|at most|up to|<=|<"
_AREA = re.compile(rf"(?P<op>{_MORE}|{_LESS})\s*(?:an area of\s*)?{_NUMBER}\s*(?P<unit>m2|ha|km2|acre|px)\b")
_LIMIT = re.compile(rf"\b(?P<what>{'|'.join(INDICES)}|score|confidence|probability)\b\s*(?:is|of|value|values)?\s*"
                    rf"(?P<op>{_MORE}|{_LESS})\s*(?P<value>-?\d+(?:\.\d+)?|-?\.\d+)")


@dataclass
class Target:
    """One thing the instruction asks for: a land cover and the limits its polygons must meet."""

    cover: str                  # LAND_COVERS key
    phrase: str                 # the words that named it
    min_area: float | None = None  # m² (or pixels when area_unit is "px")
    max_area: float | None = None
    area_unit: str = "m2"
    index_limits: dict[str, tuple[float, float]] = field(default_factory=dict)
    min_score: float = 0.0
    max_score: float = 1.0
    class_ids: tuple[int, ...] = ()  # the model's classes of this land cover

    def indices_needed(self) -> list[str]:
        return list(self.index_limits)

    def describe(self) -> str:
        parts = [self.cover]
        unit = "px" if self.area_unit == "px" else "m²"
        if self.min_area is not None:
            parts.append(f"area > {self.min_area:g} {unit}")
        if self.max_area is not None:
            parts.append(f"area < {self.max_area:g} {unit}")
        parts += [f"{INDICES[k].label} in [{lo:g}, {hi:g}]" for k, (lo, hi) in self.index_limits.items()]
        if self.min_score > 0 or self.max_score < 1:
            parts.append(f"score in [{self.min_score:g}, {self.max_score:g}]")
        return ", ".join(parts)


def vocabulary() -> str:
    """What the grammar understands, for messages and the docs."""
    covers = "; ".join(f"{c.key} ({', '.join(c.words[:6])}, ...)" for c in LAND_COVERS.values())
    return (f"targets: {covers}; 'everything' for all of them. Sizes: 'larger than half a hectare', 'smaller than "
            f"2000 m2', 'at least 3 ha' (units m2, ha, km2, acres, pixels). Index limits: 'NDVI above 0.5', 'NDWI > 0.2' "
            f"({', '.join(i.label for i in INDICES.values())}). 'score above 0.8'. Several targets joined with 'and', "
            "commas or semicolons, each followed by its own limits. This is a fixed grammar, not a language model")


def _normalise(text: str) -> str:
    text = text.lower().replace("≥", ">=").replace("≤", "<=").replace("²", "2")
    replacements = [(r"square (?:met(?:re|er)s?|m)\b|sq\.? ?m\b|\bm\^2|\bsqm\b", " m2 "),
                    (r"square kilomet(?:re|er)s?\b|\bkm\^2", " km2 "), (r"\bhectares?\b|\bhas\b", " ha "),
                    (r"\bacres?\b", " acre "), (r"\bpixels?\b", " px "), (r"\bmet(?:re|er)s? squared\b", " m2 "),
                    (r"(\d)(m2|ha|km2|px)\b", r"\1 \2")]
    for pattern, replacement in replacements:
        text = re.sub(pattern, replacement, text)
    return re.sub(r"\s+", " ", text).strip()


def _amount(text: str) -> float:
    if text in WORD_NUMBERS:
        return WORD_NUMBERS[text]
    # "5,000" is five thousand, "0,5" a half (a decimal comma): a comma before exactly three digits groups them.
    cleaned = re.sub(r",(?=\d{3}\b)", "", text).replace(",", ".")
    return float(cleaned)


def _covers_in(text: str) -> tuple[list[tuple[str, str]], str]:
    """[(cover key, words)] named in `text` (longest phrases first), and the text left over."""
    found: list[tuple[int, str, str]] = []
    phrases = sorted(((w, c.key) for c in LAND_COVERS.values() for w in c.words), key=lambda p: -len(p[0]))
    phrases = [(w, "*") for w in EVERYTHING] + phrases
    rest = f" {text} "
    for words, key in phrases:
        while True:
            match = re.search(rf"(?<![\w-]){re.escape(words)}(?![\w-])", rest)
            if not match:
                break
            found.append((match.start(), key, words))
            rest = rest[:match.start()] + " " * len(words) + rest[match.end():]
    found.sort()
    return [(key, words) for _, key, words in found], rest


def parse_instruction(text: str) -> list[Target]:
    """The targets of an instruction, or a BackendError listing what the grammar understands."""
    if not isinstance(text, str) or not text.strip():
        raise BackendError(f"The instruction is empty. Say what to extract; the grammar understands {vocabulary()}.")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise BackendError(f"The instruction has {len(text)} characters; at most {MAX_INSTRUCTION_CHARS} are read.")
    normal = _normalise(text)
    clauses = [c.strip() for c in re.split(r"(?<!\d),|,(?!\d)|;|\band\b|\bas well as\b|\bplus\b|&", normal) if c.strip()]
    targets: list[Target] = []
    unknown: list[str] = []
    for clause in clauses:
        limits: list[tuple[str, str, float, str]] = []  # (kind, op, value, unit)
        for match in _AREA.finditer(clause):
            limits.append(("area", match["op"], _amount(match.group(2)), match["unit"]))
        clause = _AREA.sub(" ", clause)
        for match in _LIMIT.finditer(clause):
            what = match["what"]
            limits.append(("score" if what in ("score", "confidence", "probability") else what, match["op"],
                           float(match["value"]), ""))
        clause = _LIMIT.sub(" ", clause)
        covers, rest = _covers_in(clause)
        leftover = [w for w in re.findall(r"[\w'>=<.-]+", rest) if w not in FILLER]
        unknown += leftover
        new: list[Target] = []
        for key, words in covers:
            keys = list(LAND_COVERS) if key == "*" else [key]
            new += [Target(k, words) for k in keys]
        if not new:
            if not targets:
                if limits and not leftover:
                    raise BackendError(f"The instruction '{text[:200]}' sets limits before naming what to extract. "
                                       f"Name a target first; the grammar understands {vocabulary()}.")
                continue
            new = [targets[-1]]  # "water, larger than 1 ha": limits of the target before
        else:
            targets += new
        for target in new:
            for kind, op, value, unit in limits:
                _apply(target, kind, op, value, unit, text)
    if unknown:
        shown = ", ".join(f"'{w}'" for w in dict.fromkeys(unknown))
        raise BackendError(f"The instruction '{text[:200]}' has words the grammar does not understand: {shown}. It "
                           f"understands {vocabulary()}.")
    if not targets:
        raise BackendError(f"The instruction '{text[:200]}' names nothing to extract. The grammar understands "
                           f"{vocabulary()}.")
    return targets


def _apply(target: Target, kind: str, op: str, value: float, unit: str, text: str) -> None:
    more = bool(re.fullmatch(_MORE, op))
    if kind == "area":
        if value < 0 or not math.isfinite(value):
            raise BackendError(f"The size {value:g} in '{text[:200]}' is not a positive area.")
        target.area_unit = "px" if unit == "px" else "m2"
        area = value if unit == "px" else value * UNITS[unit]
        if more:
            target.min_area = area
        else:
            target.max_area = area
        return
    if kind == "score":
        if not 0 <= value <= 1:
            raise BackendError(f"A score limit is a number from 0 to 1, got {value:g} in '{text[:200]}'.")
        if more:
            target.min_score = value
        else:
            target.max_score = value
        return
    if not -1 <= value <= 1:
        raise BackendError(f"{INDICES[kind].label} lies between -1 and 1; the limit {value:g} in '{text[:200]}' "
                           "cannot be met.")
    lo, hi = target.index_limits.get(kind, (-1.0, 1.0))
    target.index_limits[kind] = (max(lo, value), hi) if more else (lo, min(hi, value))


def cover_of_class(name: str) -> str | None:
    """The land cover a model class name stands for (its key or one of its words), else None."""
    text = _normalise(name).replace("_", " ")
    for cover in LAND_COVERS.values():
        if text == cover.key or text in cover.words:
            return cover.key
    return None


def bind_to_model(targets: list[Target], class_names: list[str], model_id: str) -> list[Target]:
    """Each target with the model's classes of its land cover; a cover the model has no class for is refused
    (an instruction of 'everything' keeps only the covers it has)."""
    by_cover: dict[str, list[int]] = {}
    for i, name in enumerate(class_names):
        cover = cover_of_class(name)
        if cover:
            by_cover.setdefault(cover, []).append(i)
    everything = all(t.phrase in EVERYTHING for t in targets)
    bound = []
    for target in targets:
        ids = by_cover.get(target.cover)
        if not ids:
            if target.phrase in EVERYTHING:
                continue
            has = ", ".join(by_cover) or "no land cover the grammar knows"
            raise BackendError(f"Model '{model_id}' has no class for {target.cover} ('{target.phrase}'); it extracts "
                               f"{has}. Choose a land-cover model with that class, or ask for what it has.")
        target.class_ids = tuple(ids)
        bound.append(target)
    if everything and not bound:
        raise BackendError(f"Model '{model_id}' has no class the grammar knows ({', '.join(class_names)}).")
    return bound


# ---------------------------------------------------------------------------------------------- explanations

def level(quantity: str, value: float) -> str:
    low, high = LEVELS[quantity]
    return "low" if value < low else "moderate" if value < high else "high"


def quantity_label(quantity: str) -> str:
    return INDICES[quantity].label if quantity in INDICES else REFLECTANCE_QUANTITIES[quantity][0]


def explain(cover: str, means: dict[str, float | None], score: float | None, has_swir: bool) -> str:
    """"NDWI 0.42 (high) and NIR reflectance 0.03 (low): open water (model score 0.97)": the cues of the land
    cover with the polygon's measured means and their level; when a cue disagrees with the class, it says so."""
    land = LAND_COVERS[cover]
    cues = land.cues if has_swir else land.cues_visible
    said, agree = [], True
    for quantity, expected in cues:
        value = means.get(quantity)
        if value is None or not math.isfinite(value):
            continue
        found = level(quantity, value)
        agree &= found == expected or (found == "moderate" and expected != "moderate" and quantity in ("nir", "red",
                                                                                                       "visible"))
        said.append(f"{quantity_label(quantity)} {value:.2f} ({found})")
    text = (" and ".join(said) + ": " if said else "") + land.phrase
    if said and not agree:
        text += " by the model, although the spectral cues do not point to it"
    if score is not None and math.isfinite(score):
        text += f" (model score {score:.2f})"
    return text
