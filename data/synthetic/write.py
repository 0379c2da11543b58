"""Writing a synthetic hashtag world to disk, in the exact on-disk form of real data (docs/synthetic.md).

It goes through the same readers and shard builder as real data:

* ``yfcc100m_dataset.tsv``: the 25-column YFCC100M metadata (no header, tab separated, user tags
  URL-encoded with ``quote_plus`` and comma separated), with realistic other columns, a few videos
  (marker 1, no image) and a few untagged photos;
* ``data/images/<h[:3]>/<h[3:6]>/<h>.jpg``: the public-mirror image layout, h = md5(download url);
* ``downstream/{train,val}/<class>/*.jpg``: a small labelled transfer task in ImageFolder layout;
* ``truth.jsonl``: per photo, the concepts really drawn and which tags are noise (for checks only;
  no stage of the pipeline reads it);
* ``world.json``: everything about how the world was made (concepts, synonyms, Zipf exponent,
  frequencies, noise, downstream classes, seed, sizes).

Photos and downstream pictures are made in a process pool (or in this process); each depends only
on (seed, its index), so the output is byte-identical for any ``workers``.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from data.atomic_write import atomic_open, write_json
from data.errors import UserError
from data.synthetic.render import render
from data.synthetic.world import (DOWNSTREAM_STREAM, FORMAT, METADATA_NAME, SHAPES, TEXTURES, TRUTH_NAME,
                                  WORLD_JSON_NAME, Photo, World, WorldSpec, describe_photo, sample_scene)


def make_photo(world: World, index: int, image_root: Path | None) -> Photo:
    """Generate row ``index``: draw its picture (written under ``image_root`` unless None or a
    video) and compose its 25-column metadata line."""
    spec = world.spec
    scene_rng, present, sizes = sample_scene(world, index)
    photo = describe_photo(world, index, present)
    if not photo.video and image_root is not None:
        lo, hi = spec.size_range
        height, width = (int(v) for v in scene_rng.integers(lo, hi + 1, 2))
        data = render(world, list(zip(present, sizes)), height, width, scene_rng,
                      int(scene_rng.integers(0, 3)), spec.jpeg_quality)
        _write_file(mirror_path(image_root, photo.truth["hash"]), data)
    return photo


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
    rng = np.random.default_rng([spec.seed, DOWNSTREAM_STREAM, 0 if split == "train" else 1, class_index, i])
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
                meta.write(photo.line)
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
