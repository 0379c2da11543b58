"""The planning pass's per-record rules (data/shards/plan.py): the train/val split of a key and the
tar-safe sample key. The plan as a whole is tested through the builder (test_build.py)."""
from __future__ import annotations

from data.shards.plan import split_of, tar_safe_key


def test_val_split_is_a_stable_fraction_of_keys():
    keys = [f"photo{i}" for i in range(20_000)]
    share = sum(split_of(k, 0.2) == "val" for k in keys) / len(keys)
    assert abs(share - 0.2) < 0.015  # binomial sd 0.0028: more than 5 sd
    assert [split_of(k, 0.2) for k in keys[:100]] == [split_of(k, 0.2) for k in keys[:100]]
    assert all(split_of(k, 0.0) == "train" for k in keys[:1000])


def test_sample_keys_are_tar_safe_stable_and_unique():
    assert tar_safe_key("12345") == "12345" and tar_safe_key("a_b-C") == "a_b-C"
    odd = ["a.b", "a/b", "a_b.", "../etc/passwd", "ünïcode", "x" * 300, ".", "a b"]
    keys = [tar_safe_key(k) for k in odd]
    assert len(set(keys)) == len(keys)
    assert all(len(k) <= 93 and "." not in k and "/" not in k and k for k in keys)
    assert keys == [tar_safe_key(k) for k in odd]
