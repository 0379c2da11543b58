"""make_synthetic.py --long-tail: a world whose concept frequencies span at least 1000:1 and whose
downstream classes are spread over that whole range, measured from the rows the world wrote (tags
read by the YFCC100M reader and canonicalised, mapped to concepts by their tag forms), not from the
generator's parameters."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from data.corpus import open_corpus
from data.vocab.tags import TagCanonicalizer

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """20,000 photos of 32 px (the pictures do not matter here; the rows do)."""
    out = tmp_path_factory.mktemp("longtail") / "world"
    result = subprocess.run([sys.executable, "scripts/make_synthetic.py", "--out", str(out), "--images", "20000",
                             "--long-tail", "--size-range", "32", "32", "--downstream-train", "1",
                             "--downstream-val", "1", "--workers", "2", "--no-progress"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


def tagged_photos_per_concept(world: Path) -> tuple[dict[str, int], list[str]]:
    """Concept -> image rows whose tags name it; and the downstream classes' concepts."""
    described = json.loads((world / "world.json").read_text(encoding="utf-8"))
    concept_of = {form: c["name"] for c in described["concepts"] for form in c["canonical"]}
    canonicalize = TagCanonicalizer()
    counts = Counter({c["name"]: 0 for c in described["concepts"]})
    for record in open_corpus("yfcc100m", world / "yfcc100m_dataset.tsv").records():
        named = {concept_of[c] for c in map(canonicalize, record.tags) if c in concept_of}
        counts.update(named)
    return dict(counts), [c["concept"] for c in described["downstream"]["classes"]]


def test_concept_frequencies_span_1000_to_1_and_downstream_classes_span_the_range(world):
    counts, downstream = tagged_photos_per_concept(world)
    most, fewest = max(counts.values()), min(counts.values())
    assert fewest >= 1 and most / fewest >= 1000, (most, fewest)
    classes = sorted(counts[name] for name in downstream)
    # The most and the least frequent downstream classes sit at the two ends of the range ...
    assert classes[-1] == most and classes[0] <= 2 * fewest, (classes, most, fewest)
    # ... with no wide gap between them: the classes sit at evenly spaced Zipf ranks (1, 5, 9, ..., 48),
    # so neighbours differ by at most (5/1)^2 = 25x in expectation; 30x allows for the counts' noise ...
    gaps = [b / a for a, b in zip(classes, classes[1:])]
    assert max(gaps) < 30, (classes, gaps)
    # ... and most of them in the tail: over half the classes below the geometric middle of the range.
    middle = math.sqrt(most * fewest)
    assert sum(count < middle for count in classes) > len(classes) / 2, (classes, middle)


def test_the_demo_default_is_not_long_tailed(tmp_path):
    """--long-tail is an option: without it the exponent stays 1 (the demo's world)."""
    result = subprocess.run([sys.executable, "scripts/make_synthetic.py", "--out", str(tmp_path / "w"), "--images",
                             "50", "--size-range", "32", "32", "--downstream-train", "1", "--downstream-val", "1",
                             "--workers", "0", "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "w" / "world.json").read_text())["zipf_exponent"] == 1.0
    both = subprocess.run([sys.executable, "scripts/make_synthetic.py", "--out", str(tmp_path / "x"), "--long-tail",
                           "--zipf", "1.5"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert both.returncode == 2 and both.stderr.strip() == (
        "error: --long-tail sets the Zipf exponent to 2; pass it or --zipf, not both")
