"""The build phase, one work unit at a time: read, convert and check its images, write its shard
and manifest.

A unit depends only on the plan and the build settings, so units can be built by any worker on any
node, in any order. Its candidates are read back from the scan's parts (:func:`data.shards.scan.
read_candidates`); the shard (``<split>-NNNNNN.tar``) is written atomically and hashed while it is
written, then its manifest (``.build/<split>-NNNNNN.json``: sample count, bytes, sha256, label
counts, skips, near-duplicate matches, and the unit's fingerprint). A shard counts as done only
when its manifest is present, its fingerprint matches the current plan and the tar still has the
sha256 the manifest recorded (:func:`check_unit` reads it back), so a build killed at any point, or
a shard damaged after it was written, is rebuilt and nothing else is.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.atomic_write import write_json
from data.images.decode import ImageSettings, ImageSkip, convert
from data.images.near_duplicates import EvalIndex, phash
from data.images.sources import MissingImage, read_image
from data.shards.plan import Plan, Unit
from data.shards.scan import Candidate, read_candidates
from data.shards.tar_writer import write_tar
from data.skip_report import SkipReport

BUILD_DIR = ".build"


@dataclass(frozen=True)
class UnitContext:
    """What every unit of one build shares; sent once to each worker process."""

    out_dir: str
    image: ImageSettings
    plan: Plan
    scan_dir: str
    eval_index: EvalIndex | None = None


def manifest_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / BUILD_DIR / f"{name}.json"


def check_unit(unit: Unit, out_dir: str | Path) -> str:
    """``"done"`` when the unit's shard and manifest from an earlier run match the plan and the tar
    still has the recorded sha256; ``"damaged"`` when the manifest matches but the tar does not
    (changed or cut after it was written); ``"missing"`` otherwise."""
    manifest = read_manifest(out_dir, unit.name)
    if manifest is None or manifest.get("fingerprint") != unit.fingerprint:
        return "missing"
    tar = Path(out_dir) / f"{unit.name}.tar"
    try:
        with open(tar, "rb") as f:
            same = hashlib.file_digest(f, "sha256").hexdigest() == manifest.get("sha256")
    except OSError:
        same = False
    return "done" if same else "damaged"


def remove_temporary_files(path: Path, min_age_s: float = 0.0) -> None:
    """Delete the temp files an interrupted atomic write of ``path`` left (``.<name>.*.tmp``).

    A unit is built by one process at a time, so its own temp files are always stale; files that
    several nodes may write (info.json, the plan) pass ``min_age_s`` to spare a write in progress."""
    now = time.time()
    for temp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            if now - temp.stat().st_mtime >= min_age_s:
                temp.unlink()


def remove_units_temporary_files(out_dir: str | Path, units: list[Unit]) -> None:
    """Delete the temp files of ``units``' shards and manifests (one listing of each directory).

    Called once a failed build phase has stopped its workers: a worker killed in the middle of
    writing a shard (the pool is terminated when another worker fails) cannot clean up after
    itself, and the units are this node's own, so their temp files are all stale."""
    names = {f"{unit.name}.tar" for unit in units} | {f"{unit.name}.json" for unit in units}
    for directory in (Path(out_dir), Path(out_dir) / BUILD_DIR):
        with contextlib.suppress(FileNotFoundError):
            for temp in directory.glob(".*.tmp"):
                if temp.name[1:].rsplit(".", 2)[0] in names:
                    with contextlib.suppress(FileNotFoundError):
                        temp.unlink()


def read_manifest(out_dir: str | Path, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(manifest_path(out_dir, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _sample_json(candidate: Candidate, size: tuple[int, int], original: tuple[int, int]) -> bytes:
    obj: dict[str, Any] = dict(candidate.provenance)
    obj.update(key=candidate.key, source_key=candidate.source_key, labels=list(candidate.labels),
               tags=list(candidate.tags), width=size[0], height=size[1],
               original_width=original[0], original_height=original[1])
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass
class UnitSamples:
    """What a unit's candidates became: tar members, label counts, skips, near-duplicate matches."""

    members: list[tuple[str, bytes]] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    skips: SkipReport = field(default_factory=SkipReport)
    near: list[dict[str, Any]] = field(default_factory=list)
    image_bytes: int = 0  # source image bytes read


def convert_candidates(candidates: list[Candidate], context: UnitContext) -> UnitSamples:
    """Read, convert and check every candidate, in order."""
    result = UnitSamples()
    for candidate in candidates:
        try:
            data = read_image(candidate.image)
            result.image_bytes += len(data)
            converted = convert(data, context.image)
        except MissingImage:
            result.skips.add("missing_image", candidate.source_key)
            continue
        except ImageSkip as skip:
            result.skips.add(skip.reason, candidate.source_key)
            continue
        if context.eval_index is not None:
            match = context.eval_index.match(phash(converted.image))
            if match is not None:
                result.skips.add("near_duplicate_of_eval", candidate.source_key)
                result.near.append({"key": candidate.source_key, "eval": match[0], "distance": match[1]})
                continue
        result.members.append((f"{candidate.key}.jpg", converted.jpeg))
        result.members.append((f"{candidate.key}.json",
                               _sample_json(candidate, converted.image.size, converted.original_size)))
        result.labels.update(candidate.labels)
    return result


def build_unit(unit: Unit, context: UnitContext) -> dict[str, Any]:
    """Build ``unit``'s shard, then its manifest (in that order: see the module docstring)."""
    refs = context.plan.candidate_refs(Path(context.out_dir) / BUILD_DIR, unit)
    samples = convert_candidates(read_candidates(context.scan_dir, refs), context)
    tar = Path(context.out_dir) / f"{unit.name}.tar"
    manifest_file = manifest_path(context.out_dir, unit.name)
    remove_temporary_files(tar)
    remove_temporary_files(manifest_file)
    size, sha256 = write_tar(tar, samples.members)
    manifest = {
        "unit": unit.name, "split": unit.split, "index": unit.index, "fingerprint": unit.fingerprint,
        "candidates": unit.count, "samples": len(samples.members) // 2, "bytes": size, "sha256": sha256,
        "label_counts": {str(k): v for k, v in sorted(samples.labels.items())},
        "skips": samples.skips.to_dict(), "near_duplicates": samples.near, "image_bytes_read": samples.image_bytes,
    }
    write_json(manifest_file, manifest, indent=None)
    return manifest


def ensure_unit(unit: Unit, context: UnitContext, check: bool = True) -> tuple[str, int, int]:
    """Keep ``unit``'s shard when :func:`check_unit` finds it done, else build it; returns what was
    found (``done``, ``damaged`` or ``missing``), the unit's candidate count and the image bytes
    read to build it (0 when kept)."""
    found = check_unit(unit, context.out_dir) if check else "missing"
    read = build_unit(unit, context)["image_bytes_read"] if found != "done" else 0
    return found, unit.count, read


# Worker-process state: set once by the pool initializer so units travel without the eval index.
_CONTEXT: UnitContext | None = None


def init_worker(context: UnitContext) -> None:
    global _CONTEXT
    _CONTEXT = context


def ensure_unit_in_worker(unit: Unit) -> tuple[str, int, int]:
    assert _CONTEXT is not None, "init_worker was not run in this process"
    return ensure_unit(unit, _CONTEXT)


def rebuild_unit_in_worker(unit: Unit) -> tuple[str, int, int]:
    assert _CONTEXT is not None, "init_worker was not run in this process"
    return ensure_unit(unit, _CONTEXT, check=False)
