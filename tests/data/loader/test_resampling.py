"""Statistical and contract tests for hashtag-frequency resampling (data/loader/resampling.py).

Every claim about the stream is measured on what the stage yields (the copies of each input, their
labels), against rates computed here from first principles (:func:`expected_rates`).

How the tolerances are derived. The stage emits an input with rate r = ⌊r⌋ + f as ⌊r⌋ copies plus
one more with probability f, independently per input. An item (a label in a single-label corpus, an
image in a multi-label one) whose inputs all share the rate r and that is seen m times is therefore
emitted m·⌊r⌋ + Binomial(m, f) times: items with f = 0 are checked for exact equality, and over the
others with m·f·(1−f) ≥ 8, Σ (O − m·r)² / (m·f·(1−f)) is, by the normal approximation of each
binomial, chi-square with one degree of freedom per item, rejected at significance α = 0.001 against
the Wilson–Hilferty quantile; the few narrower ones are each held to Bernstein's inequality at
0.001 / items (rigorous, no approximation). Sums that mix items (total emissions, the per-label
hashtag draws of multi-label images) are checked within z = 4.4 standard deviations, their exact
standard deviation computed from the same Bernoulli variances (two-sided α ≈ 1e-5 each, kept small
because several are checked at once). Seeds are fixed, so each test is deterministic; the bounds say
how unlucky a seed would have to be for a correct sampler to fail.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data.atomic_write import write_json
from data.errors import UserError
from data.loader.resampling import (DRAWN_KEY, LabelResampler, image_weights, label_distribution, label_weights,
                                    mean_image_weight, total_variation)

QS = (1.0, 0.5, 0.0)
Z_ALPHA = 3.0902  # upper 0.001 quantile of the standard normal
Z_SUM = 4.4


def chi_square_quantile(df: int, z: float = Z_ALPHA) -> float:
    """Wilson–Hilferty approximation of the chi-square quantile at the normal quantile ``z``."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def bernstein_bound(variance: np.ndarray, delta: float) -> np.ndarray:
    """t with P(|X − E X| ≥ t) ≤ delta for a sum X of independent Bernoulli variables (Bernstein)."""
    log_term = math.log(2 / delta)
    return log_term / 3 + np.sqrt((log_term / 3) ** 2 + 2 * variance * log_term)


def assert_binomial_emissions(observed: np.ndarray, seen: np.ndarray, rates: np.ndarray) -> None:
    """observed[i] = seen[i]·⌊r_i⌋ + Binomial(seen[i], frac r_i), item by item (module docstring)."""
    floor = np.floor(rates)
    frac = rates - floor
    exact = (frac < 1e-9) | (frac > 1 - 1e-9)
    np.testing.assert_array_equal(observed[exact], seen[exact] * np.round(rates[exact]))
    variance = seen * frac * (1 - frac)
    deviation = np.abs(observed - seen * rates)
    # Items whose binomial is too narrow for the normal approximation: Bernstein's bound instead.
    narrow = ~exact & (variance < 8)
    assert np.all(deviation[narrow] <= bernstein_bound(variance[narrow], 1e-3 / rates.size))
    normal = ~exact & ~narrow
    if normal.any():
        statistic = float(np.sum(deviation[normal] ** 2 / variance[normal]))
        assert statistic < chi_square_quantile(int(normal.sum())), (statistic, int(normal.sum()))


def draw_sd(corpus: list[list[int]], counts: np.ndarray, q: float, rates: np.ndarray,
            passes: int) -> np.ndarray:
    """Standard deviation of each label's hashtag draws: every copy of I adds n_h^(q−1)/w(I) to h ∈ I,
    and the copies of I vary by passes independent Bernoulli(frac r_I) variables."""
    weights, image_w = label_weights(counts, q), image_weights(corpus, counts, q)
    frac = rates - np.floor(rates)
    variance = np.zeros(counts.size)
    for labels, f, w in zip(corpus, frac, image_w):
        variance[labels] += passes * f * (1 - f) * (weights[labels] / w) ** 2
    return np.sqrt(variance)


def zipf_labels(labels: int, images: int, seed: int) -> np.ndarray:
    p = 1.0 / np.arange(1, labels + 1)
    return np.random.default_rng(seed).choice(labels, size=images, p=p / p.sum())


