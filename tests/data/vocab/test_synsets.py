"""WordNet synset alignment on timm's real tables and on small tables written by the test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.errors import UserError
from data.vocab.synsets import (ALL_LEMMAS_CLAIMED, ALL_LEMMAS_DROPPED, FAMILIES, NO_LEMMA_ENTRY,
                          SynsetAliases, family_synsets, synset_alias_map, timm_info_dir)
from data.vocab.tags import Stoplist, TagCanonicalizer

CANON = TagCanonicalizer.from_files()


@pytest.fixture(scope="module")
def in1k() -> SynsetAliases:
    return synset_alias_map("imagenet-1k", CANON)


@pytest.fixture(scope="module")
def in21k() -> SynsetAliases:
    return synset_alias_map("imagenet-21k", CANON)


def _lookup(aliases: SynsetAliases, tag: str) -> str | None:
    return aliases.label_of.get(CANON(tag))


def _assert_one_to_one(aliases: SynsetAliases) -> None:
    reached = {}
    for wnid, (primary, others) in aliases.labels.items():
        for tag in (primary, *others):
            assert aliases.label_of[tag] == wnid, (tag, wnid)
            reached[tag] = wnid
    assert reached == aliases.label_of
    assert not set(aliases.labels) & set(aliases.dropped)
    assert len(aliases.labels) + len(aliases.dropped) == aliases.num_synsets


def test_imagenet_1k_has_1000_synsets(in1k):
    assert len(family_synsets("imagenet-1k")) == 1000
    assert in1k.num_synsets == 1000
    _assert_one_to_one(in1k)
    # crane (machine) and cardigan (sweater) lose their only lemma; 'iPod' is on the default stoplist
    assert in1k.dropped == {"n02963159": ALL_LEMMAS_CLAIMED, "n03126707": ALL_LEMMAS_CLAIMED,
                            "n03584254": ALL_LEMMAS_DROPPED}


def test_lemmas_and_their_spellings_map_to_the_synset(in1k):
    for tag in ("tench", "Tinca tinca", "#TincaTinca"):
        assert _lookup(in1k, tag) == "n01440764"
    assert in1k.labels["n01440764"] == ("tench", ["tincatinca"])
    for tag in ("Great White Shark", "great_white_shark", "great-white-shark", "man-eater"):
        assert _lookup(in1k, tag) == "n01484850"
    primary, aliases = in1k.labels["n01484850"]
    assert primary == "greatwhiteshark" and "carcharodoncarcharias" in aliases


def test_ambiguous_lemma_with_equal_rank_goes_to_the_lower_id(in1k):
    # 'crane' is the first lemma of the bird n02012849 and of the machine n03126707
    assert in1k.label_of["crane"] == "n02012849"
    assert in1k.conflicts["crane"] == ["n02012849", "n03126707"]


def test_ambiguous_lemma_goes_to_the_synset_where_it_ranks_earliest(in1k):
    # n01985128 'crayfish, crawfish, ...' beats n01984695 'spiny lobster, ..., crawfish, crayfish'
    # although its id is higher.
    assert in1k.label_of["crayfish"] == "n01985128"
    assert in1k.conflicts["crayfish"] == ["n01985128", "n01984695"]
    assert in1k.labels["n01984695"][0] == "spinylobster"


def test_imagenet_21k_family(in21k, in1k):
    _assert_one_to_one(in21k)
    assert in21k.num_synsets == 21844                # 21,843 fall-2011 synsets + IN-1k's teddy bear
    assert 20_000 <= len(in21k.labels) <= 21_844
    assert set(family_synsets("imagenet-1k")) <= set(family_synsets("imagenet-21k"))
    # IN-1k synsets win equal-rank ties: 'hen' stays with the chicken, not the generic female bird
    assert in21k.conflicts["hen"][0] == "n01514859"
    assert in21k.label_of["mouse"] == "n03793489"
    # ... so the 21k family loses no IN-1k label that the 1k family keeps
    assert set(in1k.labels) <= set(in21k.labels)
    assert all(in21k.labels[wnid][0] == primary for wnid, (primary, _) in in1k.labels.items())
    assert NO_LEMMA_ENTRY not in in21k.dropped.values()


def test_canonicalizer_drops_are_respected():
    canon = TagCanonicalizer(Stoplist(frozenset({"tench"})))
    aliases = synset_alias_map("imagenet-1k", canon)
    assert aliases.labels["n01440764"] == ("tincatinca", [])
    assert "tench" not in aliases.label_of


def test_deterministic_across_processes(tmp_path: Path):
    script = ("import json,sys; from data.vocab.synsets import synset_alias_map; from data.vocab.tags import "
              "TagCanonicalizer; a = synset_alias_map('imagenet-21k', TagCanonicalizer.from_files()); "
              "json.dump([a.label_of, a.labels, a.conflicts, a.dropped], sys.stdout)")
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env=env, cwd=Path(__file__).resolve().parents[3], check=True)
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1]
    assert len(json.loads(outputs[0])[0]) > 30_000


def _write_tables(directory: Path, in1k: list[str], in21k: list[str], lemmas: dict[str, str]) -> Path:
    (directory / "imagenet_synsets.txt").write_text("\n".join(in1k) + "\n")
    (directory / "imagenet21k_goog_synsets.txt").write_text("\n".join(in21k) + "\n")
    (directory / "imagenet_synset_to_lemma.txt").write_text(
        "".join(f"{wnid}\t{text}\n" for wnid, text in lemmas.items()))
    return directory


def test_rule_on_written_tables(tmp_path: Path):
    info = _write_tables(
        tmp_path, in1k=["n00000009", "n00000005"], in21k=["n00000001", "n00000005", "n00000007", "n00000008"],
        # equal ranks everywhere, so the IN-1k synsets 5 and 9 win over the lower id 1
        lemmas={"n00000001": "bat, Flying Fox",
                "n00000005": "Red Fox, flying fox",
                "n00000007": "2024, photo",           # digit-only and stoplisted: nothing survives
                "n00000009": "bat, cricket bat, bat"})  # the repeated lemma folds; 8 has no entry
    aliases = synset_alias_map("imagenet-21k", CANON, info)
    assert aliases.label_of == {"bat": "n00000009", "cricketbat": "n00000009",
                                "flyingfox": "n00000005", "redfox": "n00000005"}
    assert aliases.labels == {"n00000005": ("redfox", ["flyingfox"]),
                              "n00000009": ("bat", ["cricketbat"])}
    assert aliases.conflicts == {"bat": ["n00000009", "n00000001"],
                                 "flyingfox": ["n00000005", "n00000001"]}
    assert aliases.dropped == {"n00000001": ALL_LEMMAS_CLAIMED, "n00000007": ALL_LEMMAS_DROPPED,
                               "n00000008": NO_LEMMA_ENTRY}
    assert aliases.summary()["dropped_synsets"] == {ALL_LEMMAS_CLAIMED: 1, ALL_LEMMAS_DROPPED: 1,
                                                    NO_LEMMA_ENTRY: 1}
    small = synset_alias_map("imagenet-1k", CANON, info)
    assert small.num_synsets == 2 and small.conflicts == {}


def test_unknown_family_names_the_valid_ones():
    with pytest.raises(UserError, match="imagenet-1k, imagenet-21k"):
        synset_alias_map("imagenet-5k", CANON)
    assert FAMILIES == ("imagenet-1k", "imagenet-21k")


def test_missing_table_names_the_path(tmp_path: Path):
    with pytest.raises(UserError, match=str(tmp_path / "imagenet_synsets.txt")):
        synset_alias_map("imagenet-1k", CANON, tmp_path)
    (tmp_path / "imagenet_synsets.txt").write_text("n01440764\n")
    with pytest.raises(UserError, match="imagenet_synset_to_lemma.txt"):
        synset_alias_map("imagenet-1k", CANON, tmp_path)


def test_timm_info_dir_holds_the_tables():
    for name in ("imagenet_synsets.txt", "imagenet21k_goog_synsets.txt", "imagenet_synset_to_lemma.txt"):
        assert (timm_info_dir() / name).is_file()
