"""The hashtag distribution training actually saw, against the natural one of the shards.

The loader counts, per label, two things over what it delivered: the images carrying the label (all
labels of the sampled images, ``Loader.realised_label_counts``) and, when it resamples, the samples
drawn for the label (the hashtag of the hashtag-then-image draw, ``Loader.drawn_label_counts``). The
shards' info.json holds the natural per-label counts. The resampler controls the drawn hashtags:
their shares follow the target p_h ∝ n_h^q, or for a mixture of shard sets the one its weights aim
at (:func:`data.loader.resampling.mixture_label_distribution`; "natural" is then the union's counts).
All labels of the sampled images do not when images carry several labels: a drawn image brings its
other labels along, which bends the tail of the flatter targets up. Plotted by natural rank
(log-log), the figure shows natural, the target with the drawn hashtags, and all labels of the
sampled images; the total-variation distance measures what the sampler controls.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from data.figure_png import save_figure
from data.loader.resampling import label_distribution, mixture_label_distribution, total_variation
from data.shards.directory import ShardSource


def target_shares(source: ShardSource, q: float | None) -> np.ndarray:
    """The label shares the stream aims at: p ∝ n^q over the shards' counts (the natural shares when
    resampling is off), or a mixture's, set by its weights."""
    exponent = 1.0 if q is None else q
    if source.parts:
        return mixture_label_distribution([p.label_counts for p in source.parts], source.weights, exponent)
    return label_distribution(source.label_counts, exponent)


def realised_vs_target(realised: Sequence[int], target: Sequence[float],
                       drawn: Sequence[int] | None = None) -> float:
    """Total variation between what the sampler controls and the target (:func:`target_shares`): the
    drawn hashtags when the loader resampled and counted them, else all labels of the delivered
    images (without resampling each image comes once, so those match the natural shares in
    expectation)."""
    if drawn is not None and np.sum(drawn) > 0:
        return total_variation(drawn, target)
    return total_variation(realised, target)


def target_name(source: ShardSource, q: float | None) -> str | None:
    """The target's legend entry, or None when the target is the natural distribution itself."""
    if source.parts:
        return "target of the mixture's weights" + ("" if q is None else f", p ∝ n^{q:g} per set")
    return None if q is None else f"target of the drawn hashtag: p ∝ n^{q:g}"


def plot_label_distribution(realised: Sequence[int], natural: Sequence[int], target: Sequence[float],
                            name: str | None, path: str | Path, drawn: Sequence[int] | None = None) -> Path:
    """A log-log PNG of label share against natural rank: natural, the target (drawn when ``name`` is
    given, see :func:`target_name`) with the drawn hashtags' shares when ``drawn`` is given, and all
    labels of the sampled images."""
    # Figure + Agg canvas rather than pyplot: no global backend, no figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    realised = np.asarray(realised, dtype=np.float64)
    natural = np.asarray(natural, dtype=np.float64)
    drawn = None if drawn is None else np.asarray(drawn, dtype=np.float64)
    order = np.argsort(-natural, kind="stable")
    used = order[natural[order] > 0]
    ranks = np.arange(1, used.size + 1)
    figure = Figure(figsize=(7.5, 5))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.loglog(ranks, natural[used] / natural.sum(), label="natural: n_h / Σ n (info.json)", color="0.5")
    if name is not None:
        axes.loglog(ranks, np.asarray(target, dtype=np.float64)[used], label=name, color="C1")
    if drawn is not None and drawn.sum() > 0:
        share = drawn[used] / drawn.sum()
        shown = share > 0
        axes.loglog(ranks[shown], share[shown], marker="x", markersize=4, linestyle="none", color="C1",
                    label=f"drawn hashtags ({int(drawn.sum()):,}): what the sampler controls")
    if realised.sum() > 0:
        share = realised[used] / realised.sum()
        shown = share > 0
        axes.loglog(ranks[shown], share[shown], marker=".", linestyle="none", color="C0",
                    label="all labels of the sampled images: a drawn image\nbrings its other labels along")
    axes.set(xlabel="label rank (natural frequency)", ylabel="share",
             title=f"sampled label distribution ({int(realised.sum()):,} label occurrences)")
    axes.legend(fontsize=8)
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    return save_figure(figure, path, dpi=100)