def multi_label_corpus(labels: int, images: int, seed: int, most: int = 4) -> list[list[int]]:
    """1..most distinct Zipf-drawn labels per image."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, labels + 1)
    p /= p.sum()
    return [sorted(rng.choice(labels, size=rng.integers(1, most + 1), replace=False, p=p).tolist())
            for _ in range(images)]


def as_samples(corpus) -> list[dict]:
    return [{"__key__": f"{i:06d}", "labels": [int(h) for h in labels]} for i, labels in enumerate(corpus)]


def expected_rates(corpus, counts: np.ndarray, q: float, cap: float | None = None) -> np.ndarray:
    """r(I) = min(w(I) / mean_w, cap) from first principles (docs/sampling.md), independent of the
    module: w(I) = Σ_{h∈I} n_h^(q−1), mean_w its mean over the images (unlabelled ones included)."""
    weights = np.array([sum(float(counts[h]) ** (q - 1) for h in labels) for labels in corpus])
    rates = weights / weights.mean()
    return rates if cap is None else np.minimum(rates, cap)


def label_rates(corpus: np.ndarray, rates: np.ndarray, labels: int) -> np.ndarray:
    """Per label, the rate of the images carrying it, in a single-label corpus (0 for an unused label)."""
    per_label = np.zeros(labels)
    per_label[corpus] = rates
    return per_label


@dataclass
class Emitted:
    """What the stage yielded over ``passes`` passes of a corpus: the copies of each image and the
    number of inputs it consumed."""

    copies: np.ndarray  # per image of the corpus
    inputs: int

    @property
    def total(self) -> int:
        return int(self.copies.sum())

    def label_counts(self, corpus, num_labels: int) -> np.ndarray:
        """Per label, the emitted samples carrying it."""
        counts = np.zeros(num_labels, dtype=np.int64)
        for labels, n in zip(corpus, self.copies):
            counts[list(labels)] += n
        return counts

    def draws(self, corpus, counts: np.ndarray, q: float) -> np.ndarray:
        """Per label, the hashtag draws the emitted samples stand for: each copy of I adds
        n_h^(q−1)/w(I) to every h ∈ I (its expectation is emitted · p_h without a cap)."""
        draws = np.zeros(counts.size)
        for labels, n in zip(corpus, self.copies):
            if n and len(labels):
                share = np.asarray(counts[list(labels)], dtype=np.float64) ** (q - 1)
                draws[list(labels)] += n * share / share.sum()
        return draws


def stream(resampler: LabelResampler, samples: list[dict], passes: int) -> Emitted:
    """Run ``passes`` passes of ``samples`` through the stage and count what it yields, by key."""
    inputs = 0

    def source() -> Iterator[dict]:
        nonlocal inputs
        for _ in range(passes):
            for sample in samples:
                inputs += 1
                yield sample

    emitted = Counter(sample["__key__"] for sample in resampler(source()))
    return Emitted(np.array([emitted[s["__key__"]] for s in samples], dtype=np.int64), inputs)


# --- the math, from the label counts alone ---------------------------------------------------------

@pytest.mark.parametrize("q", QS)
def test_mean_weight_from_counts_equals_mean_over_images(q: float) -> None:
    corpus = multi_label_corpus(12, 300, seed=1)
    counts = np.bincount(np.concatenate(corpus), minlength=14)  # two labels no image carries
    weights = image_weights(corpus + [[]], counts, q)
    assert weights[-1] == 0
    assert mean_image_weight(counts, q, num_images=len(corpus) + 1) == pytest.approx(weights.mean(), rel=1e-12)
    p = label_distribution(counts, q)
    assert p[12:].tolist() == [0, 0] and p.sum() == pytest.approx(1, abs=1e-15)
    np.testing.assert_allclose(p[:12], counts[:12] ** q / np.sum(counts[:12] ** q), rtol=1e-12)


@pytest.mark.parametrize("q", QS)
def test_rates_reproduce_the_target_and_average_one(q: float) -> None:
    """Expected emissions per label, n_h·r_h, are exactly N·p_h: the hashtag-then-image draw."""
    corpus = zipf_labels(40, 3000, seed=2)
    counts = np.bincount(corpus, minlength=40)
    rates = expected_rates(corpus[:, None], counts, q)
    np.testing.assert_allclose(image_weights(corpus[:, None], counts, q) / mean_image_weight(counts, q), rates,
                               rtol=1e-12)
    assert rates.mean() == pytest.approx(1, rel=1e-12)
    per_label = np.bincount(corpus, weights=rates, minlength=40)
    np.testing.assert_allclose(per_label / corpus.size, label_distribution(counts, q), rtol=1e-10)


# --- the stream realises the rates -----------------------------------------------------------------

@pytest.mark.parametrize("q", QS)
def test_single_label_stream_matches_target(q: float) -> None:
    labels, images, passes = 50, 4000, 25
    corpus = zipf_labels(labels, images, seed=3)
    counts = np.bincount(corpus, minlength=labels)
    emitted = stream(LabelResampler(counts, q=q, seed=11), as_samples(corpus[:, None]), passes)
    assert emitted.inputs == images * passes
    rates = label_rates(corpus, expected_rates(corpus[:, None], counts, q), labels)
    realised = emitted.label_counts(corpus[:, None], labels)
    assert_binomial_emissions(realised, passes * counts, rates)
    # Total emissions: mean exactly the inputs (rate 1 on average), variance Σ m·f(1−f).
    frac = rates - np.floor(rates)
    sd = math.sqrt(float(np.sum(passes * counts * frac * (1 - frac))))
    assert abs(emitted.total - images * passes) <= Z_SUM * sd + 1e-9
    # The realised distribution is far closer to the target than pure multinomial noise would be
    # (E TV ≈ ½ Σ sqrt(2 p_h / (π M)) for M draws); the chi-square above is the sharp check.
    target = label_distribution(counts, q)
    noise = 0.5 * np.sum(np.sqrt(2 * target / (math.pi * emitted.total)))
    assert total_variation(realised, target) < noise


@pytest.mark.parametrize("q", QS)
def test_multi_label_images_emitted_in_proportion_to_weight(q: float) -> None:
    corpus = multi_label_corpus(10, 60, seed=4)
    counts = np.bincount(np.concatenate(corpus), minlength=10)
    passes = 3000
    emitted = stream(LabelResampler(counts, q=q, seed=12, num_images=len(corpus)), as_samples(corpus), passes)
    rates = expected_rates(corpus, counts, q)
    assert_binomial_emissions(emitted.copies, np.full(len(corpus), passes), rates)
    # Hashtag draws: E = passes·N·p_h exactly; each image adds share n_h^(q−1)/w(I) per copy.
    expected = passes * len(corpus) * label_distribution(counts, q)
    np.testing.assert_allclose(Emitted(passes * rates, 0).draws(corpus, counts, q), expected, rtol=1e-10)
    deviation = np.abs(emitted.draws(corpus, counts, q) - expected)
    sd = draw_sd(corpus, counts, q, rates, passes)
    assert np.all(deviation <= Z_SUM * sd + 1e-6), (deviation, sd)


@pytest.mark.parametrize("q", QS)
def test_each_copy_names_the_hashtag_it_was_drawn_for_and_those_follow_the_target(q: float) -> None:
    """Every emitted copy carries ``drawn_label``, one of its own labels, h with probability
    n_h^(q−1)/w(I); counted over the stream the drawn hashtags are passes·N·p_h within z·sd, where sd
    adds the categorical variance of each copy's draw to the emission variance (draw_sd)."""
    corpus = multi_label_corpus(10, 60, seed=4)
    counts = np.bincount(np.concatenate(corpus), minlength=10)
    passes = 3000
    resampler = LabelResampler(counts, q=q, seed=12, num_images=len(corpus))
    by_key = {s["__key__"]: labels for s, labels in zip(as_samples(corpus), corpus)}
    drawn = np.zeros(10)
    for sample in resampler(sample for _ in range(passes) for sample in as_samples(corpus)):
        assert sample[DRAWN_KEY] in by_key[sample["__key__"]]
        drawn[sample[DRAWN_KEY]] += 1
    rates = expected_rates(corpus, counts, q)
    weights, image_w = label_weights(counts, q), image_weights(corpus, counts, q)
    categorical = np.zeros(10)
    for labels, rate, w in zip(corpus, rates, image_w):
        share = weights[labels] / w
        categorical[labels] += passes * rate * share * (1 - share)
    sd = np.sqrt(draw_sd(corpus, counts, q, rates, passes) ** 2 + categorical)
    expected = passes * len(corpus) * label_distribution(counts, q)
    assert np.all(np.abs(drawn - expected) <= Z_SUM * sd + 1e-6), ((drawn - expected) / sd)
    # All labels of the emitted images do not follow the target (they carry their other labels along).
    carried = np.zeros(10)
    for labels, rate in zip(corpus, rates):
        carried[labels] += passes * rate
    assert total_variation(carried, expected) > 5 * total_variation(drawn, expected)


