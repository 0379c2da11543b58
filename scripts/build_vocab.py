"""Build the hashtag vocabulary (vocab.json) of a corpus, with its report and Zipf plot.

    python scripts/build_vocab.py --source yfcc100m --input yfcc100m_dataset.bz2 --top-k 17000 --out vocab.json
    python scripts/build_vocab.py --source yfcc100m --input yfcc100m_dataset.bz2 --align imagenet-1k --out vocab-1k.json
    python scripts/build_vocab.py --source csv --input photos.csv --key-field guid --tags-field hashtags \\
        --tags-delimiter ';' --top-k 1000 --out vocab.json

Counts every canonical tag exactly over the whole corpus (in parallel, --workers), keeps those
carried by at least --min-count images, the --top-k most frequent, and writes vocab.json plus
<out stem>.report.json and <out stem>.zipf.png beside it. With --align a label is an ImageNet
synset counted over all its hashtags. See docs/vocabulary.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.corpus import SOURCES, open_corpus
from data.errors import UserError, cli_main
from data.overwrite_guard import refuse_overwriting_inputs
from data.vocab.build import build_vocabulary
from data.vocab.synsets import FAMILIES
from data.vocab.tags import DEFAULT_MAX_LENGTH, DEFAULT_STOPLIST, TagCanonicalizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io_group = parser.add_argument_group("inputs and outputs")
    io_group.add_argument("--source", required=True, help=f"corpus format: {', '.join(SOURCES)}")
    io_group.add_argument("--input", type=Path, required=True,
                          help="corpus file (yfcc100m_dataset, plain or .bz2; a table; img2dataset output)")
    io_group.add_argument("--out", type=Path, required=True,
                          help="vocab.json to write; the report and plot go beside it")

    select = parser.add_argument_group("selection")
    select.add_argument("--top-k", type=int, help="keep the K most frequent labels (default: all)")
    select.add_argument("--min-count", type=int, default=1,
                        help="keep labels carried by at least N images (default: 1)")
    select.add_argument("--align", help=f"labels are WordNet synsets of this family: {', '.join(FAMILIES)} "
                                        "(default: raw canonical tags)")

    canon = parser.add_argument_group("canonicalisation (docs/tags.md)")
    canon.add_argument("--stoplist", default=str(DEFAULT_STOPLIST),
                       help="stoplist file of non-visual tags, or 'none' (default: data/stoplist.txt)")
    canon.add_argument("--max-tag-length", type=int, default=DEFAULT_MAX_LENGTH,
                       help=f"drop canonical tags longer than this (default: {DEFAULT_MAX_LENGTH})")

    run = parser.add_argument_group("running")
    run.add_argument("--workers", type=int, default=0, help="counting processes (default: 0, one per CPU)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    yfcc = parser.add_argument_group("yfcc100m options")
    yfcc.add_argument("--layout", choices=("auto", "23", "25"),
                      help="23 (Webscope) or 25 (mirror) columns; default auto-detect")
    yfcc.add_argument("--machine-tags", action="store_true", default=None,
                      help="count machine tags as well as user tags")
    yfcc.add_argument("--include-videos", action="store_true", default=None,
                      help="keep video rows (marker 1); they are skipped and counted by default")
    yfcc.add_argument("--licenses", help="keep only these licence families, comma separated: by, by-sa, "
                                         "by-nd, by-nc, by-nc-sa, by-nc-nd, cc0, pdm, nkcr, or the presets "
                                         "commercial, cc-by-family")

    table = parser.add_argument_group("table and img2dataset options")
    table.add_argument("--tags-field", help="column/json field holding the tags")
    table.add_argument("--key-field", help="column holding the unique key (tables)")
    table.add_argument("--image-field", help="column holding the image path or URL (tables)")
    table.add_argument("--tags-delimiter", help="separator when tags are one string")
    return parser.parse_args(argv)


def canonicalizer_from(args: argparse.Namespace) -> TagCanonicalizer:
    if args.max_tag_length < 1:
        raise UserError(f"--max-tag-length must be at least 1, got {args.max_tag_length}")
    stoplist = None if args.stoplist.lower() == "none" else args.stoplist
    return TagCanonicalizer.from_files(stoplist, args.max_tag_length)


def report_paths(out: Path) -> tuple[Path, Path]:
    """vocab.json -> vocab.report.json, vocab.zipf.png."""
    stem = out.name[:-len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.report.json"), out.with_name(f"{stem}.zipf.png")


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_path, png_path = report_paths(args.out)
    stoplist = None if args.stoplist.lower() == "none" else args.stoplist
    refuse_overwriting_inputs({"--input": args.input, "--stoplist": stoplist},
                              {"--out": args.out, "the report of --out": json_path, "the plot of --out": png_path})
    if args.align is not None and args.align not in FAMILIES:
        raise UserError(f"unknown --align family {args.align!r}; use one of: {', '.join(FAMILIES)}")
    if args.workers < 0:
        raise UserError(f"--workers must be 0 (one per CPU) or more, got {args.workers}")
    canonicalizer = canonicalizer_from(args)
    reader = open_corpus(args.source, args.input, layout=args.layout, machine_tags=args.machine_tags,
                         include_videos=args.include_videos, licenses=args.licenses,
                         tags_field=args.tags_field, key_field=args.key_field,
                         image_field=args.image_field, tags_delimiter=args.tags_delimiter)
    vocab, report = build_vocabulary(reader, canonicalizer, top_k=args.top_k, min_count=args.min_count,
                                     align=args.align, workers=args.workers, progress=not args.no_progress)
    vocab.save(args.out)
    report.write(json_path, png_path)
    print(report.summary(json_path, png_path, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
