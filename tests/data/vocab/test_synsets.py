"""WordNet synset alignment on timm's real tables and on small tables written by the test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.errors import UserError
from data.corpus.yfcc import YfccReader
from data.vocab.build import build_vocabulary
from data.vocab.synsets import (ALL_LEMMAS_CLAIMED, ALL_LEMMAS_DROPPED, FAMILIES, NO_LEMMA_ENTRY,
                                SynsetAliases, family_synsets, synset_alias_map, timm_info_dir)
from data.vocab.tags import Stoplist, TagCanonicalizer
from data.vocab.wordnet_senses import LemmaSenses

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
    # 'iPod' is on the default stoplist; crane (machine) and cardigan (sweater) lose their only
    # lemma to another IN-1k synset, hen (n01514859 'adult female bird') hers to the chicken
    # n01792640, which is WordNet's first sense of 'hen' and not an ImageNet-1k class.
    assert in1k.dropped["n03584254"] == ALL_LEMMAS_DROPPED
    for wnid in ("n02963159", "n03126707", "n01514859"):
        assert in1k.dropped[wnid] == ALL_LEMMAS_CLAIMED
    assert set(in1k.dropped.values()) == {ALL_LEMMAS_CLAIMED, ALL_LEMMAS_DROPPED}
    assert in1k.lost["hen"] == "n01792640"


def test_a_lemma_whose_common_sense_lies_outside_imagenet_1k_is_not_taken(in1k):
    # 'light': sense 15 of the lighter n03666591 (IN-1k), sense 2 of the light source n03665366;
    # 'plane': sense 5 of the carpenter's plane n03954731 (IN-1k), sense 1 of the airplane n02691156.
    assert in1k.lost["light"] == "n03665366" and "light" not in in1k.label_of
    assert in1k.lost["plane"] == "n02691156" and "plane" not in in1k.label_of
    assert in1k.labels["n03666591"] == ("lighter", ["igniter", "ignitor"])
    assert in1k.labels["n03954731"] == ("carpentersplane", ["woodworkingplane"])
    assert in1k.conflicts["plane"] == ["n02691156", "n03954731", "n03955296"]
    assert set(in1k.lost.values()).isdisjoint(family_synsets("imagenet-1k"))
    assert in1k.summary()["hashtags_lost_outside_family"] == len(in1k.lost) > 0


def test_real_yfcc_rows_tagged_light_or_plane_get_no_lighter_or_carpenters_plane_label(shared_data):
    reader = YfccReader(shared_data / "yfcc100m_sample" / "yfcc100m_dataset-head2000.unique.tsv")
    vocab, _ = build_vocabulary(reader, CANON, align="imagenet-1k", min_count=1, progress=False)
    by_synset = {label.synset: label.id for label in vocab.labels}
    tagged = {"light": 0, "plane": 0}
    for record in reader.records():
        canonical = set(CANON.canonical_set(record.tags))
        ids = set(vocab.label_ids(record.tags))
        for tag, wrong in (("light", "n03666591"), ("plane", "n03954731")):
            if tag in canonical:
                tagged[tag] += 1
                if not canonical & {"lighter", "igniter", "ignitor", "carpentersplane", "woodworkingplane"}:
                    assert by_synset.get(wrong) not in ids, (record.key, tag, wrong)
    assert tagged["light"] >= 5 and tagged["plane"] >= 1     # the real rows do carry both tags
    assert vocab.label_ids(["light", "plane", "#Light"]) == []


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
    # WordNet's most frequent sense wins: 'hen' is the chicken n01792640, 'mouse' the rodent
    assert in21k.conflicts["hen"] == ["n01792640", "n01514859", "n01321123"]
    assert in21k.label_of["mouse"] == "n02330245"
    assert in21k.lost == {}
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


NO_SENSES: dict[str, LemmaSenses] = {}


def test_rule_on_written_tables(tmp_path: Path):
    info = _write_tables(
        tmp_path, in1k=["n00000009", "n00000005"], in21k=["n00000001", "n00000005", "n00000007", "n00000008"],
        # equal ranks everywhere, so the IN-1k synsets 5 and 9 win over the lower id 1
        lemmas={"n00000001": "bat, Flying Fox",
                "n00000005": "Red Fox, flying fox",
                "n00000007": "2024, photo",           # digit-only and stoplisted: nothing survives
                "n00000009": "bat, cricket bat, bat"})  # the repeated lemma folds; 8 has no entry
    aliases = synset_alias_map("imagenet-21k", CANON, info, NO_SENSES)
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
    # The 1k family resolves over the same 21k table: 'bat' and 'flyingfox' stay with 9 and 5.
    small = synset_alias_map("imagenet-1k", CANON, info, NO_SENSES)
    assert small.num_synsets == 2 and small.lost == {}
    assert small.labels == aliases.labels and small.conflicts == aliases.conflicts


def test_wordnet_sense_order_comes_first_and_a_lost_hashtag_is_reported(tmp_path: Path):
    info = _write_tables(tmp_path, in1k=["n00000002", "n00000003"], in21k=["n00000001", "n00000004"],
                         lemmas={"n00000001": "airplane, plane",     # plane: position 1, WordNet sense 1
                                 "n00000002": "plane, carpenter's plane",   # position 0, sense 3
                                 "n00000003": "mole, breakwater",    # mole: sense 2 of 2, unordered
                                 "n00000004": "mole"})               # mole: sense 1, no frequency order
    senses = {"plane": LemmaSenses(3, {"n00000001": 1, "n00000002": 3}),
              "mole": LemmaSenses(0, {"n00000004": 1, "n00000003": 2})}
    in1k_small = synset_alias_map("imagenet-1k", CANON, info, senses)
    assert in1k_small.lost == {"plane": "n00000001"}
    assert in1k_small.labels == {"n00000002": ("carpentersplane", []), "n00000003": ("mole", ["breakwater"])}
    assert in1k_small.conflicts == {"mole": ["n00000003", "n00000004"], "plane": ["n00000001", "n00000002"]}
    # A sense outside the frequency order falls back to position, then IN-1k first: 'mole' stays with 3.
    # Without the sense order, 'plane' would go to position 0, the IN-1k synset.
    assert synset_alias_map("imagenet-1k", CANON, info, NO_SENSES).label_of["plane"] == "n00000002"


def test_unknown_family_names_the_valid_ones():
    with pytest.raises(UserError, match="imagenet-1k, imagenet-21k"):
        synset_alias_map("imagenet-5k", CANON)
    assert FAMILIES == ("imagenet-1k", "imagenet-21k")


def test_missing_table_names_the_path(tmp_path: Path):
    with pytest.raises(UserError, match=str(tmp_path / "imagenet_synsets.txt")):
        synset_alias_map("imagenet-1k", CANON, tmp_path)
    (tmp_path / "imagenet_synsets.txt").write_text("n01440764\n")
    with pytest.raises(UserError, match="imagenet21k_goog_synsets.txt"):   # ambiguity is resolved over 21k
        synset_alias_map("imagenet-1k", CANON, tmp_path)
    (tmp_path / "imagenet21k_goog_synsets.txt").write_text("n01440764\n")
    with pytest.raises(UserError, match="imagenet_synset_to_lemma.txt"):
        synset_alias_map("imagenet-1k", CANON, tmp_path)


def test_timm_info_dir_holds_the_tables():
    for name in ("imagenet_synsets.txt", "imagenet21k_goog_synsets.txt", "imagenet_synset_to_lemma.txt"):
        assert (timm_info_dir() / name).is_file()
