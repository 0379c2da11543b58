"""The synthetic hashtag world: a small YFCC100M-shaped corpus whose hashtags name what is in the picture.

The world exists so that tests, benchmarks and the demo run with no downloads and still teach
something real. It is written in the exact on-disk form of real data, so it goes through the same
readers and shard builder:

* ``yfcc100m_dataset.tsv``: the 25-column YFCC100M metadata (no header, tab separated, user tags
  URL-encoded with ``quote_plus`` and comma separated), with realistic other columns, a few videos
  (marker 1, no image) and a few untagged photos;
* ``data/images/<h[:3]>/<h[3:6]>/<h>.jpg``: the public-mirror image layout, h = md5(download url);
* ``downstream/{train,val}/<class>/*.jpg``: a small labelled transfer task in ImageFolder layout;
* ``truth.jsonl``: per photo, the concepts really drawn and which tags are noise (for checks only;
  no stage of the pipeline reads it);
* ``world.json``: everything about how the world was made (concepts, synonyms, Zipf exponent,
  frequencies, noise, downstream classes, seed, sizes).

A *concept* is a shape with a surface texture ("striped circle"); colour, size, rotation, position,
background and clutter are nuisances. Pictures hold a few objects whose concepts are drawn from a
Zipf law; hashtags name them through synonyms and spelling variants, miss some, add popular
non-visual tags and, at a configurable rate, replace a concept tag with a wrong one. The downstream
classes are a grid of shapes x textures (so every class shares its shape with some classes and its
texture with others) placed at evenly spaced Zipf ranks, the rarest concept included; each
downstream picture shows one large object of its class among smaller distractor objects of the other
concepts and clutter. From a few labels that conjunction is hard to learn; features pretrained on
the hashtags already separate it. See docs/synthetic.md.

Every picture and row depends only on (seed, its index), never on the worker count, so outputs are
byte-identical for any ``workers``. Scenes (images) and tags use separate random streams: the same
seed with a different label-noise rate gives the same images with different tags.
"""
from __future__ import annotations

import calendar
import colorsys
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import quote_plus

import numpy as np
from PIL import Image, ImageDraw

from data.atomic_write import atomic_open, write_json
from data.errors import UserError
from data.vocab.tags import normalize

FORMAT = "openwsl-synthetic-world"
VERSION = 1
METADATA_NAME = "yfcc100m_dataset.tsv"
WORLD_JSON_NAME = "world.json"
TRUTH_NAME = "truth.jsonl"

# --- the concept vocabulary -------------------------------------------------------------------

# Each shape and texture has a primary name and synonyms; a concept's tag forms are every
# "<texture word> <shape word>" pair, so '#stripycircle' and 'Striped Disc' name the same concept.
SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square", "block"),
    "triangle": ("triangle", "delta"),
    "star": ("star", "pentagram"),
    "cross": ("cross", "plus"),
    "crescent": ("crescent", "moon"),
    "heart": ("heart", "love heart"),
    "arrow": ("arrow", "pointer"),
}
TEXTURES: dict[str, tuple[str, ...]] = {
    "solid": ("solid", "plain"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "polka dot"),
    "checkered": ("checkered", "chequered"),
    "wavy": ("wavy", "rippled"),
    "gridded": ("gridded", "lattice"),
}

# Popular tags that say nothing about the picture: most are on data/stoplist.txt, the rest
# ('summer', 'travel', city names) survive canonicalisation but carry no visual signal here.
NON_VISUAL_TAGS = ("photooftheday", "love", "summer", "travel", "friends", "instagood", "beautiful",
                   "family", "vacation", "nofilter", "happy", "weekend", "holiday", "fun", "art",
                   "tbt", "me", "旅行", "picoftheday", "nature")
CITIES = (("london", 51.507, -0.128), ("paris", 48.857, 2.352), ("new york", 40.713, -74.006),
          ("tokyo", 35.690, 139.692), ("東京", 35.690, 139.692), ("berlin", 52.520, 13.405),
          ("san francisco", 37.775, -122.419), ("sydney", -33.869, 151.209),
          ("toronto", 43.653, -79.383), ("barcelona", 41.385, 2.173))
DEVICES = ("Canon EOS 5D Mark II", "Canon PowerShot SD1100 IS", "NIKON D90", "NIKON D7000",
           "Apple iPhone 4S", "Apple iPhone 5", "SONY DSC-W55", "Panasonic DMC-TZ5",
           "FUJIFILM FinePix S5600", "OLYMPUS E-510", "samsung GT-I9300")
