"""Writing a synthetic hashtag world: YFCC100M-shaped output, determinism, and its statistical knobs
read back from the files the way the pipeline reads them.

Small worlds (a few hundred to ~1,000 photos) keep this file fast.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import quote_plus, unquote_plus

import numpy as np
import pytest
from PIL import Image

from data.corpus import open_corpus
from data.errors import UserError
from data.synthetic.world import METADATA_NAME, World, WorldSpec
from data.synthetic.write import make_world, mirror_path
from data.vocab.tags import TagCanonicalizer, normalize

SIZE = (64, 96)
SMALL = dict(size_range=SIZE, downstream_train_per_class=2, downstream_val_per_class=3, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """1,000 photos, no label noise: big enough for frequency and missing-tag statistics."""
    return make_world(tmp_path_factory.mktemp("world"), images=1000, seed=3, workers=0, **SMALL)


@pytest.fixture(scope="module")
def noisy_world(tmp_path_factory):
    """The same seed and size as ``world`` with 30 % label noise."""
    return make_world(tmp_path_factory.mktemp("noisy"), images=1000, seed=3, label_noise=0.3,
                      workers=2, **SMALL)


def rows(info) -> list[list[str]]:
    return [line.split("\t") for line in info.metadata.read_text(encoding="utf-8").splitlines()]


def truth(info) -> list[dict]:
    return [json.loads(line) for line in info.truth.read_text(encoding="utf-8").splitlines()]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def world_description(info) -> dict:
    return json.loads(info.world_json.read_text(encoding="utf-8"))


def concept_tags(info) -> list[tuple[dict, list[str]]]:
    """Per row: its truth and the concepts its tags name, read back the way the pipeline reads
    them (the YFCC100M reader, the canonicaliser) and mapped to concepts by world.json's forms."""
    concept_of = {form: c["name"] for c in world_description(info)["concepts"] for form in c["canonical"]}
    canonicalize = TagCanonicalizer()
    tags = {r.key: r.tags for r in open_corpus("yfcc100m", info.metadata, include_videos=True).records()}
    return [(t, [concept_of[c] for c in map(canonicalize, tags[str(t["photo_id"])]) if c in concept_of])
            for t in truth(info)]


def loglog_slope(counts: np.ndarray) -> float:
    ranks = np.arange(1, len(counts) + 1)
    keep = counts > 0
    return float(np.polyfit(np.log(ranks[keep]), np.log(counts[keep]), 1)[0])


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_is_byte_identical_for_any_worker_count(tmp_path):
    a = make_world(tmp_path / "a", images=150, seed=5, workers=0, **SMALL)
    b = make_world(tmp_path / "b", images=150, seed=5, workers=2, **SMALL)
    files_a, files_b = tree_bytes(a.root), tree_bytes(b.root)
    assert files_a.keys() == files_b.keys()
    assert [k for k in files_a if files_a[k] != files_b[k]] == []
    assert sum(k.endswith(".jpg") for k in files_a) == a.counts["images"] + a.counts["downstream_train"] \
        + a.counts["downstream_val"]

    c = make_world(tmp_path / "c", images=150, seed=6, workers=2, **SMALL)
    assert c.metadata.read_bytes() != a.metadata.read_bytes()
    jpgs_a = {v for k, v in files_a.items() if k.endswith(".jpg")}
    jpgs_c = {v for k, v in tree_bytes(c.root).items() if k.endswith(".jpg")}
    assert not jpgs_a & jpgs_c


def test_label_noise_changes_tags_not_images(world, noisy_world):
    assert tree_bytes(world.image_root) == tree_bytes(noisy_world.image_root)
    assert world.metadata.read_bytes() != noisy_world.metadata.read_bytes()


# --- the YFCC100M form ------------------------------------------------------------------------


