"""Drawing the synthetic world's pictures: JPEG bytes of the requested size, one random stream in,
every concept visible."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from data.synthetic.render import render
from data.synthetic.world import World, WorldSpec

WORLD = World.build(WorldSpec())


def draw(objects, seed: int = 0, height: int = 72, width: int = 90) -> bytes:
    return render(WORLD, objects, height, width, np.random.default_rng(seed), 2, 95)


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        return np.asarray(image, dtype=np.int16)


def test_a_picture_is_a_jpeg_of_the_requested_size_and_depends_only_on_its_stream():
    scene = [(WORLD.concepts[0].name, 0.6), (WORLD.concepts[-1].name, 0.4)]
    assert pixels(draw(scene)).shape == (72, 90, 3)
    assert draw(scene) == draw(scene)
    assert draw(scene, seed=1) != draw(scene)


def test_every_concept_is_drawn_over_the_background():
    """The same stream with and without one large object: the object changes a large share of the
    picture, for every shape and texture."""
    empty = pixels(draw([]))
    for concept in WORLD.concepts:
        changed = np.abs(pixels(draw([(concept.name, 0.9)])) - empty).max(axis=2) > 40
        assert changed.mean() > 0.15, concept.name
