"""WordNet synset alignment: which canonical hashtags name which ImageNet synset.

The tables are the offline ones timm ships in ``timm/data/_info/``:

- ``imagenet_synsets.txt``: the 1,000 ImageNet-1k synset ids (family ``imagenet-1k``).
- ``imagenet21k_goog_synsets.txt``: the 21,843 noun synsets of ImageNet-21k (fall 2011 release).
  Family ``imagenet-21k`` is these *plus* the ImageNet-1k synsets, so that it is a superset of
  ``imagenet-1k`` (one IN-1k synset, n04399382 'teddy, teddy bear', is not in the fall 2011 list):
  21,844 synsets.
- ``imagenet_synset_to_lemma.txt``: ``<wnid>\\t<lemma>, <lemma>, ...``; WordNet lists a synset's
  lemmas most common first ('n01440764\\ttench, Tinca tinca').

Every lemma is passed through the vocabulary's :class:`~data.vocab.tags.TagCanonicalizer`, so the
alignment sees exactly the hashtags the counter sees ('Great White Shark', 'great_white_shark' and
'#greatwhiteshark' all become 'greatwhiteshark'). Lemmas the canonicaliser drops (stoplisted,
digit-only, too long) are left out.

**Ambiguity rule.** A canonical hashtag that is a lemma of two or more synsets goes to exactly one
of them, chosen over the *whole* ImageNet-21k table (the fall-2011 list plus the ImageNet-1k
synsets) whichever family is aligned, so a hashtag whose common sense lies outside the family is
not taken by a rare sense inside it:

1. the synset that is the lemma's most frequent **WordNet sense** (data/vocab/wordnet_senses.py:
   WordNet 3.0 orders the first ``tagsense_cnt`` senses of a lemma by their frequency in the
   semantic concordance); a sense outside that frequency order ranks after every ordered one;
2. then the synset in which it comes *earliest* in the lemma list (position 0 is the synset's
   main name);
3. then an ImageNet-1k synset before any other;
4. then the synset with the lower id (WordNet offsets: a fixed, documented order).

``plane`` is sense 1 of the airplane n02691156 and sense 5 of the carpenter's plane n03954731 (an
ImageNet-1k class): it goes to the airplane, which is not in ImageNet-1k, so the ``imagenet-1k``
alignment has no ``plane`` label and the carpenter's plane keeps ``carpentersplane`` and
``woodworkingplane``. ``light`` goes to the light source n03665366 (sense 2), not the lighter
n03666591 (sense 15). WordNet has no frequency order for ``crane``: position 0 in the bird
n02012849 and the machine n03126707, both ImageNet-1k, so the lower id, the bird.

A family synset keeps only the hashtags it wins: its *primary* tag is the first of its lemmas
that it owns, its aliases are the others it owns. A hashtag a family synset matched but lost to a
synset outside the family is recorded in :attr:`SynsetAliases.lost` (with the winner), and is not
a label of the family; every match is in :attr:`SynsetAliases.conflicts` (winner first), so the
vocabulary report can list both. A synset that owns none (all lemmas dropped by the
canonicaliser, claimed by another synset, or absent from the lemma table) is left out of
:attr:`SynsetAliases.labels` and recorded with the reason in :attr:`SynsetAliases.dropped`. This
keeps the map one-to-one: every tag of a label maps back to that label.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from data.errors import UserError
from data.vocab.tags import TagCanonicalizer
from data.vocab.wordnet_senses import LemmaSenses, lemma_key, read_sense_table

FAMILIES = ("imagenet-1k", "imagenet-21k")

IN1K_TABLE = "imagenet_synsets.txt"
IN21K_TABLE = "imagenet21k_goog_synsets.txt"
LEMMA_TABLE = "imagenet_synset_to_lemma.txt"

# Reasons a family synset is not a label, as recorded in SynsetAliases.dropped.
NO_LEMMA_ENTRY = "no entry in the lemma table"
ALL_LEMMAS_DROPPED = "every lemma dropped by the canonicaliser"
ALL_LEMMAS_CLAIMED = "every lemma claimed by another synset"


@dataclass
class SynsetAliases:
    """The alignment of one synset family to canonical hashtags.

    Invariant: for every ``wnid`` in ``labels`` with ``(primary, aliases)``, ``label_of[t] == wnid``
    for ``t`` in ``[primary, *aliases]``, and every entry of ``label_of`` is reached that way.
    """

    family: str
    label_of: dict[str, str]                          # canonical hashtag -> synset id
    labels: dict[str, tuple[str, list[str]]]          # synset id -> (primary tag, aliases)
    conflicts: dict[str, list[str]]                   # ambiguous hashtag -> every synset it matched
    dropped: dict[str, str] = field(default_factory=dict)  # synset id -> why it is not a label
    num_synsets: int = 0                              # synsets in the family
    lost: dict[str, str] = field(default_factory=dict)  # hashtag of a family synset -> outside winner

    def summary(self) -> dict:
        """Counts for the vocabulary report and docs."""
        reasons: dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        return {"family": self.family, "synsets": self.num_synsets, "labels": len(self.labels),
                "hashtags": len(self.label_of), "ambiguous_hashtags": len(self.conflicts),
                "hashtags_lost_outside_family": len(self.lost),
                "dropped_synsets": dict(sorted(reasons.items()))}


def timm_info_dir() -> Path:
    """timm's ``data/_info`` folder, found without importing timm (which would import torch)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the WordNet tables come from the timm package, which is not installed; "
                        "install the project's pinned requirements (make venv)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"


