"""The synthetic hashtag world: what each picture of a small YFCC100M-shaped corpus holds and says.

The world exists so that tests, benchmarks and the demo run with no downloads and still teach
something real (docs/synthetic.md). This module is the model: which concepts exist and how often,
what each photo shows, which hashtags its user wrote and its other YFCC100M columns. Drawing is
data/synthetic/render.py; writing a world to disk (metadata, mirror images, the downstream set,
world.json) is data/synthetic/write.py.

A *concept* is a shape with a surface texture ("striped circle"); colour, size, rotation, position,
background and clutter are nuisances. Pictures hold a few objects whose concepts are drawn from a
Zipf law; hashtags name them through synonyms and spelling variants, miss some, add popular
non-visual tags and, at a configurable rate, replace a concept tag with a wrong one. The downstream
classes are a grid of shapes x textures (so every class shares its shape with some classes and its
texture with others) placed at evenly spaced Zipf ranks, the rarest concept included; each
downstream picture shows one large object of its class among smaller distractor objects of the other
concepts and clutter. From a few labels that conjunction is hard to learn; features pretrained on
the hashtags already separate it.

Every photo depends only on (seed, its index), never on the worker count, so worlds are
byte-identical for any number of workers. Scenes (images) and tags use separate random streams: the
same seed with a different label-noise rate gives the same images with different tags.
"""
from __future__ import annotations

import calendar
import functools
import hashlib
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote_plus

import numpy as np

from data.corpus.yfcc import encode_tags, format_line
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
_SCENE, _TAGS, _META, _USER, DOWNSTREAM_STREAM = range(5)

# The --long-tail world's Zipf exponent: over the 48 concepts the head is 48^2 ~ 2,300 times as
# frequent as the rarest concept (measured from a 60k-photo world's rows: ~1,800:1, the rarest
# downstream class on ~20 tagged photos, docs/synthetic.md).
LONG_TAIL_ZIPF = 2.0

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


def _downstream_ranks(n_classes: int, n_concepts: int) -> list[int]:
    """Evenly spaced Zipf ranks from the most frequent to the rarest concept."""
    if n_classes == 1:
        return [n_concepts - 1]
    return [round(i * (n_concepts - 1) / (n_classes - 1)) for i in range(n_classes)]


# --- one photo: scene, tags, metadata row -------------------------------------------------------


@dataclass
class Photo:
    """What one corpus row says: its metadata line (newline included), its ground truth, and tag
    statistics."""

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


def describe_photo(world: World, index: int, present: list[str]) -> Photo:
    """Row ``index`` of the corpus, whose picture shows the concepts ``present``: its hashtags and
    its 25-column metadata line."""
    spec = world.spec
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
    truth = {"line": index, "photo_id": photo_id, "hash": row["hash"], "video": video,
             "objects": present, "tagged": named, "tags": tags}
    return Photo(format_line(row, "25"), truth, present, named, noisy, len(named), video, untagged)


def _metadata_row(index: int, photo_id: int, user: dict[str, Any], year: int, video: bool,
                  tags: list[str], rng: np.random.Generator) -> dict[str, str]:
    """The 25 YFCC100M columns by name; free text URL-encoded with quote_plus, as in the real dump."""
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
    return {
        "line_number": str(index), "photo_id": str(photo_id), "hash": hashlib.md5(url.encode()).hexdigest(),
        "user_nsid": user["nsid"], "user_nickname": quote_plus(user["nickname"]),
        "date_taken": time.strftime("%Y-%m-%d %H:%M:%S.0", time.gmtime(taken)), "date_uploaded": str(uploaded),
        "capture_device": quote_plus(user["device"]), "title": quote_plus(title),
        "description": quote_plus(description), "user_tags": encode_tags(tags), "machine_tags": "",
        "longitude": f"{lon + rng.normal(0, 0.05):.6f}" if geo else "",
        "latitude": f"{lat + rng.normal(0, 0.05):.6f}" if geo else "",
        "accuracy": str(int(rng.integers(1, 17))) if geo else "", "page_url": page, "download_url": url,
        "license_name": license_name, "license_url": license_url, "server_id": str(server),
        "farm_id": str(farm), "secret": secret, "secret_original": original, "extension": "jpg",
        "marker": "1" if video else "0",
    }