def test_real_flickr_tag_distribution(shared_data: Path) -> None:
    """The real Flickr Dresden tags (805 tags, 3.4 per photo): the stream hits p_h ∝ n_h^½."""
    path = shared_data / "flickr_dresden_tags" / "flickr_dresden_cc-by-licenses.csv"
    with open(path, newline="", encoding="utf-8") as table:
        tag_sets = [sorted({t for t in row["hashtags"].split(";") if t}) for row in csv.DictReader(table)]
    vocabulary = {tag: i for i, tag in enumerate(sorted({t for tags in tag_sets for t in tags}))}
    corpus = [[vocabulary[t] for t in tags] for tags in tag_sets]
    counts = np.bincount(np.concatenate([c for c in corpus if c]), minlength=len(vocabulary))
    rates = expected_rates(corpus, counts, 0.5)  # the untagged photos count in the mean, at rate 0
    resampler = LabelResampler(counts, q=0.5, seed=5, num_images=len(corpus))
    passes = 6
    emitted = stream(resampler, as_samples(corpus), passes)
    assert resampler.skipped.counts["no_label"] == passes * sum(1 for c in corpus if not c)
    assert not any(n for labels, n in zip(corpus, emitted.copies) if not labels)
    # Over the 100 most frequent tags (the rest see too few copies for a normal approximation):
    # hashtag draws within z·sd of passes·N·p_h, sd from the per-photo Bernoulli variances.
    top = np.argsort(-counts)[:100]
    sd = draw_sd(corpus, counts, 0.5, rates, passes)[top]
    expected = passes * len(corpus) * label_distribution(counts, 0.5)
    deviation = np.abs(emitted.draws(corpus, counts, 0.5) - expected)[top]
    assert np.all(deviation <= Z_SUM * sd), deviation / sd


