#!/usr/bin/env python
"""Write a synthetic hashtag world: YFCC100M-style metadata + mirror-layout images + a labelled
downstream set, so the whole pipeline runs with no downloads (see docs/synthetic.md).

Examples:
    python scripts/make_synthetic.py --out runs/demo/world --images 20000 --workers 2
    python scripts/make_synthetic.py --out runs/longtail/world --images 60000 --long-tail

The paper's label-noise protocol on a written world (a fixed vocabulary; a fraction p of each image's
labels replaced by draws from the label marginal; everything else of each row unchanged):
    python scripts/make_synthetic.py --out runs/noise25 --noisy-copy-of runs/demo/world \
        --vocab runs/demo/vocab.json --hashtag-noise 0.25
writes runs/noise25/yfcc100m_dataset.tsv and noise.json (the realised rate); the pictures stay in
the clean world: build shards with --input runs/noise25/yfcc100m_dataset.tsv --images runs/demo/world.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.errors import UserError, cli_main  # noqa: E402
from data.synthetic.noise import NoiseReport, noise_labels  # noqa: E402
from data.synthetic.world import LONG_TAIL_ZIPF, SHAPES, TEXTURES  # noqa: E402
from data.synthetic.write import WorldInfo, make_world  # noqa: E402

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
                   help="the generator's own noise: fraction of concept tags replaced by a wrong concept drawn "
                        "from the concept marginal (default 0.0); images stay the same for a given seed. The "
                        "paper's protocol (every label, a fixed vocabulary) is --noisy-copy-of")
    p.add_argument("--missing-rate", type=float, default=0.2,
                   help="probability that an object in the picture is not tagged (default 0.2)")
    p.add_argument("--zipf", type=float,
                   help="Zipf exponent s of concept frequencies, p(rank r) ~ r^-s (default 1.0)")
    p.add_argument("--long-tail", action="store_true",
                   help=f"a long-tailed world: Zipf exponent {LONG_TAIL_ZIPF:g} over the concepts, so the most "
                        f"frequent concept is ~{MAX_CONCEPTS ** LONG_TAIL_ZIPF:,.0f}x as frequent as the rarest "
                        "(48 concepts) and the downstream classes, at evenly spaced ranks, span that range; "
                        "use 60000+ --images so the rarest concepts still have ~20 tagged photos")
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
    noise = p.add_argument_group("the paper's label-noise protocol (instead of making a world)")
    noise.add_argument("--noisy-copy-of", type=Path, metavar="WORLD",
                       help="a world written by this script: write its metadata into --out with a fraction "
                            "--hashtag-noise of each image's labels (--vocab's) replaced by draws from the label "
                            "marginal; the other tags, columns and rows, and the pictures, stay as they are")
    noise.add_argument("--vocab", type=Path, help="the fixed vocabulary (vocab.json) the labels are read with")
    noise.add_argument("--hashtag-noise", type=float, metavar="P", help="the fraction of labels replaced, in [0, 1]")
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
    tagged = json.loads(info.world_json.read_text(encoding="utf-8"))["frequencies"]["images_tagged_with_concept"]
    most, fewest = max(tagged.values()), min(tagged.values())
    print(f"  concept frequency (tagged photos): {most:,} most, {fewest:,} fewest"
          + (f" ({most / fewest:,.0f}:1)" if fewest else ""))


def report_noise(report: NoiseReport) -> None:
    print(f"noisy labels written in {report.seconds:.1f}s to {report.metadata}: {report.replaced:,} of "
          f"{report.labels:,} labels of {report.image_rows:,} image rows replaced (realised rate "
          f"{report.realised_rate:.4f}, asked {report.rate:g}); {report.rows_changed:,} rows changed")


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.noisy_copy_of is not None or args.hashtag_noise is not None:
        if args.noisy_copy_of is None or args.vocab is None or args.hashtag_noise is None:
            raise UserError("--noisy-copy-of, --vocab and --hashtag-noise go together: pass all three")
        report_noise(noise_labels(args.noisy_copy_of, args.vocab, args.out, args.hashtag_noise, seed=args.seed))
        return
    if args.long_tail and args.zipf is not None:
        raise UserError(f"--long-tail sets the Zipf exponent to {LONG_TAIL_ZIPF:g}; pass it or --zipf, not both")
    zipf = LONG_TAIL_ZIPF if args.long_tail else (1.0 if args.zipf is None else args.zipf)
    info = make_world(args.out, images=args.images, size_range=tuple(args.size_range), seed=args.seed,
                      label_noise=args.label_noise, missing_rate=args.missing_rate,
                      zipf_exponent=zipf, concepts=args.concepts,
                      downstream_train_per_class=args.downstream_train,
                      downstream_val_per_class=args.downstream_val, workers=args.workers,
                      progress=not args.no_progress)
    report(info)


if __name__ == "__main__":
    main()