LICENSES = (("Attribution License", "http://creativecommons.org/licenses/by/2.0/"),
            ("Attribution-ShareAlike License", "http://creativecommons.org/licenses/by-sa/2.0/"),
            ("Attribution-NoDerivs License", "http://creativecommons.org/licenses/by-nd/2.0/"),
            ("Attribution-NonCommercial License", "http://creativecommons.org/licenses/by-nc/2.0/"),
            ("Attribution-NonCommercial-ShareAlike License",
             "http://creativecommons.org/licenses/by-nc-sa/2.0/"),
            ("Attribution-NonCommercial-NoDerivs License",
             "http://creativecommons.org/licenses/by-nc-nd/2.0/"))
_SYLLABLES = ("ka", "lo", "mi", "ra", "tes", "on", "bel", "ju", "na", "vik", "sa", "dor", "el", "pi")

# Independent random streams, keyed with the seed and an index: scene content never depends on
# the tag settings, and no draw depends on which worker made it.
_SCENE, _TAGS, _META, _USER, _DOWNSTREAM = range(5)

# Realism rates of the metadata (fractions of rows).
VIDEO_RATE = 0.005
UNTAGGED_RATE = 0.02
GEOTAGGED_RATE = 0.4


@dataclass(frozen=True)
class Concept:
    """A visual concept: a shape with a texture, its Zipf rank (0 = most frequent) and probability."""

    name: str
    shape: str
    texture: str
    rank: int
    probability: float

    @property
    def forms(self) -> list[str]:
        """Every tag form naming the concept, the primary name first."""
        return [f"{t} {s}" for t in TEXTURES[self.texture] for s in SHAPES[self.shape]]

    @property
    def folder(self) -> str:
        return self.name.replace(" ", "_")


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines the world's content; equal specs give byte-identical worlds."""

    images: int = 20000
    size_range: tuple[int, int] = (64, 96)
    seed: int = 0
    label_noise: float = 0.0
    missing_rate: float = 0.2
    zipf_exponent: float = 1.0
    concepts: int = len(SHAPES) * len(TEXTURES)
    objects_mean: float = 1.6
    downstream_shapes: int = 4
    downstream_textures: int = 3
    downstream_train_per_class: int = 20
    downstream_val_per_class: int = 50
    jpeg_quality: int = 90

    def validate(self) -> None:
        lo, hi = self.size_range
        checks = [
            (self.images >= 1, f"--images must be >= 1, got {self.images}"),
            (32 <= lo <= hi <= 1024, f"--size-range must satisfy 32 <= MIN <= MAX <= 1024, got {lo} {hi}"),
            (0.0 <= self.label_noise <= 1.0, f"--label-noise must be in [0, 1], got {self.label_noise}"),
            (0.0 <= self.missing_rate < 1.0, f"--missing-rate must be in [0, 1), got {self.missing_rate}"),
            (0.0 <= self.zipf_exponent <= 4.0, f"--zipf must be in [0, 4], got {self.zipf_exponent}"),
            (1 <= self.downstream_shapes <= len(SHAPES) and 1 <= self.downstream_textures <= len(TEXTURES),
             f"the downstream grid must be at most {len(SHAPES)} shapes x {len(TEXTURES)} textures"),
            (self.downstream_classes + 1 <= self.concepts <= len(SHAPES) * len(TEXTURES),
             f"--concepts must be in [{self.downstream_classes + 1}, {len(SHAPES) * len(TEXTURES)}] "
             f"(the downstream classes plus at least one distractor concept), got {self.concepts}"),
            (self.downstream_train_per_class >= 1 and self.downstream_val_per_class >= 1,
             "--downstream-train and --downstream-val must be >= 1"),
            (0.0 < self.objects_mean <= 6.0, f"objects_mean must be in (0, 6], got {self.objects_mean}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    @property
    def downstream_classes(self) -> int:
        return self.downstream_shapes * self.downstream_textures


@dataclass
class World:
    """The concept table: which concepts exist, their frequencies, and the downstream classes."""

    spec: WorldSpec
    concepts: list[Concept]
    downstream: list[str]  # concept names of the downstream classes, in class order

    @classmethod
    def build(cls, spec: WorldSpec) -> "World":
        spec.validate()
        rng = np.random.default_rng([spec.seed, _USER, 1 << 30])
        shapes = [str(s) for s in rng.permutation(list(SHAPES))]
        textures = [str(t) for t in rng.permutation(list(TEXTURES))]
        grid = [(s, t) for s in shapes[:spec.downstream_shapes] for t in textures[:spec.downstream_textures]]
        others = [(s, t) for s in shapes for t in textures if (s, t) not in grid]
        others = [others[i] for i in rng.permutation(len(others))][:spec.concepts - len(grid)]
        ranks = _downstream_ranks(len(grid), spec.concepts)
        order: list[tuple[str, str] | None] = [None] * spec.concepts
        for rank, pair in zip(ranks, grid):
            order[rank] = pair
        fill = iter(others)
        order = [pair if pair is not None else next(fill) for pair in order]
        weights = np.arange(1, spec.concepts + 1, dtype=np.float64) ** -spec.zipf_exponent
        probs = weights / weights.sum()
        concepts = [Concept(f"{t} {s}", s, t, rank, float(probs[rank]))
                    for rank, (s, t) in enumerate(order)]
        by_pair = {(c.shape, c.texture): c.name for c in concepts}
        return cls(spec, concepts, [by_pair[pair] for pair in grid])

    @functools.cached_property
    def probabilities(self) -> np.ndarray:
        return np.array([c.probability for c in self.concepts])

    @functools.cached_property
    def by_name(self) -> dict[str, Concept]:
        return {c.name: c for c in self.concepts}

    def tag_index(self) -> dict[str, str]:
        """Canonical tag form -> concept name, for every form of every concept."""
        return {normalize(form): c.name for c in self.concepts for form in c.forms}

    def to_dict(self) -> dict[str, Any]:
        spec = asdict(self.spec)
        spec["size_range"] = list(self.spec.size_range)
        by_name = self.by_name
        return {
            "format": FORMAT,
            "version": VERSION,
            "spec": spec,
            "seed": self.spec.seed,
            "zipf_exponent": self.spec.zipf_exponent,
            "label_noise": self.spec.label_noise,
            "missing_rate": self.spec.missing_rate,
            "shapes": {k: list(v) for k, v in SHAPES.items()},
            "textures": {k: list(v) for k, v in TEXTURES.items()},
            "concepts": [{**asdict(c), "forms": c.forms, "canonical": [normalize(f) for f in c.forms],
                          "downstream": c.name in self.downstream} for c in self.concepts],
            "non_visual_tags": list(NON_VISUAL_TAGS) + [city for city, _, _ in CITIES],
            "downstream": {
                "classes": [{"index": i, "folder": by_name[n].folder, "concept": n,
                             "rank": by_name[n].rank, "probability": by_name[n].probability}
                            for i, n in enumerate(self.downstream)],
                "train_per_class": self.spec.downstream_train_per_class,
                "val_per_class": self.spec.downstream_val_per_class,
            },
        }

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "World":
        spec = dict(obj["spec"])
        spec["size_range"] = tuple(spec["size_range"])
        return cls.build(WorldSpec(**spec))


def _downstream_ranks(n_classes: int, n_concepts: int) -> list[int]:
    """Evenly spaced Zipf ranks from the most frequent to the rarest concept."""
    if n_classes == 1:
        return [n_concepts - 1]
    return [round(i * (n_concepts - 1) / (n_classes - 1)) for i in range(n_classes)]


def load_world(path: str | os.PathLike) -> World:
    """Rebuild the :class:`World` described by a world.json (or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / WORLD_JSON_NAME
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read synthetic world description {path}: {err}; "
                        "run scripts/make_synthetic.py first") from None
    if obj.get("format") != FORMAT:
        raise UserError(f"{path} is not a synthetic world description (format {obj.get('format')!r})")
    return World.from_dict(obj)


# --- drawing ------------------------------------------------------------------------------------


def _shape_polygon(shape: str, n_points: int = 40) -> np.ndarray:
    """Outline of a shape in unit coordinates (centred, radius about 1), as (N, 2) points."""
    t = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    if shape == "circle":
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        return np.array([[-0.85, -0.85], [0.85, -0.85], [0.85, 0.85], [-0.85, 0.85]])
    if shape == "triangle":
        a = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(a), np.sin(a) + 0.15], 1)
    if shape == "star":
        a = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(a), r * np.sin(a) + 0.08], 1)
    if shape == "cross":
        w = 0.33
        return np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                         [-w, w], [-1, w], [-1, -w], [-w, -w]])
    if shape == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], 1) / 16.5
    if shape == "arrow":
        return np.array([[-1, -0.3], [0.1, -0.3], [0.1, -0.75], [1, 0], [0.1, 0.75], [0.1, 0.3], [-1, 0.3]])
    if shape == "crescent":
        outer = np.stack([np.cos(t), np.sin(t)], 1)
        inner = np.stack([0.45 + 0.8 * np.cos(t[::-1]), 0.8 * np.sin(t[::-1])], 1)
        keep_outer = np.linalg.norm(outer - [0.45, 0], axis=1) > 0.8
        keep_inner = np.linalg.norm(inner, axis=1) < 1
        return np.concatenate([_roll_to_gap(outer, keep_outer), _roll_to_gap(inner, keep_inner)])
    raise ValueError(f"unknown shape {shape!r}")


def _roll_to_gap(points: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The kept points of a closed outline as one contiguous run (starting after the dropped arc)."""
    start = int(np.argmax(~keep & np.roll(keep, -1))) + 1
    rolled, kept = np.roll(points, -start, 0), np.roll(keep, -start)
    return rolled[kept]


_POLYGONS = {shape: _shape_polygon(shape) for shape in SHAPES}


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (size, size) mask of a randomly rotated, slightly stretched shape."""
    angle = rng.uniform(-0.45, 0.45)
    stretch = rng.uniform(0.85, 1.15)
    c, s = math.cos(angle), math.sin(angle)
    pts = _POLYGONS[shape] * [stretch, 1 / stretch]
    pts = pts @ np.array([[c, s], [-s, c]])
    half = (size - 1) / 2
    pts = pts / max(1.0, np.abs(pts).max()) * half + half
    mask = Image.new("L", (size, size))
    ImageDraw.Draw(mask).polygon([tuple(p) for p in pts.tolist()], fill=255)
    return np.asarray(mask) > 127


def _texture(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (size, size) pattern; the period scales with the object so it survives resizing."""
    if texture == "solid":
        return np.zeros((size, size), bool)
    period = max(4.0, size / rng.uniform(3.0, 4.5))
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    u = x * math.cos(angle) + y * math.sin(angle) + rng.uniform(0, period)
    v = -x * math.sin(angle) + y * math.cos(angle) + rng.uniform(0, period)
    if texture == "striped":
        return (u / period) % 1 < 0.5
    if texture == "wavy":
        return ((u + 0.35 * period * np.sin(2 * np.pi * v / (2.2 * period))) / period) % 1 < 0.5
    if texture == "checkered":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    if texture == "dotted":
        du, dv = u % period - period / 2, v % period - period / 2
        return du * du + dv * dv < (0.3 * period) ** 2
    if texture == "gridded":
        return (u % period < period * 0.3) | (v % period < period * 0.3)
    raise ValueError(f"unknown texture {texture!r}")


def _random_colour(rng: np.random.Generator, saturation: tuple[float, float] = (0.45, 1.0),
                   value: tuple[float, float] = (0.35, 1.0)) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb, np.float32) * 255


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _object_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A body colour and a pattern colour of clearly different brightness, so the texture stays
    visible after JPEG chroma subsampling and in grayscale."""
    body = _random_colour(rng)
    while True:
        pattern = _random_colour(rng, (0.0, 1.0), (0.0, 1.0))
        if abs(float(_LUMA @ (pattern - body))) > 90:
            return body, pattern


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A muted gradient with low-frequency blotches, so no background looks like a solid object."""
    a = _random_colour(rng, (0.0, 0.5), (0.2, 0.95))
    b = _random_colour(rng, (0.0, 0.5), (0.2, 0.95))
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (x * math.cos(angle) + y * math.sin(angle)) / max(height, width)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    coarse = rng.uniform(-1, 1, (4, 4)).astype(np.float32)
    blotch = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BILINEAR))
    img = a + (b - a) * ramp[..., None] + 18 * blotch[..., None]
    return img + rng.normal(0, 4, (height, width, 1)).astype(np.float32)


