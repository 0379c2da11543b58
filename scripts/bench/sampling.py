"""Benchmark: how close hashtag-frequency resampling gets to its target, and what it costs per sample.

Input: a seeded Zipf corpus (default 1,000 labels, exponent 1, 200,000 images, one label each: every
image's label is drawn with probability ∝ 1/rank, so the counts n_h are ∝ 1/rank up to noise).

- ours: data.loader.resampling.LabelResampler without a cap, fed the corpus as a stream of sample dicts in
  passes (the loader's resampled shards show every image equally often) until --samples samples
  have been emitted, for q = 1, 0.5 and 0. Reported: the total-variation distance (TV) between the
  label distribution of the samples the stage yields and the target, and the cost per emitted
  sample (ns, timed on a run that does nothing else; the labels are counted on a second run with
  the same seed, which yields the same stream).
- anchor: the non-streaming ideal, numpy.random.Generator.choice(N, size=samples, p=w/w.sum())
  over the whole corpus with the same image weights, timed and scored the same way in the same run.
- noise: the TV that pure multinomial sampling of that many labels from the target has on average
  (Monte Carlo), what an i.i.d. sampler such as the anchor reaches.
- cap effects: for caps 2, 5, 10 and 50, the expected emission rate and the distance between the
  capped and the uncapped target (computed from the counts; no stream is run).

Prints a line per q, then as the last line a JSON object {"bench": "sampling", "ours": worst TV,
"baseline": 0.02, "unit": "TV", "ratio": worst TV / 0.02, "per_q": {...}, "ns_per_sample": ...}.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from typing import Iterator

import numpy as np

from data.loader.resampling import (LabelResampler, image_weights, label_distribution, label_weights,
                                    mean_image_weight, total_variation)

TARGET_TV = 0.02
QS = (1.0, 0.5, 0.0)
CAPS = (2.0, 5.0, 10.0, 50.0)


def zipf_corpus(labels: int, images: int, exponent: float, seed: int) -> np.ndarray:
    """One label per image, label h (0-based rank) drawn with probability ∝ (h+1)^-exponent."""
    p = np.arange(1, labels + 1, dtype=np.float64) ** -exponent
    return np.random.default_rng(seed).choice(labels, size=images, p=p / p.sum())


def passes(samples: list[dict]) -> Iterator[dict]:
    """The corpus streamed again and again, as resampled shards would show it."""
    while True:
        yield from samples


def run_ours(samples: list[dict], counts: np.ndarray, q: float, total: int,
             seed: int) -> tuple[float, float, int]:
    """(TV, ns per emitted sample, inputs seen) for ``total`` samples emitted by the stream stage."""
    start = time.perf_counter()
    for _ in itertools.islice(LabelResampler(counts, q=q, seed=seed)(passes(samples)), total):
        pass
    seconds = time.perf_counter() - start
    seen = itertools.count()

    def counted() -> Iterator[dict]:
        for sample in passes(samples):
            next(seen)
            yield sample

    emitted = itertools.islice(LabelResampler(counts, q=q, seed=seed)(counted()), total)
    realised = np.bincount([label for sample in emitted for label in sample["labels"]], minlength=counts.size)
    return total_variation(realised, label_distribution(counts, q)), seconds / total * 1e9, next(seen)


def run_bare(samples: list[dict], total: int) -> float:
    """ns per sample of the same stream without the stage: the floor that the stage's cost adds to."""
    start = time.perf_counter()
    for _ in itertools.islice(passes(samples), total):
        pass
    return (time.perf_counter() - start) / total * 1e9


def run_anchor(corpus: np.ndarray, counts: np.ndarray, q: float, total: int, seed: int) -> tuple[float, float]:
    """(TV, ns per sample) of drawing ``total`` images at once with Generator.choice."""
    rng = np.random.default_rng(seed)
    weights = image_weights(corpus[:, None], counts, q)
    start = time.perf_counter()
    drawn = rng.choice(corpus.size, size=total, p=weights / weights.sum())
    realised = np.bincount(corpus[drawn], minlength=counts.size)
    seconds = time.perf_counter() - start
    return total_variation(realised, label_distribution(counts, q)), seconds / total * 1e9


