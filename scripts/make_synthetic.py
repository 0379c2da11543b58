#!/usr/bin/env python
"""Write a synthetic hashtag world: YFCC100M-style metadata + mirror-layout images + a labelled
downstream set, so the whole pipeline runs with no downloads (see docs/synthetic.md).

Example:
    python scripts/make_synthetic.py --out runs/demo/world --images 20000 --workers 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.synthetic.world import SHAPES, TEXTURES  # noqa: E402
from data.synthetic.write import WorldInfo, make_world  # noqa: E402
from data.errors import cli_main  # noqa: E402

MAX_CONCEPTS = len(SHAPES) * len(TEXTURES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True,
                   help="output directory: new, empty, or holding an earlier world (which is replaced)")
    p.add_argument("--images", type=int, default=20000, help="metadata rows / photos (default 20000)")
    p.add_argument("--size-range", type=int, nargs=2, default=(64, 96), metavar=("MIN", "MAX"),
                   help="image side lengths in pixels, drawn per image and side (default 64 96)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed -> byte-identical world")
    p.add_argument("--label-noise", type=float, default=0.0,
                   help="fraction of concept tags replaced by a wrong concept drawn from the marginal "
                        "(default 0.0); images stay the same for a given seed")
    p.add_argument("--missing-rate", type=float, default=0.2,
                   help="probability that an object in the picture is not tagged (default 0.2)")
    p.add_argument("--zipf", type=float, default=1.0,
                   help="Zipf exponent s of concept frequencies, p(rank r) ~ r^-s (default 1.0)")
    p.add_argument("--concepts", type=int, default=MAX_CONCEPTS,
                   help=f"number of visual concepts (shape x texture pairs), 13..{MAX_CONCEPTS} "
                        f"(default {MAX_CONCEPTS})")
    p.add_argument("--downstream-train", type=int, default=20,
                   help="labelled downstream training images per class (default 20)")
    p.add_argument("--downstream-val", type=int, default=50,
                   help="downstream validation images per class (default 50)")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes; 0 = in this process (default 2); output is identical for any value")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def report(info: WorldInfo) -> None:
    c = info.counts
    print(f"synthetic world written in {info.seconds:.1f}s to {info.root}")
    print(f"  metadata (YFCC100M 25 columns): {info.metadata}  ({c['rows']} rows, {c['videos']} videos, "
          f"{c['untagged_rows']} untagged)")
    print(f"  images (mirror layout):         {info.image_root}  ({c['images']} JPEGs)")
    print(f"  downstream (ImageFolder):       {info.downstream}  (train {c['downstream_train']}, "
          f"val {c['downstream_val']})")
    print(f"  world description:              {info.world_json}")
    print(f"  ground truth per photo:         {info.truth}")


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = make_world(args.out, images=args.images, size_range=tuple(args.size_range), seed=args.seed,
                      label_noise=args.label_noise, missing_rate=args.missing_rate,
                      zipf_exponent=args.zipf, concepts=args.concepts,
                      downstream_train_per_class=args.downstream_train,
                      downstream_val_per_class=args.downstream_val, workers=args.workers,
                      progress=not args.no_progress)
    report(info)


if __name__ == "__main__":
    main()