def _paste_object(img: np.ndarray, concept: Concept, size: int, rng: np.random.Generator) -> None:
    height, width = img.shape[:2]
    size = min(size, height, width)
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    mask = _shape_mask(concept.shape, size, rng)
    pattern = _texture(concept.texture, size, rng)
    body, ink = _object_colours(rng)
    patch = np.where(pattern[..., None], ink, body)
    region = img[top:top + size, left:left + size]
    region[mask] = patch[mask]


def _draw_clutter(image: Image.Image, rng: np.random.Generator, count: int) -> None:
    """Thin lines and arcs: structure that is not any concept."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for _ in range(count):
        colour = tuple(int(c) for c in _random_colour(rng, (0, 1), (0, 1)))
        x0, x1 = sorted(rng.uniform(0, w, 2).tolist())
        y0, y1 = sorted(rng.uniform(0, h, 2).tolist())
        if rng.uniform() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)))
        else:
            start = float(rng.uniform(0, 360))
            draw.arc([x0, y0, x1 + 4, y1 + 4], start, start + float(rng.uniform(60, 200)),
                     fill=colour, width=1)


def render(world: World, objects: Sequence[tuple[str, float]], height: int, width: int,
           rng: np.random.Generator, clutter: int, quality: int) -> bytes:
    """JPEG bytes of a scene: background, the objects (concept name, size as a fraction of the
    shorter side) drawn in order so later ones occlude earlier ones, then clutter on top."""
    img = _background(height, width, rng)
    short = min(height, width)
    for name, fraction in objects:
        _paste_object(img, world.by_name[name], max(12, int(fraction * short)), rng)
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    _draw_clutter(image, rng, clutter)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


# --- one photo: scene, tags, metadata row -------------------------------------------------------


@dataclass
class Photo:
    """What one corpus row produced: its TSV line, its ground truth, and tag statistics."""

    line: str
    truth: dict[str, Any]
    concepts_present: list[str]
    concepts_tagged: list[str]
    noisy_tags: int
    concept_tags: int
    video: bool
    untagged: bool


def sample_scene(world: World, index: int) -> tuple[np.random.Generator, list[str], list[float]]:
    """Photo ``index``'s content: its scene random stream (for drawing, positioned after the
    content draws), the concepts of its objects (Zipf marginal, repeats allowed) and their sizes
    as fractions of the shorter side, largest first."""
    rng = np.random.default_rng([world.spec.seed, _SCENE, index])
    count = 1 + int(rng.poisson(world.spec.objects_mean - 1)) if world.spec.objects_mean > 1 else 1
    count = min(count, 4)
    picks = rng.choice(len(world.concepts), size=count, p=world.probabilities)
    names = [world.concepts[i].name for i in picks]
    sizes = sorted(rng.uniform(0.4, 0.75, count).tolist(), reverse=True)
    return rng, names, sizes


def _variant(form: str, rng: np.random.Generator) -> str:
    """One of the spellings users write: 'striped circle', 'Striped Circle', 'striped_circle',
    '#stripedcircle', 'StripedCircle', 'striped-circle'."""
    words = form.split()
    style = int(rng.integers(0, 6))
    if style == 0:
        return form
    if style == 1:
        return " ".join(w.capitalize() for w in words)
    if style == 2:
        return "_".join(words)
    if style == 3:
        return "#" + "".join(words)
    if style == 4:
        return "".join(w.capitalize() for w in words)
    return "-".join(words)


def _concept_tags(world: World, present: list[str], rng: np.random.Generator
                  ) -> tuple[list[str], list[str], int]:
    """Tag each distinct present concept unless missed; replace a ``label_noise`` fraction with a
    concept drawn from the marginal that is not in the picture. Returns (tags, concepts named, noisy)."""
    distinct = list(dict.fromkeys(present))
    missed = rng.uniform(size=len(distinct)) < world.spec.missing_rate
    flip = rng.uniform(size=len(distinct)) < world.spec.label_noise
    named: list[str] = []
    noisy = 0
    for name, miss, noise in zip(distinct, missed, flip):
        if miss:
            continue
        if noise and len(distinct) < len(world.concepts):
            while name in distinct or name in named:
                name = world.concepts[int(rng.choice(len(world.concepts), p=world.probabilities))].name
            noisy += 1
        named.append(name)
    tags = []
    for name in named:
        forms = world.by_name[name].forms
        form = forms[0] if rng.uniform() < 0.7 else forms[int(rng.integers(1, len(forms)))]
        tags.append(_variant(form, rng))
    return tags, named, noisy


@functools.lru_cache(maxsize=4096)
def _user(seed: int, user: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, _USER, user])
    nickname = "".join(rng.choice(_SYLLABLES, int(rng.integers(2, 4))))
    if rng.uniform() < 0.3:
        nickname += str(int(rng.integers(1, 99)))
    return {"nsid": f"{int(rng.integers(10_000_000, 99_999_999))}@N0{int(rng.integers(0, 8))}",
            "nickname": nickname, "city": int(rng.integers(0, len(CITIES))),
            "device": DEVICES[int(rng.integers(0, len(DEVICES)))] if rng.uniform() < 0.75 else "",
            "license": int(rng.integers(0, len(LICENSES))), "tagger": float(rng.uniform(0.3, 1.0))}


def _non_visual_tags(user: dict[str, Any], year: int, rng: np.random.Generator) -> list[str]:
    weights = 1.0 / np.arange(1, len(NON_VISUAL_TAGS) + 1)
    count = int(rng.poisson(1.5 * user["tagger"]))
    tags = [NON_VISUAL_TAGS[i] for i in rng.choice(len(NON_VISUAL_TAGS), count, p=weights / weights.sum())]
    if rng.uniform() < 0.4:
        tags.append(CITIES[user["city"]][0])
    if rng.uniform() < 0.25:
        tags.append(str(year))
    if user["device"] and rng.uniform() < 0.2:
        tags.append(user["device"].split()[0].lower() if rng.uniform() < 0.6 else user["device"].lower())
    return tags


def make_photo(world: World, index: int, image_root: Path | None) -> Photo:
    """Generate row ``index``: draw its picture (written under ``image_root`` unless None or a
    video) and compose its 25-column metadata line."""
    spec = world.spec
    scene_rng, present, sizes = sample_scene(world, index)
    tag_rng = np.random.default_rng([spec.seed, _TAGS, index])
    meta_rng = np.random.default_rng([spec.seed, _META, index])
    users = max(20, spec.images // 60)
    user_id = min(int(meta_rng.zipf(1.6)) - 1, users - 1) if meta_rng.uniform() < 0.5 \
        else int(meta_rng.integers(0, users))
    user = _user(spec.seed, user_id)
    video = meta_rng.uniform() < VIDEO_RATE
    untagged = meta_rng.uniform() < UNTAGGED_RATE
    year = int(meta_rng.integers(2004, 2015))

    tags, named, noisy = _concept_tags(world, present, tag_rng)
    tags += _non_visual_tags(user, year, tag_rng)
    tags = [tags[i] for i in tag_rng.permutation(len(tags))]
    if untagged:
        tags, named, noisy = [], [], 0

    photo_id = 2_000_000_000 + index * 1009 + int(meta_rng.integers(0, 1009))
    row = _metadata_row(index, photo_id, user, year, video, tags, meta_rng)
    digest = row[2]
    if not video and image_root is not None:
        lo, hi = spec.size_range
        height, width = (int(v) for v in scene_rng.integers(lo, hi + 1, 2))
        data = render(world, list(zip(present, sizes)), height, width, scene_rng,
                      int(scene_rng.integers(0, 3)), spec.jpeg_quality)
        _write_file(mirror_path(image_root, digest), data)
    truth = {"line": index, "photo_id": photo_id, "hash": digest, "video": video,
             "objects": present, "tagged": named, "tags": tags}
    return Photo("\t".join(row), truth, present, named, noisy,
                 len(named), video, untagged)


def _metadata_row(index: int, photo_id: int, user: dict[str, Any], year: int, video: bool,
                  tags: list[str], rng: np.random.Generator) -> list[str]:
    """The 25 YFCC100M columns; free text URL-encoded with quote_plus, as in the real dump."""
    taken = calendar.timegm((year, 1, 1, 0, 0, 0)) + int(rng.integers(0, 365 * 86400))
    uploaded = taken + int(rng.integers(60, 90 * 86400))
    server, farm = int(rng.integers(1000, 9999)), int(rng.integers(1, 10))
    secret, original = (f"{int(v):010x}" for v in rng.integers(0, 1 << 40, 2))
    if video:
        page = f"http://www.flickr.com/videos/{user['nsid']}/{photo_id}/"
        url = f"{page}play/orig/{original}"
    else:
        page = f"http://www.flickr.com/photos/{user['nsid']}/{photo_id}/"
        url = f"http://farm{farm}.staticflickr.com/{server}/{photo_id}_{secret}.jpg"
    city, lat, lon = CITIES[user["city"]]
    geo = rng.uniform() < GEOTAGGED_RATE
    title_kind = int(rng.integers(0, 4))
    title = (f"IMG_{int(rng.integers(1000, 9999))}", f"DSC{int(rng.integers(10000, 99999)):05d}",
             f"{city.title()} {year}", "")[title_kind]
    description = f"Taken in {city.title()}, {year}." if rng.uniform() < 0.15 else ""
    license_name, license_url = LICENSES[user["license"]]
    return [
        str(index), str(photo_id), hashlib.md5(url.encode()).hexdigest(), user["nsid"],
        quote_plus(user["nickname"]), time.strftime("%Y-%m-%d %H:%M:%S.0", time.gmtime(taken)),
        str(uploaded), quote_plus(user["device"]), quote_plus(title), quote_plus(description),
        ",".join(quote_plus(t) for t in tags), "",
        f"{lon + rng.normal(0, 0.05):.6f}" if geo else "", f"{lat + rng.normal(0, 0.05):.6f}" if geo else "",
        str(int(rng.integers(1, 17))) if geo else "", page, url, license_name, license_url,
        str(server), str(farm), secret, original, "jpg", "1" if video else "0",
    ]


def mirror_path(image_root: Path, digest: str) -> Path:
    """Where the public YFCC100M mirror keeps the image with md5(download url) = ``digest``."""
    return image_root / digest[:3] / digest[3:6] / f"{digest}.jpg"


def _write_file(path: Path, data: bytes) -> None:
    # Rename makes each image appear whole; no per-file fsync (it would dominate the run time for
    # tens of thousands of small files). The metadata file, written last with fsync, marks the world
    # as complete.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- downstream set -------------------------------------------------------------------------------


def make_downstream_image(world: World, split: str, class_index: int, i: int, root: Path) -> None:
    """One labelled picture: a large object of the class among smaller distractor concepts."""
    spec = world.spec
    rng = np.random.default_rng([spec.seed, _DOWNSTREAM, 0 if split == "train" else 1, class_index, i])
    target = world.downstream[class_index]
    distractors = [c.name for c in world.concepts if c.name not in world.downstream]
    picks = rng.choice(len(distractors), int(rng.integers(1, 4)))
    objects = [(distractors[j], float(rng.uniform(0.22, 0.34))) for j in picks]
    objects.insert(int(rng.integers(0, len(objects) + 1)), (target, float(rng.uniform(0.46, 0.66))))
    lo, hi = spec.size_range
    height, width = (int(v) for v in rng.integers(lo, hi + 1, 2))
    data = render(world, objects, height, width, rng, int(rng.integers(2, 6)), spec.jpeg_quality)
    _write_file(root / split / world.by_name[target].folder / f"{split}_{i:05d}.jpg", data)


# --- the whole world, in parallel -------------------------------------------------------------------


@dataclass
class WorldInfo:
    """Where the world's outputs are, and what it holds."""

    root: Path
    metadata: Path
    image_root: Path
    downstream: Path
    world_json: Path
    truth: Path
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