def test_metadata_rows_are_yfcc100m_25_columns_with_mirror_images(world):
    table = rows(world)
    assert len(table) == 1000 and all(len(r) == 25 for r in table)
    assert [r[0] for r in table] == [str(i) for i in range(1000)]
    assert len({r[1] for r in table}) == 1000  # photo ids are unique keys
    videos = [r for r in table if r[24] == "1"]
    assert 0 < len(videos) < 30 and world.counts["videos"] == len(videos)
    for r in table:
        url, digest = r[16], r[2]
        assert digest == hashlib.md5(url.encode()).hexdigest() and len(digest) == 32
        path = mirror_path(world.image_root, digest)
        assert path == world.root / "data" / "images" / digest[:3] / digest[3:6] / f"{digest}.jpg"
        if r[24] == "1":
            assert "/videos/" in url and not path.exists()
            continue
        assert url == f"http://farm{r[20]}.staticflickr.com/{r[19]}/{r[1]}_{r[21]}.jpg"
        assert r[17].startswith("Attribution") and r[18].startswith("http://creativecommons.org/licenses/")
        assert r[23] == "jpg" and r[24] == "0"
    sizes = {Image.open(mirror_path(world.image_root, r[2])).size for r in table[:200] if r[24] == "0"}
    assert all(SIZE[0] <= s <= SIZE[1] for size in sizes for s in size) and len(sizes) > 20


def test_tags_are_url_encoded_with_realistic_variety(world):
    raw_tags = [raw for r in rows(world) for raw in r[10].split(",") if raw]
    assert all(quote_plus(unquote_plus(raw)) == raw for raw in raw_tags)
    assert any("+" in raw for raw in raw_tags) and any(raw.startswith("%23") for raw in raw_tags)
    assert any(any(ord(ch) > 127 for ch in unquote_plus(raw)) for raw in raw_tags)
    empty = sum(1 for r in rows(world) if not r[10])
    assert world.counts["untagged_rows"] > 0 and empty >= world.counts["untagged_rows"]
    # Several spellings of one concept, all meeting in one canonical form.
    spellings = Counter(unquote_plus(raw) for raw in raw_tags)
    by_canonical: dict[str, set[str]] = {}
    for tag in spellings:
        by_canonical.setdefault(normalize(tag), set()).add(tag)
    assert max(len(v) for v in by_canonical.values()) >= 4
    # Popular non-visual tags are there and the stoplist drops them.
    canonicalize = TagCanonicalizer.from_files()
    assert spellings["photooftheday"] > 0 and canonicalize("photooftheday") is None


def test_world_reads_through_the_yfcc_reader(world):
    reader = open_corpus("yfcc100m", world.metadata)
    records = {r.key: r for r in reader.records()}
    photos = [t for t in truth(world) if not t["video"]]
    assert set(records) == {str(t["photo_id"]) for t in photos}
    for t in photos:
        record = records[str(t["photo_id"])]
        assert record.tags == t["tags"]
        assert mirror_path(world.image_root, hashlib.md5(str(record.image).encode()).hexdigest()).is_file()


# --- statistics -------------------------------------------------------------------------------


def test_written_tag_frequencies_follow_the_zipf_law(world):
    """Images tagged with each concept, read back from the metadata: a looser bound (0.2), since a
    tag counts once per image and the rarest concepts hold ~6 tags at this size."""
    made = world_description(world)
    rank = {c["name"]: c["rank"] for c in made["concepts"]}
    counts = np.zeros(len(rank))
    for _, named in concept_tags(world):
        for name in set(named):
            counts[rank[name]] += 1
    assert abs(loglog_slope(counts) + made["zipf_exponent"]) < 0.2


def test_missing_tags_and_label_noise_are_realised(world, noisy_world):
    """Binomial tolerances: ~1,500 objects and ~1,200 concept tags, so 0.04 is at least 3 standard errors."""
    missing = tagged_wrong = named_total = present_total = 0
    for t, named in concept_tags(world):
        if not t["tags"]:  # an untagged row misses every object by construction
            continue
        present = set(t["objects"])
        present_total += len(present)
        missing += len(present - set(named))
        tagged_wrong += len(set(named) - present)
    assert tagged_wrong == 0
    assert abs(missing / present_total - world_description(world)["missing_rate"]) < 0.04

    for t, named in concept_tags(noisy_world):
        named_total += len(named)
        tagged_wrong += len([n for n in named if n not in t["objects"]])
    assert abs(tagged_wrong / named_total - 0.3) < 0.04
    assert json.loads(noisy_world.world_json.read_text())["realised_label_noise"] == pytest.approx(
        tagged_wrong / named_total)