# --- q = 1 and the cap ---------------------------------------------------------------------------------

def test_q1_is_exactly_the_identity() -> None:
    corpus = zipf_labels(30, 2000, seed=6)
    samples = as_samples(corpus[:, None])
    resampler = LabelResampler(np.bincount(corpus, minlength=30), q=1, seed=3)
    out = list(resampler(samples))
    assert len(out) == len(samples) and all(a is b for a, b in zip(out, samples))
    # Same number of labels on every image: still the identity, given the number of images.
    triples = [[(i + j) % 7 for j in range(3)] for i in range(70)]
    triple_counts = np.bincount(np.concatenate(triples), minlength=7)
    resampler = LabelResampler(triple_counts, q=1, num_images=70)
    assert [s["__key__"] for s in resampler(as_samples(triples))] == [f"{i:06d}" for i in range(70)]


def test_q1_multi_label_weights_images_by_label_count() -> None:
    """Documented: the hashtag-then-image draw at q=1 favours images with more labels, w(I) = |I|."""
    corpus = [[0], [0, 1], [0, 1, 2], [1]]
    passes = 4000
    emitted = stream(LabelResampler(np.bincount(np.concatenate(corpus)), q=1, num_images=4, seed=13),
                     as_samples(corpus), passes)
    assert_binomial_emissions(emitted.copies, np.full(4, passes), np.array([1, 2, 3, 1]) / 1.75)