_WORLD: World | None = None


def _init_worker(world: World) -> None:
    global _WORLD
    _WORLD = world


def _photo_range(args: tuple[int, int, str]) -> list[Photo]:
    start, stop, image_root = args
    assert _WORLD is not None
    return [make_photo(_WORLD, i, Path(image_root)) for i in range(start, stop)]


def _downstream_range(args: tuple[list[tuple[str, int, int]], str]) -> int:
    jobs, root = args
    assert _WORLD is not None
    for split, class_index, i in jobs:
        make_downstream_image(_WORLD, split, class_index, i, Path(root))
    return len(jobs)


def _map(world: World, fn, tasks: list, workers: int) -> Iterator:
    """Results of ``fn`` over ``tasks`` in order, in this process (workers=0) or a process pool."""
    if workers <= 0:
        _init_worker(world)
        yield from map(fn, tasks)
        return
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(world,)) as pool:
        yield from pool.imap(fn, tasks)


def make_world(out: str | os.PathLike, *, images: int = 20000, size_range: tuple[int, int] = (64, 96),
               seed: int = 0, label_noise: float = 0.0, missing_rate: float = 0.2,
               zipf_exponent: float = 1.0, concepts: int = len(SHAPES) * len(TEXTURES),
               downstream_train_per_class: int = 20, downstream_val_per_class: int = 50,
               workers: int = 0, progress: bool = True) -> WorldInfo:
    """Write a synthetic hashtag world to ``out`` (see the module docstring); ``workers`` = 0 runs
    in this process, N > 0 uses N processes. The result is byte-identical for any ``workers``."""
    spec = WorldSpec(images=images, size_range=(int(size_range[0]), int(size_range[1])), seed=seed,
                     label_noise=label_noise, missing_rate=missing_rate, zipf_exponent=zipf_exponent,
                     concepts=concepts, downstream_train_per_class=downstream_train_per_class,
                     downstream_val_per_class=downstream_val_per_class)
    world = World.build(spec)
    root = Path(out)
    _prepare_output(root)
    info = WorldInfo(root, root / METADATA_NAME, root / "data" / "images", root / "downstream",
                     root / WORLD_JSON_NAME, root / TRUTH_NAME)
    started = time.perf_counter()
    bar = _progress_bar(spec.images + spec.downstream_classes * (spec.downstream_train_per_class
                                                                    + spec.downstream_val_per_class),
                        progress)
    _write_downstream(world, info.downstream, workers, bar)
    stats = _write_corpus(world, info, workers, bar)
    bar.close()
    info.counts = stats.pop("counts")
    info.seconds = round(time.perf_counter() - started, 2)
    description = world.to_dict()
    description.update(stats)
    description["counts"] = info.counts
    description["files"] = {"metadata": METADATA_NAME, "image_root": "data/images",
                            "downstream": "downstream", "truth": TRUTH_NAME}
    write_json(info.world_json, description)
    return info