def multinomial_noise(p: np.ndarray, total: int, seed: int, trials: int = 20) -> float:
    """Mean TV between ``total`` multinomial draws from p and p itself."""
    rng = np.random.default_rng(seed)
    return float(np.mean([total_variation(rng.multinomial(total, p), p) for _ in range(trials)]))


def cap_effects(counts: np.ndarray, q: float, caps: tuple[float, ...]) -> dict[str, dict]:
    """Per cap, from the counts alone (one label per image, docs/sampling.md): the expected emission
    rate (1/N) Σ_h n_h·min(r_h, cap) and the TV between p^cap_h ∝ n_h·min(r_h, cap) and the target."""
    used = counts > 0
    rates = label_weights(counts, q)[used] / mean_image_weight(counts, q, int(counts.sum()))
    target = label_distribution(counts, q)[used]
    effects = {}
    for cap in caps:
        capped = counts[used] * np.minimum(rates, cap)
        effects[str(cap)] = {"emission_rate": round(float(capped.sum() / counts.sum()), 4),
                             "tv_bias": round(total_variation(capped, target), 4)}
    return effects


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=1000, help="labels in the Zipf corpus")
    parser.add_argument("--images", type=int, default=200_000, help="images in the corpus (one label each)")
    parser.add_argument("--exponent", type=float, default=1.0, help="Zipf exponent of the label counts")
    parser.add_argument("--samples", type=int, default=1_000_000, help="samples to emit per q")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    corpus = zipf_corpus(args.labels, args.images, args.exponent, args.seed)
    counts = np.bincount(corpus, minlength=args.labels)
    samples = [{"__key__": f"{i:08d}", "labels": [int(label)]} for i, label in enumerate(corpus)]
    print(f"Zipf corpus: {args.images} images, {args.labels} labels (exponent {args.exponent}), counts "
          f"{counts.max()} .. {counts.min()}; {args.samples} samples per q", flush=True)

    bare_ns = run_bare(samples, args.samples)
    print(f"bare stream without the stage: {bare_ns:.0f} ns/sample", flush=True)
    per_q: dict[str, dict] = {}
    for q in QS:
        tv, ns, seen = run_ours(samples, counts, q, args.samples, args.seed + 1)
        anchor_tv, anchor_ns = run_anchor(corpus, counts, q, args.samples, args.seed + 2)
        noise = multinomial_noise(label_distribution(counts, q), args.samples, args.seed + 3)
        caps = cap_effects(counts, q, CAPS)
        per_q[str(q)] = {"tv": round(tv, 5), "ns_per_sample": round(ns, 1), "inputs_seen": seen,
                         "anchor_tv": round(anchor_tv, 5), "anchor_ns_per_sample": round(anchor_ns, 1),
                         "multinomial_noise_tv": round(noise, 5), "cap_effects": caps}
        print(f"q={q}: TV {tv:.4f} (target <= {TARGET_TV}; multinomial noise {noise:.4f}; "
              f"anchor {anchor_tv:.4f}), "
              f"{ns:.0f} ns/sample (anchor Generator.choice {anchor_ns:.0f} ns/sample), {seen} inputs for "
              f"{args.samples} samples", flush=True)
        effects = ", ".join(f"cap {cap}: rate {effect['emission_rate']}, TV bias {effect['tv_bias']}"
                            for cap, effect in caps.items())
        print(f"  with a cap (expected, from the counts): {effects}", flush=True)

    worst = max(v["tv"] for v in per_q.values())
    ns_per_sample = float(np.mean([v["ns_per_sample"] for v in per_q.values()]))
    anchor_ns = float(np.mean([v["anchor_ns_per_sample"] for v in per_q.values()]))
    result = {"bench": "sampling", "ours": worst, "baseline": TARGET_TV, "unit": "TV",
              "ratio": round(worst / TARGET_TV, 3), "per_q": per_q, "ns_per_sample": round(ns_per_sample, 1),
              "anchor_ns_per_sample": round(anchor_ns, 1),
              "bare_stream_ns_per_sample": round(bare_ns, 1), "samples": args.samples, "images": args.images,
              "labels": args.labels, "cpus": os.cpu_count()}
    print(json.dumps(result))
    return 0 if worst <= TARGET_TV else 1


if __name__ == "__main__":
    sys.exit(main())
