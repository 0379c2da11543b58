"""The synthetic world's model: concepts, their tag forms and their Zipf frequencies (no drawing)."""
from __future__ import annotations

import numpy as np
import pytest

from data.synthetic.world import World, WorldSpec, describe_photo, sample_scene
from data.vocab.tags import TagCanonicalizer, normalize


def test_every_concept_form_survives_canonicalisation():
    model = World.build(WorldSpec())
    canonicalize = TagCanonicalizer.from_files()
    forms = [form for c in model.concepts for form in c.forms]
    assert all(canonicalize(form) == normalize(form) for form in forms)
    assert len({normalize(form) for form in forms}) == len(forms)  # no form names two concepts


@pytest.mark.parametrize("exponent", [0.7, 1.0, 1.3])
def test_concept_frequencies_are_zipfian(exponent):
    """Object counts over 10,000 sampled scenes: the log-log slope of count against rank is the
    configured exponent within 0.1 (the estimate's spread at this size is about 0.02)."""
    model = World.build(WorldSpec(images=10000, zipf_exponent=exponent))
    rank = {c.name: c.rank for c in model.concepts}
    counts = np.zeros(len(model.concepts))
    for i in range(10000):
        for name in sample_scene(model, i)[1]:
            counts[rank[name]] += 1
    ranks = np.arange(1, len(counts) + 1)
    slope = np.polyfit(np.log(ranks[counts > 0]), np.log(counts[counts > 0]), 1)[0]
    assert abs(slope + exponent) < 0.1


def test_tags_do_not_depend_on_the_scene_stream_and_images_do_not_depend_on_tags():
    """Label noise changes a photo's tags, never its scene; the scene is the same for any settings
    of the tags."""
    clean, noisy = World.build(WorldSpec(seed=4)), World.build(WorldSpec(seed=4, label_noise=1.0))
    for index in range(50):
        _, present, sizes = sample_scene(clean, index)
        assert sample_scene(noisy, index)[1:] == (present, sizes)
        a, b = describe_photo(clean, index, present), describe_photo(noisy, index, present)
        assert a.truth["photo_id"] == b.truth["photo_id"] and a.video == b.video
        if a.concepts_tagged and len(set(present)) < len(clean.concepts):
            assert not set(b.concepts_tagged) & set(present)  # every concept tag replaced