def _prepare_output(root: Path) -> None:
    """Create ``root``, or clear the previous world written there: leftover pictures of a larger or
    differently seeded world would otherwise join the downstream classes. Any other non-empty
    directory is refused rather than touched."""
    if root.is_dir() and any(root.iterdir()):
        previous = root / WORLD_JSON_NAME
        if not previous.is_file() or f'"format": "{FORMAT}"' not in previous.read_text(encoding="utf-8"):
            raise UserError(f"output directory {root} is not empty and holds no synthetic world; "
                            "pass a new or empty directory to --out")
        for name in ("downstream", "data"):
            shutil.rmtree(root / name, ignore_errors=True)
        for name in (WORLD_JSON_NAME, METADATA_NAME, TRUTH_NAME):
            (root / name).unlink(missing_ok=True)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output directory {root}: {err.strerror}") from None


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="synthetic world", disable=not enabled, smoothing=0.1)


def _write_downstream(world: World, root: Path, workers: int, bar) -> None:
    spec = world.spec
    jobs = [(split, c, i) for split, per_class in (("train", spec.downstream_train_per_class),
                                                   ("val", spec.downstream_val_per_class))
            for c in range(spec.downstream_classes) for i in range(per_class)]
    tasks = [(jobs[i:i + 100], str(root)) for i in range(0, len(jobs), 100)]
    for done in _map(world, _downstream_range, tasks, workers):
        bar.update(done)


