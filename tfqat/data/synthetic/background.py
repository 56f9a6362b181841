"""Backgrounds (gradients, stripes, blurred blobs) and non-class clutter, shared by both
scenes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tfqat.data.synthetic.canvas import (
    _SS,
    _Canvas,
    _capsule,
    _log_uniform,
    _polygons_mask,
    _random_colour,
    _rotate,
    _unit,
)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A random gradient with smooth colour variation, sometimes stripes, and blurred blobs."""
    grid = int(rng.integers(2, 7))
    cells = (np.arange(grid, dtype=np.float32) + 0.5) / grid
    direction = _unit(rng.uniform(0, 2 * np.pi))
    ramp = cells[None, :] * direction[0] + cells[:, None] * direction[1]
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    variation = rng.uniform(-60, 60, (grid, grid, 3)) * rng.uniform(0.3, 1.0)
    low = np.clip(c0 + (c1 - c0) * ramp[..., None] + variation, 0, 255).astype(np.uint8)
    image = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < 0.35:
        image = _add_stripes(rng, image)
    _paste_blobs(rng, image)
    return image


def _add_stripes(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    size = image.width
    direction = _unit(rng.uniform(0, np.pi))
    period = rng.uniform(4, 40)
    coords = np.arange(size, dtype=np.float32) * (2 * np.pi / period)
    a, b = coords * direction[0] + rng.uniform(0, 2 * np.pi), coords * direction[1]
    # sin(a + b) from 1-D sines and cosines: much cheaper than a sine per pixel.
    wave = np.sin(a)[None, :] * np.cos(b)[:, None] + np.cos(a)[None, :] * np.sin(b)[:, None]
    tint = rng.uniform(-1, 1, 3).astype(np.float32) * rng.uniform(8, 35)
    striped = np.asarray(image, np.float32) + wave[..., None] * tint
    return Image.fromarray(np.clip(striped, 0, 255).astype(np.uint8))


def _paste_blobs(rng: np.random.Generator, image: Image.Image) -> None:
    """Blends a few heavily blurred coloured ellipses into the image."""
    for _ in range(int(rng.integers(0, 5))):
        cx, cy = rng.uniform(0, image.width, 2)
        rx, ry = rng.uniform(0.05, 0.3, 2) * image.width
        blur = float(rng.uniform(3, 12))
        margin = int(3 * blur) + 1
        x0, y0 = int(cx - rx) - margin, int(cy - ry) - margin
        alpha = Image.new("L", (int(2 * rx) + 2 * margin + 1, int(2 * ry) + 2 * margin + 1), 0)
        ellipse = (cx - rx - x0, cy - ry - y0, cx + rx - x0, cy + ry - y0)
        ImageDraw.Draw(alpha).ellipse(ellipse, fill=int(rng.integers(80, 220)))
        image.paste(
            _random_colour(rng),
            (x0, y0, x0 + alpha.width, y0 + alpha.height),
            alpha.filter(ImageFilter.BoxBlur(blur)),
        )


def _draw_clutter(
    canvas: _Canvas, rng: np.random.Generator, count: int, scale: float, owner: int = 0
) -> None:
    """Non-class distractors: lines, arcs, irregular blobs and handwriting-like scribbles."""
    makers = (_clutter_line, _clutter_arc, _clutter_blob, _clutter_scribble)
    for _ in range(count):
        polygons = makers[int(rng.integers(len(makers)))](rng, canvas.size / _SS, scale)
        canvas.paint(_polygons_mask([(p, 1) for p in polygons]), _random_colour(rng), owner)


def _clutter_line(rng, size: float, scale: float) -> list[np.ndarray]:
    p0 = rng.uniform(0, size, 2)
    p1 = p0 + _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(15, 140) * scale
    return [_capsule(p0, p1, rng.uniform(0.4, 2.0) * scale)]


def _clutter_arc(rng, size: float, scale: float) -> list[np.ndarray]:
    centre, radius = rng.uniform(0, size, 2), rng.uniform(8, 60) * scale
    start = rng.uniform(0, 2 * np.pi)
    t = np.linspace(start, start + rng.uniform(0.6, 4.5), 24)
    half_width = rng.uniform(0.4, 2.0) * scale
    outer = centre + (radius + half_width) * np.stack([np.cos(t), np.sin(t)], axis=1)
    inner = centre + (radius - half_width) * np.stack([np.cos(t), np.sin(t)], axis=1)
    return [np.concatenate([outer, inner[::-1]])]


def _clutter_blob(rng, size: float, scale: float) -> list[np.ndarray]:
    """An irregular smooth blob (random low harmonics on a circle), unlike any class shape."""
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    k = np.arange(2, 6)[:, None]
    harmonics = rng.uniform(0.06, 0.22, (4, 1)) * np.cos(k * t + rng.uniform(0, 2 * np.pi, (4, 1)))
    radius = _log_uniform(rng, 5, 45) * scale * (1 + harmonics.sum(axis=0))
    return [rng.uniform(0, size, 2) + radius[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)]


def _clutter_scribble(rng, size: float, scale: float) -> list[np.ndarray]:
    """A row of small zigzag strokes, like handwriting."""
    n = int(rng.integers(6, 20))
    height = rng.uniform(3, 10) * scale
    steps = np.stack([rng.uniform(1, 4, n) * scale, rng.uniform(-1, 1, n) * height], axis=1)
    points = _rotate(np.cumsum(steps, axis=0), rng.uniform(-0.5, 0.5)) + rng.uniform(0, size, 2)
    width = rng.uniform(0.4, 1.0) * scale
    return [_capsule(a, b, width, n=4) for a, b in zip(points[:-1], points[1:])]
