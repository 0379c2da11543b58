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
of them, chosen deterministically:

1. the synset in which it comes *earliest* in the lemma list (position 0 is WordNet's most common
   name for the synset, so a hashtag that is one synset's main name and another's rare synonym
   goes to the first);
2. on equal positions, an ImageNet-1k synset before any other (this only matters in the
   ``imagenet-21k`` family: the 1,000 synsets transfer is evaluated on keep their hashtags, e.g.
   'hen' stays with the IN-1k chicken n01514859 rather than the generic female bird n01321123);
3. then the synset with the lower id (the ids are WordNet offsets, so this is a fixed, documented
   order, not a judgement of which sense is more common).

'crane' is the first lemma of both n02012849 (the bird) and n03126707 (the machine) and goes to
the bird; 'cardigan' is the first lemma of the dog n02113186 ('Cardigan, Cardigan Welsh corgi')
and of the sweater n02963159, and goes to the dog. Every match is kept in
:attr:`SynsetAliases.conflicts` (winner first) so the vocabulary report can list them.

A synset keeps only the hashtags it wins: its *primary* tag is the first of its lemmas that it
owns, its aliases are the others it owns. A synset that owns none (all lemmas dropped by the
canonicaliser, claimed by another synset, or absent from the lemma table) is left out of
:attr:`SynsetAliases.labels` and recorded with the reason in :attr:`SynsetAliases.dropped`. So
the n03126707 'crane' machine is not a label of the aligned vocabulary: no hashtag can tell it
from the bird. This keeps the map one-to-one: every tag of a label maps back to that label.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from data.errors import UserError
from data.vocab.tags import TagCanonicalizer

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

    def summary(self) -> dict:
        """Counts for the vocabulary report and docs."""
        reasons: dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        return {"family": self.family, "synsets": self.num_synsets, "labels": len(self.labels),
                "hashtags": len(self.label_of), "ambiguous_hashtags": len(self.conflicts),
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


def synset_alias_map(family: str, canonicalizer: TagCanonicalizer,
                     info_dir: Path | None = None) -> SynsetAliases:
    """Align ``family``'s synsets to canonical hashtags under the module's ambiguity rule."""
    wnids = family_synsets(family, info_dir)
    in1k = set(family_synsets("imagenet-1k", info_dir))
    lemmas = lemma_table(info_dir)
    dropped: dict[str, str] = {}
    candidates: dict[str, list[tuple[int, bool, str]]] = {}   # hashtag -> [rule's sort key]
    canonical: dict[str, list[str]] = {}
    for wnid in wnids:
        if wnid not in lemmas:
            dropped[wnid] = NO_LEMMA_ENTRY
            continue
        # Lemma order is kept (a hashtag's position is its rank in the rule); duplicates fold.
        canonical[wnid] = canonicalizer.canonical_set(lemmas[wnid])
        if not canonical[wnid]:
            dropped[wnid] = ALL_LEMMAS_DROPPED
        for position, tag in enumerate(canonical[wnid]):
            candidates.setdefault(tag, []).append((position, wnid not in in1k, wnid))

    label_of: dict[str, str] = {}
    conflicts: dict[str, list[str]] = {}
    for tag, matches in candidates.items():
        ranked = [wnid for *_, wnid in sorted(matches)]
        label_of[tag] = ranked[0]
        if len(ranked) > 1:
            conflicts[tag] = ranked

    labels: dict[str, tuple[str, list[str]]] = {}
    for wnid, tags in canonical.items():
        owned = [tag for tag in tags if label_of[tag] == wnid]
        if owned:
            labels[wnid] = (owned[0], owned[1:])
        elif wnid not in dropped:
            dropped[wnid] = ALL_LEMMAS_CLAIMED
    return SynsetAliases(family, dict(sorted(label_of.items())), labels,
                         dict(sorted(conflicts.items())), dict(sorted(dropped.items())), len(wnids))