@pytest.mark.parametrize("cap", [3.0, 2.5])
def test_cap_bounds_copies_and_matches_the_formula(cap: float) -> None:
    labels, images, passes = 50, 4000, 25
    corpus = zipf_labels(labels, images, seed=3)
    counts = np.bincount(corpus, minlength=labels)
    samples = as_samples(corpus[:, None])
    uncapped = label_rates(corpus, expected_rates(corpus[:, None], counts, 0.0), labels)
    assert uncapped.max() > cap + 1  # the cap binds on the rarest labels
    one_pass = stream(LabelResampler(counts, q=0.0, cap=cap, seed=8), samples, 1)
    assert one_pass.copies.max() <= math.ceil(cap)
    emitted = stream(LabelResampler(counts, q=0.0, cap=cap, seed=9), samples, passes)
    rates = np.minimum(uncapped, cap)
    realised = emitted.label_counts(corpus[:, None], labels)
    assert_binomial_emissions(realised, passes * counts, rates)
    # docs/sampling.md: emission rate E = (1/N) Σ_h n_h·min(r_h, cap) < 1, and the realised
    # distribution p^cap_h ∝ n_h·min(r_h, cap) instead of the target.
    rate = float(np.sum(counts * rates)) / images
    assert rate == pytest.approx(expected_rates(corpus[:, None], counts, 0.0, cap).mean()) and rate < 1
    frac = rates - np.floor(rates)
    sd = math.sqrt(float(np.sum(passes * counts * frac * (1 - frac))))
    assert abs(emitted.total - rate * images * passes) <= Z_SUM * sd
    capped_target = counts * rates
    bias = total_variation(capped_target, label_distribution(counts, 0.0))
    assert bias > 0.01
    assert total_variation(realised, capped_target) < bias / 5


# --- determinism ---------------------------------------------------------------------------------------

def test_same_seed_same_stream_different_seed_different() -> None:
    corpus = zipf_labels(20, 500, seed=7)
    counts = np.bincount(corpus, minlength=20)
    samples = as_samples(corpus[:, None])

    def keys(seed) -> list[str]:
        return [s["__key__"] for s in LabelResampler(counts, q=0.5, seed=seed)(samples)]

    assert keys(4) == keys(4)
    assert keys(4) != keys(5)
    assert keys((4, 0, 0, 1)) == keys((4, 0, 0, 1))
    assert len({tuple(keys((4, rank, worker, 0))) for rank in range(2) for worker in range(2)}) == 4


def test_reseed_takes_effect_on_a_running_stream() -> None:
    """The loader re-seeds per epoch while a persistent worker's stream is suspended."""
    corpus = zipf_labels(20, 500, seed=7)
    counts = np.bincount(corpus, minlength=20)
    samples = as_samples(corpus[:, None])
    resampler = LabelResampler(counts, q=0.0, seed=1)

    def epochs() -> Iterator[dict]:
        yield from samples
        resampler.reseed((9, 0, 0, 1))
        yield from samples

    out = [s["__key__"] for s in resampler(epochs())]
    first = [s["__key__"] for s in LabelResampler(counts, q=0.0, seed=1)(samples)]
    second = [s["__key__"] for s in LabelResampler(counts, q=0.0, seed=(9, 0, 0, 1))(samples)]
    assert out == first + second


# --- in a webdataset pipeline, on a real tar ----------------------------------------------------------

def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=85)
    return out.getvalue()


def test_stage_in_webdataset_pipeline_skips_decode_of_rejected(tmp_path: Path) -> None:
    corpus = zipf_labels(6, 40, seed=8).tolist()
    corpus[3] = None  # an image whose json lists no label
    tar = tmp_path / "train-000000.tar"
    with wds.TarWriter(str(tar)) as sink:
        for i, label in enumerate(corpus):
            sink.write({"__key__": f"s{i:03d}", "jpg": jpeg(i),
                        "json": json.dumps({"labels": [] if label is None else [label], "tags": []}).encode()})
    counts = np.bincount([h for h in corpus if h is not None], minlength=6)
    write_json(tmp_path / "info.json", {"label_counts": counts.tolist(),
                                        "num_samples": {"train": 40, "val": 0, "total": 40}})
    info = json.loads((tmp_path / "info.json").read_text())
    resampler = LabelResampler(info["label_counts"], q=0.0, seed=2, num_images=info["num_samples"]["train"])
    parsed: list[str] = []
    decoded: list[str] = []

    def parse(sample: dict) -> dict:
        parsed.append(sample["__key__"])
        return {**sample, "labels": json.loads(sample["json"])["labels"]}

    def decode(sample: dict) -> dict:
        decoded.append(sample["__key__"])
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            pixels = np.asarray(image.convert("RGB"))
        return {"__key__": sample["__key__"], "image": pixels, "labels": sample["labels"]}

    pipeline = wds.DataPipeline(wds.SimpleShardList(str(tar)), wds.tarfile_to_samples(), wds.map(parse),
                                resampler, wds.map(decode))
    out = list(pipeline)
    assert len(parsed) == 40 and len(out) == len(decoded) > 0
    assert resampler.skipped.counts == {"no_label": 1} and resampler.skipped.examples["no_label"] == ["s003"]
    assert 0 < len(set(decoded)) < 39  # rare labels replicated, common ones thinned
    assert all(o["image"].shape == (24, 32, 3) and o["labels"] == [corpus[int(o["__key__"][1:])]] for o in out)