def _read_table(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"cannot read WordNet table {path}: {err.strerror}; it ships with timm "
                        "(reinstall the pinned timm)") from None


def family_synsets(family: str, info_dir: Path | None = None) -> list[str]:
    """The synset ids of ``family``, sorted, each once."""
    if family not in FAMILIES:
        raise UserError(f"unknown synset family {family!r}; choose one of {', '.join(FAMILIES)}")
    info_dir = info_dir or timm_info_dir()
    wnids = {line.strip() for line in _read_table(info_dir / IN1K_TABLE) if line.strip()}
    if family == "imagenet-21k":
        wnids |= {line.strip() for line in _read_table(info_dir / IN21K_TABLE) if line.strip()}
    return sorted(wnids)


def lemma_table(info_dir: Path | None = None) -> dict[str, list[str]]:
    """Synset id -> its lemmas, most common first, as written in timm's table."""
    path = (info_dir or timm_info_dir()) / LEMMA_TABLE
    table: dict[str, list[str]] = {}
    for lineno, line in enumerate(_read_table(path), 1):
        if not line.strip():
            continue
        wnid, tab, lemmas = line.partition("\t")
        if not tab:
            raise UserError(f"{path}:{lineno}: expected '<wnid>\\t<lemma>, ...', got {line[:60]!r}; "
                            "reinstall the pinned timm")
        table[wnid.strip()] = [lemma.strip() for lemma in lemmas.split(",") if lemma.strip()]
    return table


# Rank of a hashtag in a synset with no WordNet frequency order: after every ordered sense.
UNORDERED = 1 << 30


def _sense_rank(lemmas: list[str], senses: dict[str, LemmaSenses], wnid: str) -> int:
    """The best WordNet frequency rank of ``wnid`` among ``lemmas`` (which all spell one hashtag)."""
    ranks = [senses[key].frequency_rank(wnid) for key in map(lemma_key, lemmas) if key in senses]
    return min((rank for rank in ranks if rank is not None), default=UNORDERED)


def synset_alias_map(family: str, canonicalizer: TagCanonicalizer, info_dir: Path | None = None,
                     senses: dict[str, LemmaSenses] | None = None) -> SynsetAliases:
    """Align ``family``'s synsets to canonical hashtags under the module's ambiguity rule.

    ``senses`` is WordNet's sense order (default: the shipped data/vocab/wordnet_senses.txt)."""
    wnids = family_synsets(family, info_dir)
    members = set(wnids)
    universe = family_synsets("imagenet-21k", info_dir)        # ambiguity is resolved over all of it
    in1k = set(family_synsets("imagenet-1k", info_dir))
    lemmas = lemma_table(info_dir)
    senses = read_sense_table() if senses is None else senses
    dropped: dict[str, str] = {}
    candidates: dict[str, list[tuple[int, int, bool, str]]] = {}   # hashtag -> [rule's sort key]
    canonical: dict[str, list[str]] = {}
    for wnid in universe:
        if wnid not in lemmas:
            if wnid in members:
                dropped[wnid] = NO_LEMMA_ENTRY
            continue
        spellings: dict[str, list[str]] = {}     # canonical hashtag -> the lemmas spelling it, in order
        for lemma in lemmas[wnid]:
            tag = canonicalizer(lemma)
            if tag is not None:
                spellings.setdefault(tag, []).append(lemma)
        canonical[wnid] = list(spellings)
        if not spellings and wnid in members:
            dropped[wnid] = ALL_LEMMAS_DROPPED
        for position, (tag, spelled_by) in enumerate(spellings.items()):
            candidates.setdefault(tag, []).append(
                (_sense_rank(spelled_by, senses, wnid), position, wnid not in in1k, wnid))

    label_of: dict[str, str] = {}
    conflicts: dict[str, list[str]] = {}
    lost: dict[str, str] = {}
    for tag, matches in candidates.items():
        ranked = [wnid for *_, wnid in sorted(matches)]
        if not members.intersection(ranked):
            continue
        if ranked[0] in members:
            label_of[tag] = ranked[0]
        else:
            lost[tag] = ranked[0]
        if len(ranked) > 1:
            conflicts[tag] = ranked

    labels: dict[str, tuple[str, list[str]]] = {}
    for wnid in wnids:
        owned = [tag for tag in canonical.get(wnid, []) if label_of.get(tag) == wnid]
        if owned:
            labels[wnid] = (owned[0], owned[1:])
        elif wnid not in dropped:
            dropped[wnid] = ALL_LEMMAS_CLAIMED
    return SynsetAliases(family, dict(sorted(label_of.items())), labels, dict(sorted(conflicts.items())),
                         dict(sorted(dropped.items())), len(wnids), dict(sorted(lost.items())))