# --- downstream set and world.json --------------------------------------------------------------


def test_downstream_set_is_complete_decodable_and_includes_rare_concepts(world):
    description = json.loads(world.world_json.read_text(encoding="utf-8"))
    classes = description["downstream"]["classes"]
    concepts = description["concepts"]
    folders = [c["folder"] for c in classes]
    assert len(classes) == 12 and len(set(folders)) == 12
    for split, per_class in (("train", 2), ("val", 3)):
        assert sorted(p.name for p in (world.downstream / split).iterdir()) == sorted(folders)
        for folder in folders:
            files = sorted((world.downstream / split / folder).glob("*.jpg"))
            assert len(files) == per_class
            for f in files:
                with Image.open(f) as im:
                    im.load()
                    assert im.mode == "RGB" and all(SIZE[0] <= s <= SIZE[1] for s in im.size)
    ranks = sorted(c["rank"] for c in classes)
    assert ranks[0] == 0 and ranks[-1] == len(concepts) - 1  # the most frequent and the rarest
    # A grid of shapes x textures: every class shares its shape and its texture with other classes.
    by_name = {c["name"]: c for c in concepts}
    grid = [(by_name[c["concept"]]["shape"], by_name[c["concept"]]["texture"]) for c in classes]
    assert len({s for s, _ in grid}) * len({t for _, t in grid}) == len(grid)


def test_world_json_describes_the_world(world):
    description = json.loads(world.world_json.read_text(encoding="utf-8"))
    assert description["seed"] == 3 and description["zipf_exponent"] == 1.0
    assert description["label_noise"] == 0.0 and description["counts"] == world.counts
    probabilities = [c["probability"] for c in description["concepts"]]
    assert sum(probabilities) == pytest.approx(1.0) and probabilities == sorted(probabilities, reverse=True)
    assert all(len(c["forms"]) >= 4 for c in description["concepts"])
    objects = description["frequencies"]["objects"]
    assert sum(objects.values()) == sum(len(t["objects"]) for t in truth(world))
    # The concepts described are those of the world built from the same settings.
    built = World.build(WorldSpec(images=1000, seed=3, size_range=SIZE, downstream_train_per_class=2,
                                  downstream_val_per_class=3))
    assert [(c.name, c.rank, c.probability) for c in built.concepts] == \
        [(c["name"], c["rank"], c["probability"]) for c in description["concepts"]]
    assert built.downstream == [c["concept"] for c in description["downstream"]["classes"]]


def test_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--size-range"):
        make_world(tmp_path, images=10, size_range=(96, 64), progress=False)
    with pytest.raises(UserError, match="--label-noise"):
        make_world(tmp_path, images=10, label_noise=1.5, progress=False)
    with pytest.raises(UserError, match="--concepts"):
        make_world(tmp_path, images=10, concepts=5, progress=False)


def test_rewriting_a_world_leaves_no_stale_files(tmp_path):
    make_world(tmp_path / "w", images=30, seed=1, size_range=SIZE, downstream_train_per_class=3,
               downstream_val_per_class=1, progress=False)
    again = make_world(tmp_path / "w", images=20, seed=2, **SMALL)
    fresh = make_world(tmp_path / "fresh", images=20, seed=2, **SMALL)
    assert tree_bytes(again.root) == tree_bytes(fresh.root)

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        make_world(tmp_path / "other", images=10, progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


# --- the command line -------------------------------------------------------------------------


def test_cli_writes_a_world_and_reports_bad_input_in_one_line(tmp_path, repo):
    script = str(repo / "scripts" / "make_synthetic.py")
    done = subprocess.run([sys.executable, script, "--out", str(tmp_path / "w"), "--images", "40",
                           "--downstream-train", "1", "--downstream-val", "1", "--workers", "0",
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "w" / METADATA_NAME) in done.stdout and "world.json" in done.stdout
    assert len((tmp_path / "w" / METADATA_NAME).read_text().splitlines()) == 40

    bad = subprocess.run([sys.executable, script, "--out", str(tmp_path / "x"), "--size-range", "90", "60"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "--size-range" in bad.stderr
    assert "--label-noise" in subprocess.run([sys.executable, script, "--help"], capture_output=True,
                                             text=True, timeout=120).stdout
