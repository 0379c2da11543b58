"""WordNet 3.0's sense order for the lemmas that name more than one ImageNet synset.

The synset alignment (data/vocab/synsets.py) has to decide which synset an ambiguous hashtag
names: ``plane`` is a lemma of the airplane n02691156, of the carpenter's plane n03954731 and of
the planing machine n03955296. WordNet answers it: its ``index.noun`` lists every noun lemma's
senses in order, and the first ``tagsense_cnt`` of them are ordered by how often each sense was
tagged in the Princeton semantic concordance (the others follow in the lexicographers' order,
which says nothing about frequency). For ``plane``: 3 tagged senses, sense 1 the airplane, the
planing machine sense 4, the carpenter's plane sense 5.

``wordnet_senses.txt`` (next to this module, shipped with the package) holds that order for every
lemma of the ImageNet-21k synsets (the fall-2011 list plus the ImageNet-1k synsets) whose spelling
(:func:`data.vocab.tags.normalize`) is shared by two or more of them, restricted to those synsets.
One line per lemma::

    plane<TAB>3<TAB>n02691156:1 n03955296:4 n03954731:5

(the lemma as WordNet writes it, lower case with ``_`` for spaces; the number of frequency-ordered
senses; ``<wnid>:<sense number>`` for each ImageNet synset the lemma names). The file is generated
from WordNet 3.0's ``index.noun`` and timm's tables by ``python scripts/wordnet_senses.py
--index-noun <WordNet 3.0 dict>/index.noun`` and carries WordNet's licence in its header.
ImageNet's ids are WordNet 3.0 noun offsets, so no mapping is needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data.atomic_write import write_text
from data.errors import UserError
from data.vocab.tags import normalize

SENSE_TABLE = Path(__file__).with_name("wordnet_senses.txt")

WORDNET_LICENSE = """\
WordNet Release 3.0. This software and database is being provided to you, the LICENSEE, by
Princeton University under the following license. By obtaining, using and/or copying this
software and database, you agree that you have read, understood, and will comply with these
terms and conditions.: Permission to use, copy, modify and distribute this software and database
and its documentation for any purpose and without fee or royalty is hereby granted, provided that
you agree to comply with the following copyright notice and statements, including the disclaimer,
and that the same appear on ALL copies of the software, database and documentation, including
modifications that you make for internal use or for distribution.
WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.
THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR
WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES
NO REPRESENTATIONS OR WARRANTIES OF MERCHANT- ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT
THE USE OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY
PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS.
The name of Princeton University or Princeton may not be used in advertising or publicity
pertaining to distribution of the software and/or database. Title to copyright in this software,
database and any associated documentation shall at all times remain with Princeton University
and LICENSEE agrees to preserve same."""


@dataclass(frozen=True)
class LemmaSenses:
    """One lemma's ImageNet senses: ``sense[wnid]`` is WordNet's sense number (1 = first)."""

    tagged: int                 # the first `tagged` senses are ordered by concordance frequency
    sense: dict[str, int]

    def frequency_rank(self, wnid: str) -> int | None:
        """0 for the most frequent sense, ...; None when WordNet gives no frequency order for it."""
        number = self.sense.get(wnid)
        return number - 1 if number is not None and number <= self.tagged else None


def lemma_key(lemma: str) -> str:
    """A lemma as index.noun writes it: 'Great White Shark' -> 'great_white_shark'."""
    return "_".join(lemma.strip().lower().split())


def read_sense_table(path: str | Path = SENSE_TABLE) -> dict[str, LemmaSenses]:
    """The table written by :func:`write_sense_table`, keyed by :func:`lemma_key`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"cannot read the WordNet sense table {path}: {err.strerror}; it ships with "
                        "openwsl (reinstall it, or regenerate it with scripts/wordnet_senses.py)") from None
    table: dict[str, LemmaSenses] = {}
    for lineno, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        try:
            lemma, tagged, senses = line.split("\t")
            pairs = (item.split(":") for item in senses.split())
            table[lemma] = LemmaSenses(int(tagged), {wnid: int(number) for wnid, number in pairs})
        except ValueError:
            raise UserError(f"{path}:{lineno}: expected '<lemma>\\t<tagged senses>\\t<wnid>:<sense> ...', "
                            f"got {line[:60]!r}; regenerate it with scripts/wordnet_senses.py") from None
    return table


def parse_index_noun(path: str | Path) -> dict[str, tuple[int, list[str]]]:
    """WordNet's ``index.noun``: lemma -> (tagsense_cnt, synset ids in sense order).

    A line is ``lemma pos synset_cnt p_cnt [ptr_symbol]*p_cnt sense_cnt tagsense_cnt offset*synset_cnt``;
    the licence header's lines start with a space."""
    path = Path(path)
    index: dict[str, tuple[int, list[str]]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read WordNet's index.noun {path}: {err}; pass the index.noun of a "
                        "WordNet 3.0 dict/ folder") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(" "):
            continue
        parts = line.split()
        try:
            synset_cnt, p_cnt = int(parts[2]), int(parts[3])
            tagged = int(parts[5 + p_cnt])
            offsets = parts[len(parts) - synset_cnt:]
            if parts[1] != "n" or len(offsets) != synset_cnt or not all(o.isdigit() for o in offsets):
                raise ValueError
        except (ValueError, IndexError):
            raise UserError(f"{path}:{lineno}: not an index.noun line ({line[:60]!r}); pass the "
                            "index.noun of a WordNet 3.0 dict/ folder") from None
        index[parts[0]] = (tagged, [f"n{offset}" for offset in offsets])
    return index


def ambiguous_lemmas(synsets: list[str], lemmas: dict[str, list[str]]) -> set[str]:
    """Lemma keys of ``synsets`` whose spelling (normalize) is shared by two or more of them."""
    spelled: dict[str, set[str]] = {}
    for wnid in synsets:
        for lemma in lemmas.get(wnid, []):
            spelled.setdefault(normalize(lemma), set()).add(wnid)
    return {lemma_key(lemma) for wnid in synsets for lemma in lemmas.get(wnid, [])
            if len(spelled[normalize(lemma)]) > 1}


def write_sense_table(index_noun: str | Path, out: str | Path, synsets: list[str],
                      lemmas: dict[str, list[str]]) -> int:
    """Write the sense order of ``synsets``' ambiguous lemmas to ``out``; returns the lines written."""
    index = parse_index_noun(index_noun)
    universe = set(synsets)
    rows = []
    for key in sorted(ambiguous_lemmas(synsets, lemmas)):
        if key not in index:
            continue
        tagged, order = index[key]
        senses = " ".join(f"{wnid}:{number}" for number, wnid in enumerate(order, 1) if wnid in universe)
        if senses:
            rows.append(f"{key}\t{tagged}\t{senses}\n")
    header = ("# WordNet 3.0 sense order (index.noun) of the lemmas shared by two or more ImageNet-21k\n"
              "# synsets; written by scripts/wordnet_senses.py, read by data/vocab/wordnet_senses.py.\n"
              "# <lemma>\\t<frequency-ordered senses>\\t<wnid>:<sense number> ...\n#\n"
              + "".join(f"# {line}\n" for line in WORDNET_LICENSE.splitlines()))
    write_text(out, header + "".join(rows))
    return len(rows)