def _write_corpus(world: World, info: WorldInfo, workers: int, bar) -> dict[str, Any]:
    """Images first, then the metadata and truth files, each atomically: a metadata file on disk
    means every image it names is already there."""
    n = world.spec.images
    step = 200
    tasks = [(i, min(i + step, n), str(info.image_root)) for i in range(0, n, step)]
    object_counts = {c.name: 0 for c in world.concepts}
    image_counts = {c.name: 0 for c in world.concepts}
    tagged_counts = {c.name: 0 for c in world.concepts}
    counts = {"rows": 0, "images": 0, "videos": 0, "untagged_rows": 0, "concept_tags": 0, "noisy_tags": 0}
    with atomic_open(info.metadata, "w") as meta, atomic_open(info.truth, "w") as truth:
        for photos in _map(world, _photo_range, tasks, workers):
            for photo in photos:
                meta.write(photo.line + "\n")
                truth.write(json.dumps(photo.truth, ensure_ascii=False) + "\n")
                counts["rows"] += 1
                counts["videos"] += photo.video
                counts["images"] += not photo.video
                counts["untagged_rows"] += photo.untagged
                counts["concept_tags"] += photo.concept_tags
                counts["noisy_tags"] += photo.noisy_tags
                for name in photo.concepts_present:
                    object_counts[name] += 1
                for name in set(photo.concepts_present):
                    image_counts[name] += 1
                for name in photo.concepts_tagged:
                    tagged_counts[name] += 1
            bar.update(len(photos))
    counts["downstream_train"] = world.spec.downstream_classes * world.spec.downstream_train_per_class
    counts["downstream_val"] = world.spec.downstream_classes * world.spec.downstream_val_per_class
    return {"counts": counts,
            "frequencies": {"objects": object_counts, "images_with_concept": image_counts,
                            "images_tagged_with_concept": tagged_counts},
            "realised_label_noise": counts["noisy_tags"] / max(1, counts["concept_tags"])}
