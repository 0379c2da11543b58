"""Drawing the synthetic world's pictures: JPEG bytes of a scene of concept objects (docs/synthetic.md).

A scene is a muted gradient background with low-frequency blotches, the objects (a concept's
shape, randomly rotated and stretched, filled with its texture in two colours of clearly different
brightness) drawn in order so later ones occlude earlier ones, then clutter (thin lines and arcs)
on top. Every draw comes from the random stream the caller passes, so a picture depends only on it.
"""
from __future__ import annotations

import colorsys
import io
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from data.synthetic.world import SHAPES, Concept, World


def _shape_polygon(shape: str, n_points: int = 40) -> np.ndarray:
    """Outline of a shape in unit coordinates (centred, radius about 1), as (N, 2) points."""
    t = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    if shape == "circle":
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        return np.array([[-0.85, -0.85], [0.85, -0.85], [0.85, 0.85], [-0.85, 0.85]])
    if shape == "triangle":
        a = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(a), np.sin(a) + 0.15], 1)
    if shape == "star":
        a = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(a), r * np.sin(a) + 0.08], 1)
    if shape == "cross":
        w = 0.33
        return np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1],
                         [-w, w], [-1, w], [-1, -w], [-w, -w]])
    if shape == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], 1) / 16.5
    if shape == "arrow":
        return np.array([[-1, -0.3], [0.1, -0.3], [0.1, -0.75], [1, 0], [0.1, 0.75], [0.1, 0.3], [-1, 0.3]])
    if shape == "crescent":
        outer = np.stack([np.cos(t), np.sin(t)], 1)
        inner = np.stack([0.45 + 0.8 * np.cos(t[::-1]), 0.8 * np.sin(t[::-1])], 1)
        keep_outer = np.linalg.norm(outer - [0.45, 0], axis=1) > 0.8
        keep_inner = np.linalg.norm(inner, axis=1) < 1
        return np.concatenate([_roll_to_gap(outer, keep_outer), _roll_to_gap(inner, keep_inner)])
    raise ValueError(f"unknown shape {shape!r}")


def _roll_to_gap(points: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The kept points of a closed outline as one contiguous run (starting after the dropped arc)."""
    start = int(np.argmax(~keep & np.roll(keep, -1))) + 1
    rolled, kept = np.roll(points, -start, 0), np.roll(keep, -start)
    return rolled[kept]


_POLYGONS = {shape: _shape_polygon(shape) for shape in SHAPES}


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (size, size) mask of a randomly rotated, slightly stretched shape."""
    angle = rng.uniform(-0.45, 0.45)
    stretch = rng.uniform(0.85, 1.15)
    c, s = math.cos(angle), math.sin(angle)
    pts = _POLYGONS[shape] * [stretch, 1 / stretch]
    pts = pts @ np.array([[c, s], [-s, c]])
    half = (size - 1) / 2
    pts = pts / max(1.0, np.abs(pts).max()) * half + half
    mask = Image.new("L", (size, size))
    ImageDraw.Draw(mask).polygon([tuple(p) for p in pts.tolist()], fill=255)
    return np.asarray(mask) > 127


def _texture(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (size, size) pattern; the period scales with the object so it survives resizing."""
    if texture == "solid":
        return np.zeros((size, size), bool)
    period = max(4.0, size / rng.uniform(3.0, 4.5))
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    u = x * math.cos(angle) + y * math.sin(angle) + rng.uniform(0, period)
    v = -x * math.sin(angle) + y * math.cos(angle) + rng.uniform(0, period)
    if texture == "striped":
        return (u / period) % 1 < 0.5
    if texture == "wavy":
        return ((u + 0.35 * period * np.sin(2 * np.pi * v / (2.2 * period))) / period) % 1 < 0.5
    if texture == "checkered":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    if texture == "dotted":
        du, dv = u % period - period / 2, v % period - period / 2
        return du * du + dv * dv < (0.3 * period) ** 2
    if texture == "gridded":
        return (u % period < period * 0.3) | (v % period < period * 0.3)
    raise ValueError(f"unknown texture {texture!r}")


def _random_colour(rng: np.random.Generator, saturation: tuple[float, float] = (0.45, 1.0),
                   value: tuple[float, float] = (0.35, 1.0)) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb, np.float32) * 255


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _object_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A body colour and a pattern colour of clearly different brightness, so the texture stays
    visible after JPEG chroma subsampling and in grayscale."""
    body = _random_colour(rng)
    while True:
        pattern = _random_colour(rng, (0.0, 1.0), (0.0, 1.0))
        if abs(float(_LUMA @ (pattern - body))) > 90:
            return body, pattern


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A muted gradient with low-frequency blotches, so no background looks like a solid object."""
    a = _random_colour(rng, (0.0, 0.5), (0.2, 0.95))
    b = _random_colour(rng, (0.0, 0.5), (0.2, 0.95))
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (x * math.cos(angle) + y * math.sin(angle)) / max(height, width)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    coarse = rng.uniform(-1, 1, (4, 4)).astype(np.float32)
    blotch = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BILINEAR))
    img = a + (b - a) * ramp[..., None] + 18 * blotch[..., None]
    return img + rng.normal(0, 4, (height, width, 1)).astype(np.float32)


def _paste_object(img: np.ndarray, concept: Concept, size: int, rng: np.random.Generator) -> None:
    height, width = img.shape[:2]
    size = min(size, height, width)
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    mask = _shape_mask(concept.shape, size, rng)
    pattern = _texture(concept.texture, size, rng)
    body, ink = _object_colours(rng)
    patch = np.where(pattern[..., None], ink, body)
    region = img[top:top + size, left:left + size]
    region[mask] = patch[mask]


def _draw_clutter(image: Image.Image, rng: np.random.Generator, count: int) -> None:
    """Thin lines and arcs: structure that is not any concept."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for _ in range(count):
        colour = tuple(int(c) for c in _random_colour(rng, (0, 1), (0, 1)))
        x0, x1 = sorted(rng.uniform(0, w, 2).tolist())
        y0, y1 = sorted(rng.uniform(0, h, 2).tolist())
        if rng.uniform() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)))
        else:
            start = float(rng.uniform(0, 360))
            draw.arc([x0, y0, x1 + 4, y1 + 4], start, start + float(rng.uniform(60, 200)),
                     fill=colour, width=1)


def render(world: World, objects: Sequence[tuple[str, float]], height: int, width: int,
           rng: np.random.Generator, clutter: int, quality: int) -> bytes:
    """JPEG bytes of a scene: background, the objects (concept name, size as a fraction of the
    shorter side) drawn in order so later ones occlude earlier ones, then clutter on top."""
    img = _background(height, width, rng)
    short = min(height, width)
    for name, fraction in objects:
        _paste_object(img, world.by_name[name], max(12, int(fraction * short)), rng)
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    _draw_clutter(image, rng, clutter)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()