# --- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("q", [-0.1, 1.01, float("nan"), "0.5", True, None])
def test_q_outside_unit_interval_is_rejected(q) -> None:
    with pytest.raises(UserError, match=r"sampling\.q must be .*got " + repr(q)[:3]):
        LabelResampler([3, 2, 1], q=q)
    with pytest.raises(UserError, match="sampling.q"):
        label_distribution([3, 2, 1], q)


@pytest.mark.parametrize("counts, message", [
    ([], "non-empty"), ([[1, 2], [3, 4]], "shape"), ([4, -1, 2], r"label_counts\[1\] = -1"),
    ([4, 1.5], r"label_counts\[1\] = 1.5"), ([0, 0], "all zero"), (["a", 1], "list of per-label image counts"),
])
def test_bad_label_counts_are_rejected(counts, message) -> None:
    with pytest.raises(UserError, match=message):
        LabelResampler(counts)


@pytest.mark.parametrize("kwargs, message", [
    ({"cap": 0.5}, "sampling.cap"), ({"cap": float("inf")}, "sampling.cap"),
    ({"cap": float("nan")}, "sampling.cap"),
    ({"num_images": 3}, "at least the largest label count 5"), ({"num_images": 0}, "num_images"),
    ({"seed": -1}, "seed"), ({"seed": (1, "a")}, "seed"),
])
def test_bad_settings_are_rejected(kwargs, message) -> None:
    with pytest.raises(UserError, match=message):
        LabelResampler([5, 3, 0], **kwargs)


def test_bad_labels_name_the_sample_and_the_label() -> None:
    resampler = LabelResampler([5, 3, 0], q=0.5)
    with pytest.raises(UserError, match=r"sample k0 carries label 3, not a label id in \[0, 3\)"):
        list(resampler([{"__key__": "k0", "labels": [0, 3]}]))
    with pytest.raises(UserError, match=r"label -1, not a label id"):  # not wrapped round to the last label
        list(resampler([{"__key__": "k1", "labels": [-1]}]))
    with pytest.raises(UserError, match=r"sample k2 carries label 2, which label_counts say no image carries"):
        list(resampler([{"__key__": "k2", "labels": [1, 2]}]))
    with pytest.raises(UserError, match=r"sample k3 has no 'labels' field"):
        list(resampler([{"__key__": "k3", "cls": [1]}]))
    with pytest.raises(UserError, match=r"sample k4: 'labels' is 7, not a list"):
        list(resampler([{"__key__": "k4", "labels": 7}]))
    with pytest.raises(UserError, match=r"image 1 carries label 9"):
        image_weights([[0], [9]], [5, 3, 0], 0.5)


def test_unlabelled_images_are_never_emitted_and_are_counted() -> None:
    resampler = LabelResampler([2, 1], q=0.0, num_images=4)
    samples = [{"__key__": key, "labels": labels} for key, labels in [("a", [0]), ("b", []), ("c", [0]),
                                                                       ("d", [1])]]
    out = [s["__key__"] for _ in range(50) for s in resampler(samples)]
    assert "b" not in out and set(out) == {"a", "c", "d"}
    assert resampler.skipped.counts == {"no_label": 50} and resampler.skipped.examples["no_label"][0] == "b"
