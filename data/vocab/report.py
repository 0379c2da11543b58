"""The vocabulary report: what a built vocabulary covers, as JSON and as a Zipf plot.

Written beside vocab.json by scripts/build_vocab.py (``vocab.report.json``, ``vocab.zipf.png``):
top and rarest labels, coverage (share of images carrying at least one label), the labels-per-image
histogram, the fitted Zipf exponent of the label counts, the malformed and skipped rows of the
corpus, and for an aligned vocabulary the synset alignment summary and the ambiguous hashtags that
ended up in it, and the hashtags its synsets lost to a more common WordNet sense outside the family. The plot shows every counted candidate tag (or synset) by rank against its count,
log-log, with the selected labels highlighted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.atomic_write import write_bytes, write_json
from data.figure_png import figure_png
from data.vocab.counting import TagCounts
from data.vocab.synsets import SynsetAliases
from data.vocab.vocabulary import Label, Vocabulary

TOP_LABELS = 50
RAREST_LABELS = 10
LISTED_CONFLICTS = 50
PLOT_POINTS = 2000


@dataclass
class VocabReport:
    """Everything the report needs: the vocabulary and both counting passes."""

    vocab: Vocabulary
    candidates: TagCounts             # pass 1: every canonical tag (or synset) of the corpus
    final: TagCounts                  # pass 2: the selected labels only
    alignment: SynsetAliases | None = None

    def to_dict(self) -> dict[str, Any]:
        final, labels = self.final, self.vocab.labels
        counts = np.array([label.count for label in labels], dtype=np.float64)
        pairs = sum(k * n for k, n in final.keys_per_image.items())
        min_count = self.vocab.selection.get("min_count", 1)
        report = {
            "format": "openwsl-vocab-report",
            "num_labels": len(labels),
            "corpus": self.vocab.corpus,
            "selection": {**self.vocab.selection, "candidates": len(self.candidates.counts),
                          "candidates_at_min_count": sum(n >= min_count for n in self.candidates.counts.values())},
            "coverage": {"images": final.images, "images_with_label": final.images_with_tags,
                         "percent": _percent(final.images_with_tags, final.images)},
            "labels_per_image": {
                "histogram": {str(k): n for k, n in sorted(final.keys_per_image.items())},
                "mean": pairs / final.images if final.images else 0.0,
                "mean_over_labelled": pairs / final.images_with_tags if final.images_with_tags else 0.0,
            },
            "label_counts": {"max": int(counts.max()), "median": float(np.median(counts)),
                             "min": int(counts.min()), "zipf_exponent": zipf_exponent(counts)},
            "top_labels": [self._label_entry(label) for label in labels[:TOP_LABELS]],
            "rarest_labels": [self._label_entry(label) for label in labels[-RAREST_LABELS:]],
            "malformed": self.candidates.malformed.to_dict(),
            "skipped": dict(sorted(self.candidates.skipped.items())),
        }
        if self.alignment is not None:
            report["alignment"] = self._alignment()
        return report

    def _label_entry(self, label: Label) -> dict[str, Any]:
        entry = {"id": label.id, "tag": label.tag, "count": label.count,
                 "percent_of_images": _percent(label.count, self.final.images)}
        if label.synset:
            entry.update(synset=label.synset, aliases=label.aliases)
        return entry

    def _alignment(self) -> dict[str, Any]:
        names = {name for label in self.vocab.labels for name in (label.tag, *label.aliases)}
        in_vocab = {tag: synsets for tag, synsets in self.alignment.conflicts.items() if tag in names}
        return {**self.alignment.summary(), "ambiguous_tags_in_vocab": len(in_vocab),
                "ambiguous_examples": dict(list(in_vocab.items())[:LISTED_CONFLICTS]),
                # hashtags of the family's synsets whose most common WordNet sense is another synset
                "lost_outside_family": dict(self.alignment.lost)}

    def write(self, json_path: str | Path, png_path: str | Path) -> None:
        """Write the JSON report and the Zipf plot, each atomically."""
        write_json(json_path, self.to_dict())
        write_bytes(png_path, self.zipf_png())

    def zipf_png(self) -> bytes:
        """Rank vs count, log-log: every candidate, and the selected labels over it."""
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        candidates = np.sort(np.fromiter(self.candidates.counts.values(), dtype=np.int64))[::-1]
        labels = np.array([label.count for label in self.vocab.labels], dtype=np.int64)
        fig = Figure(figsize=(6.4, 4.4), dpi=100)
        ax = fig.add_subplot()
        what = "synsets" if self.alignment is not None else "tags"
        ax.loglog(*_rank_points(candidates), color="0.6", lw=1.5, label=f"all {len(candidates):,} {what}")
        ax.loglog(*_rank_points(labels), color="C0", lw=2, label=f"vocabulary ({len(labels):,} labels)")
        min_count = self.vocab.selection.get("min_count", 1)
        if min_count > 1:
            ax.axhline(min_count, color="C3", ls="--", lw=1, label=f"--min-count {min_count}")
        ax.set_xlabel("rank")
        ax.set_ylabel("images carrying the label")
        ax.set_title(f"Label frequencies (Zipf exponent {zipf_exponent(labels):.2f})")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        return figure_png(fig, dpi=100)

    def summary(self, json_path: str | Path, png_path: str | Path, vocab_path: str | Path) -> str:
        """The few lines scripts/build_vocab.py prints."""
        report = self.to_dict()
        top = ", ".join(f"{e['tag']} ({e['count']})" for e in report["top_labels"][:8])
        coverage = report["coverage"]
        skipped = ", ".join(f"{n} {k}" for k, n in report["skipped"].items()) or "none"
        return "\n".join([
            f"{report['num_labels']} labels from {report['selection']['candidates']} candidates; "
            f"top: {top}",
            f"coverage: {coverage['images_with_label']} of {coverage['images']} images "
            f"({coverage['percent']:.1f}%) carry a label; "
            f"{report['labels_per_image']['mean_over_labelled']:.2f} labels per labelled image",
            f"rows: {report['corpus'].get('rows')} read, {report['malformed']['total']} malformed, "
            f"skipped: {skipped}",
            *self._alignment_lines(),
            f"vocabulary: {vocab_path}",
            f"report:     {json_path}",
            f"zipf plot:  {png_path}",
        ])


    def _alignment_lines(self) -> list[str]:
        if self.alignment is None or not self.alignment.lost:
            return []
        lost = self.alignment.lost
        examples = ", ".join(f"{tag} -> {wnid}" for tag, wnid in list(lost.items())[:4])
        return [f"alignment: {len(lost)} hashtags of {self.alignment.family} synsets are not labels, their "
                f"most common WordNet sense lies outside the family ({examples}, ...; all in the report's "
                f"alignment.lost_outside_family)"]


def zipf_exponent(counts: np.ndarray) -> float:
    """Least-squares slope s of log(count) = c - s log(rank) over the counts sorted descending."""
    counts = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    counts = counts[counts > 0]
    if len(counts) < 2:
        return 0.0
    ranks = np.arange(1, len(counts) + 1)
    slope = np.polyfit(np.log(ranks), np.log(counts), 1)[0]
    return float(-slope)


def _rank_points(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank, count) at up to PLOT_POINTS log-spaced ranks: the shape of a curve over millions
    of tags without plotting millions of points."""
    if len(counts) == 0:
        return np.zeros(0), np.zeros(0)
    ranks = np.unique(np.geomspace(1, len(counts), num=min(PLOT_POINTS, len(counts))).astype(np.int64))
    return ranks, counts[ranks - 1]


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0
