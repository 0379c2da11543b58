"""Benchmark: shard building vs a plain single-process PIL loop, on the same real photos.

Input: the 250 real ImageNet photos of ../shared/data/imagenet_samples, replicated to --images
inputs (each replica gets a JPEG comment with its number, so the bytes differ and exact-duplicate
removal keeps them all while the pixels, and so the decoding work, stay the same) as a flat folder of
<key>.jpg plus a JSONL table. Without that folder, synthetic photos of the same size are used.

- baseline: one process, for each file: PIL open, convert('RGB'), resize (short side 288, Pillow's
  default filter), save JPEG quality 90 to a file.
- ours: scripts/build_shards.py's library path (data.shards.build.build_shards) with --workers 2 on the
  same table and folder: planning, exact-duplicate hashing, safe decoding (draft mode), tar writing,
  info.json, report.json and the histogram, all inside the timed region.

The wall-clock ratio needs two otherwise idle cores: each side runs --repeat times, alternating, and
the best run of each counts. The CPU milliseconds per image of both sides are printed too, since they
do not depend on what else the machine runs.

Prints progress lines, then as the last line a JSON object
{"bench": "shards", "ours": img/s, "baseline": img/s, "unit": "img/s", "ratio": ours/baseline, ...}.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from data.corpus.table import TableReader
from data.errors import UserError, cli_main
from data.images.decode import DEFAULT_QUALITY, DEFAULT_SHORT_SIDE
from data.shards.build import BuildConfig, build_shards
from data.vocab.vocabulary import Label, Vocabulary

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "imagenet_samples"


def source_photos(folder: Path, count: int = 250) -> list[tuple[str, bytes]]:
    """(name, JPEG bytes) of the real photos, or of synthetic ones when the folder is absent."""
    files = sorted(folder.glob("*.JPEG")) if folder.is_dir() else []
    if files:
        return [(f.stem, f.read_bytes()) for f in files]
    print(f"{folder} not found: using {count} synthetic 500x375 photos", flush=True)
    rng = np.random.default_rng(0)
    photos = []
    for i in range(count):
        base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((500, 375), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 12, (375, 500, 3))
        pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=90)
        photos.append((f"synthetic_{i:03d}", out.getvalue()))
    return photos


def with_comment(jpeg: bytes, text: str) -> bytes:
    """``jpeg`` with a COM segment after SOI: other bytes, same pixels."""
    payload = text.encode("ascii")
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def make_inputs(root: Path, photos: list[tuple[str, bytes]], total: int) -> tuple[Path, Path, list[Path]]:
    """Flat image folder, JSONL table and vocab.json for ``total`` inputs."""
    images = root / "images"
    images.mkdir()
    files: list[Path] = []
    with open(root / "table.jsonl", "w", encoding="utf-8") as table:
        for i in range(total):
            name, data = photos[i % len(photos)]
            key = f"r{i // len(photos)}_{name}"
            path = images / f"{key}.jpg"
            path.write_bytes(with_comment(data, f"replica {i // len(photos)}"))
            files.append(path)
            table.write(json.dumps({"key": key, "tags": [name.split("_", 1)[-1]],
                                    "image": f"images/{key}.jpg"}) + "\n")
    tags = sorted({name.split("_", 1)[-1].lower() for name, _ in photos})
    vocab = root / "vocab.json"
    Vocabulary([Label(i, tag, 1) for i, tag in enumerate(tags)]).save(vocab)
    return root / "table.jsonl", vocab, files


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the pool's workers, once shut down)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def baseline(files: list[Path], out: Path, short_side: int, quality: int) -> float:
    out.mkdir()
    start = time.perf_counter()
    for i, path in enumerate(files):
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = short_side / min(image.size)
            if scale < 1:
                image = image.resize((round(image.width * scale), round(image.height * scale)))
            image.save(out / f"{i}.jpg", "JPEG", quality=quality)
    return time.perf_counter() - start


def ours(table: Path, vocab: Path, images: Path, out: Path, workers: int, shard_size: int) -> tuple[float, dict]:
    start = time.perf_counter()
    result = build_shards(TableReader(table), BuildConfig(out, vocab, str(images), shard_size=shard_size,
                                                          workers=workers))
    return time.perf_counter() - start, result.info


def run_rounds(args: argparse.Namespace, root: Path, files: list[Path], table: Path,
               vocab: Path) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(wall s, CPU s) of each round of the baseline and of ours, alternating."""
    base_runs, ours_runs = [], []
    for round_ in range(args.repeat):
        cpu = cpu_seconds()
        seconds = baseline(files, root / f"baseline{round_}", DEFAULT_SHORT_SIDE, DEFAULT_QUALITY)
        base_runs.append((seconds, cpu_seconds() - cpu))
        print(f"round {round_ + 1}: baseline {len(files) / seconds:.1f} img/s ({seconds:.2f} s, "
              "1 process)", flush=True)
        cpu = cpu_seconds()
        seconds, info = ours(table, vocab, root / "images", root / f"shards{round_}", args.workers,
                             args.shard_size)
        ours_runs.append((seconds, cpu_seconds() - cpu))
        written = info["num_samples"]["total"]
        print(f"round {round_ + 1}: ours {len(files) / seconds:.1f} img/s ({seconds:.2f} s, "
              f"{args.workers} workers, {written} samples written, skipped {info['skipped']['counts']})",
              flush=True)
        if written != len(files):
            raise UserError(f"ours wrote {written} of {len(files)} inputs; see {root / f'shards{round_}'}")
    return base_runs, ours_runs


@cli_main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=2000, help="inputs (replicas of the photos)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    parser.add_argument("--repeat", type=int, default=2, help="rounds of baseline + ours; best of each")
    args = parser.parse_args()
    photos = source_photos(args.samples)
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        root = Path(tmp)
        table, vocab, files = make_inputs(root, photos, args.inputs)
        print(f"{len(files)} inputs from {len(photos)} photos in {root}", flush=True)
        load = os.getloadavg()[0]
        base_runs, ours_runs = run_rounds(args, root, files, table, vocab)
    # Best of the rounds: other jobs on the machine only ever make a run slower.
    (base_s, base_cpu), (ours_s, ours_cpu) = min(base_runs), min(ours_runs)
    result = {"bench": "shards", "ours": round(len(files) / ours_s, 2),
              "baseline": round(len(files) / base_s, 2), "unit": "img/s",
              "ratio": round(base_s / ours_s, 3), "inputs": len(files), "workers": args.workers,
              "cpus": os.cpu_count(), "rounds": args.repeat, "load_before": round(load, 2),
              "cpu_ms_per_img": {"ours": round(1000 * ours_cpu / len(files), 2),
                                 "baseline": round(1000 * base_cpu / len(files), 2)}}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
