"""Build labelled WebDataset shards from a corpus, a vocab.json and the corpus images.

    python scripts/build_shards.py --source yfcc100m --input yfcc100m_dataset.bz2 \\
        --images /data/yfcc100m --vocab vocab.json --out shards/ --workers 16

Writes ``train-NNNNNN.tar`` / ``val-NNNNNN.tar`` (each sample ``<key>.jpg`` + ``<key>.json`` with
``labels`` and ``tags``), ``info.json``, ``report.json`` (skips by reason, near-duplicates) and
``label_histogram.png`` into --out. Rerunning the same command after an interruption keeps the
finished shards and ends byte-identical to an uninterrupted run. Several nodes: the same command on
each with --node-rank R --num-nodes N and a shared --out (scripts/slurm/build_shards.sbatch). See
docs/shards.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from data.corpus import SOURCES, open_corpus
from data.errors import UserError, cli_main
from data.overwrite_guard import refuse_overwriting_inputs
from data.images.decode import (DEFAULT_MAX_PIXELS, DEFAULT_QUALITY, DEFAULT_RESAMPLE, DEFAULT_SHORT_SIDE, RESAMPLE,
                         ImageSettings)
from data.images.near_duplicates import DEFAULT_THRESHOLD
from data.shards.build import DEFAULT_SHARD_SIZE, DEFAULT_VAL_FRACTION, BuildConfig, build_shards, finalize



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Multi-node: run the same command with --node-rank R --num-nodes N on every node at once "
               "(a shared --out): each scans its share of the corpus, node 0 plans, each builds its share "
               "of the shards; the last node to finish writes info.json, or run --finalize after.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io_group = parser.add_argument_group("inputs and outputs")
    io_group.add_argument("--source", choices=SOURCES, help="corpus format of --input")
    io_group.add_argument("--input", type=Path, help="corpus file (or img2dataset shard directory)")
    io_group.add_argument("--images", help="image directory (flat <key>.<ext> or YFCC100M mirror "
                          "layout data/images/<h[:3]>/<h[3:6]>/<h>.jpg), or img2dataset .tar shards "
                          "(a directory, a file or a glob); optional when records carry their images")
    io_group.add_argument("--vocab", type=Path, help="vocab.json from scripts/build_vocab.py")
    io_group.add_argument("--out", type=Path, required=True, help="output shard directory")

    shard_group = parser.add_argument_group("shards")
    shard_group.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                             help="samples per shard (a shard is short by the images skipped in it)")
    shard_group.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                             help="fraction of records held out as val-*.tar, chosen by a hash of the key")
    shard_group.add_argument("--short-side", type=int,
                             default=DEFAULT_SHORT_SIDE,
                             help="resize so the shorter side is at most this (never upscales)")
    shard_group.add_argument("--resample", choices=sorted(RESAMPLE), default=DEFAULT_RESAMPLE,
                             help="resize filter (antialiased when downscaling)")
    shard_group.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality")
    shard_group.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                             help="skip images whose header declares more pixels (decompression bombs)")
    shard_group.add_argument("--exclude-near", metavar="DIR_OR_SHARDS",
                             help="evaluation images (an image folder tree, a shard directory, a .tar or "
                                  "a glob of tars): drop pretraining images that are near-duplicates")
    shard_group.add_argument("--near-threshold", type=int, default=DEFAULT_THRESHOLD,
                             help="Hamming distance (of 64 pHash bits) at or below which an image is a "
                                  "near-duplicate")

    run_group = parser.add_argument_group("running")
    run_group.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1),
                           help="worker processes")
    run_group.add_argument("--node-rank", type=int, default=0, help="this node's rank")
    run_group.add_argument("--num-nodes", type=int, default=1, help="number of nodes sharing the build")
    run_group.add_argument("--finalize", action="store_true",
                           help="only write info.json/report.json from the finished shards of all nodes, "
                                "after checking every shard against its recorded sha256 (a damaged one is "
                                "rebuilt)")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")

    reader_group = parser.add_argument_group("reader options")
    reader_group.add_argument("--layout", choices=("auto", "23", "25"), help="yfcc100m column layout")
    reader_group.add_argument("--include-videos", action="store_true", default=None,
                              help="yfcc100m: keep video rows (marker 1)")
    reader_group.add_argument("--machine-tags", action="store_true", default=None,
                              help="yfcc100m: add machine tags to user tags")
    reader_group.add_argument("--licenses", help="yfcc100m: comma-separated licence names to keep")
    reader_group.add_argument("--key-field", help="table: key column")
    reader_group.add_argument("--tags-field", help="table, img2dataset: tags column or json field")
    reader_group.add_argument("--image-field", help="table: image column (path or URL)")
    reader_group.add_argument("--tags-delimiter", help="table, img2dataset: separator of a tags string")
    return parser.parse_args(argv)


READER_OPTIONS = ("layout", "include_videos", "machine_tags", "licenses", "key_field", "tags_field",
                  "image_field", "tags_delimiter")


def config_from(args: argparse.Namespace) -> BuildConfig:
    for flag in ("source", "input", "vocab"):
        if getattr(args, flag) is None:
            raise UserError(f"--{flag} is required (only --finalize runs without it); see --help")
    try:
        image = ImageSettings(args.short_side, args.quality, args.max_pixels, args.resample)
    except ValueError as err:
        raise UserError(f"bad image setting: {err}") from None
    return BuildConfig(out=args.out, vocab=args.vocab, images=args.images, shard_size=args.shard_size,
                       val_fraction=args.val_fraction, image=image, workers=args.workers,
                       exclude_near=args.exclude_near, near_threshold=args.near_threshold,
                       node_rank=args.node_rank, num_nodes=args.num_nodes)


def summary(info: dict, out: Path) -> str:
    counts = info["num_samples"]
    lines = [f"wrote {len(info['shards']['train'])} train shard(s) ({counts['train']} samples) and "
             f"{len(info['shards']['val'])} val shard(s) ({counts['val']} samples) to {out}/",
             f"skipped {info['skipped']['total']} record(s): "
             + (", ".join(f"{k} {v}" for k, v in info["skipped"]["counts"].items()) or "none"),
             f"info:      {out / 'info.json'}",
             f"report:    {out / 'report.json'}",
             f"histogram: {out / 'label_histogram.png'}"]
    return "\n".join(lines)


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    refuse_overwriting_inputs({f"--{flag.replace('_', '-')}": getattr(args, flag)
                               for flag in ("input", "images", "vocab", "exclude_near")}, output_dirs={"--out": args.out})
    if args.finalize:
        print(summary(finalize(args.out, verify=True, workers=args.workers, progress=not args.no_progress), args.out))
        return 0
    config = config_from(args)
    # open_corpus checks that each option given applies to --source.
    reader = open_corpus(args.source, args.input, **{name: getattr(args, name) for name in READER_OPTIONS})
    result = build_shards(reader, config, progress=not args.no_progress)
    if result.damaged:
        print(f"rebuilt {len(result.damaged)} shard(s) whose bytes no longer matched their recorded sha256: "
              f"{', '.join(result.damaged[:10])}{' ...' if len(result.damaged) > 10 else ''}")
    if result.finalized:
        print(summary(result.info, args.out))
    else:
        print(f"node {config.node_rank}/{config.num_nodes}: built {result.built} shard(s), kept "
              f"{result.kept} from an earlier run; {result.other_nodes} belong to other nodes. "
              f"When every node is done, run: python scripts/build_shards.py --out {args.out} --finalize")
    print(f"node {config.node_rank} CPU seconds by phase: "
          + ", ".join(f"{phase} {cost['cpu_s']:.1f}" for phase, cost in result.phases.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
