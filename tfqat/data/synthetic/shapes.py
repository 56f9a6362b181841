"""The detection scene: 7 shape classes that differ in form (colour is random per object), sizes
log-uniform over 8-120 px at 256 px, rotated, overlapping, on textured backgrounds with non-class
clutter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfqat.data.synthetic.background import _background, _draw_clutter
from tfqat.data.synthetic.canvas import (
    _PLACEMENT_TRIES,
    _SS,
    DEFAULT_IMAGE_SIZE,
    _Canvas,
    _contrasting_colour,
    _ellipse,
    _log_uniform,
    _polygons_mask,
    _rotate,
    _round,
    _shaded_patch,
    _unit_arc,
)

DETECTION_CLASSES = ("circle", "square", "triangle", "star", "cross", "hexagon", "ring")
_OBJECT_SIZE_RANGE = (8.0, 120.0)  # unrotated extent in px at 256, log-uniform
_OBJECTS_PER_IMAGE = (3, 12)
_EMPTY_IMAGE_FRACTION = 0.04
_MIN_VISIBLE = 0.5  # a new object may not leave an earlier one less visible than this
_MIN_VISIBLE_LABELED = 0.4  # objects more occluded than this (by top clutter) are not annotated
_MIN_INSIDE = 0.6  # fraction of an object's area that must lie inside the image


@dataclass
class _Shape:
    category_id: int
    bbox: list[float]  # xywh, clipped to the image
    pixels: int  # 2x canvas pixels inside the image
    visible: int  # of those, pixels not covered by anything drawn later


def _detection_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
    scale = size / DEFAULT_IMAGE_SIZE
    canvas = _Canvas(_background(rng, size))
    _draw_clutter(canvas, rng, int(rng.integers(2, 9)), scale)
    shapes: list[_Shape] = []
    low, high = _OBJECTS_PER_IMAGE
    num_objects = 0 if rng.random() < _EMPTY_IMAGE_FRACTION else int(rng.integers(low, high + 1))
    for _ in range(num_objects):
        _place_shape(canvas, rng, scale, shapes)
    _draw_clutter(canvas, rng, int(rng.integers(0, 3)), scale * 0.5, owner=-1)
    visible = np.bincount(canvas.owner[canvas.owner > 0], minlength=len(shapes) + 1)[1:]
    objects = [
        {
            "category_id": shape.category_id,
            "bbox": shape.bbox,
            "area": round(shape.pixels / _SS**2, 2),
        }
        for shape, pixels in zip(shapes, visible)
        if pixels >= _MIN_VISIBLE_LABELED * shape.pixels
    ]
    return canvas.finish(rng), objects


def _place_shape(
    canvas: _Canvas, rng: np.random.Generator, scale: float, shapes: list[_Shape]
) -> None:
    """Draws a random shape where it leaves every earlier one mostly visible and appends it to
    `shapes`; draws nothing when no such place is found."""
    class_index = int(rng.integers(len(DETECTION_CLASSES)))
    unit_polygons = _shape_polygons(DETECTION_CLASSES[class_index], rng)
    extent = _log_uniform(rng, *_OBJECT_SIZE_RANGE) * scale
    stretch = rng.uniform(0.9, 1.1)
    angle = rng.uniform(0, 2 * np.pi)
    size = canvas.size / _SS
    for _ in range(_PLACEMENT_TRIES):
        centre = rng.uniform(0, size, 2)
        polygons = [
            (_rotate(p * extent * (stretch, 1 / stretch), angle) + centre, fill)
            for p, fill in unit_polygons
        ]
        mask = _polygons_mask(polygons)
        under = canvas.owners_under(mask)
        if under.size < _MIN_INSIDE * mask.pixels.sum():
            continue
        covered = np.bincount(under[under > 0], minlength=len(shapes) + 1)[1:]
        if any(
            shape.visible - c < _MIN_VISIBLE * shape.pixels for shape, c in zip(shapes, covered)
        ):
            continue
        for shape, c in zip(shapes, covered):
            shape.visible -= int(c)
        outline = polygons[0][0]
        x0, y0 = np.maximum(outline.min(axis=0), 0)
        x1, y1 = np.minimum(outline.max(axis=0), size)
        colour = _contrasting_colour(rng, canvas.mean_colour((x0, y0, x1, y1)))
        canvas.paint(mask, _shaded_patch(rng, colour, mask.pixels.shape), owner=len(shapes) + 1)
        shapes.append(
            _Shape(class_index + 1, _round([x0, y0, x1 - x0, y1 - y0]), under.size, under.size)
        )
        return


def _shape_polygons(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """(vertices, fill) polygons of a class shape, centred, the longer side of its box 1."""
    if name == "circle":
        polygons = [(_ellipse((0, 0), 1, 1, n=48), 1)]
    elif name == "square":
        polygons = [(_ellipse((0, 0), 1, 1, np.pi / 4, n=4), 1)]
    elif name == "triangle":
        polygons = [(_ellipse((0, 0), 1, 1, n=3), 1)]
    elif name == "star":
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        polygons = [(_unit_arc(0.0, 2 * np.pi, 10) * radii[:, None], 1)]
    elif name == "cross":
        t = rng.uniform(0.28, 0.42)  # half the arm width
        arm = np.array([[t, t], [t, 1], [-t, 1], [-t, t]])
        polygons = [(np.concatenate([_rotate(arm, k * np.pi / 2) for k in range(4)]), 1)]
    elif name == "hexagon":
        polygons = [(_ellipse((0, 0), 1, 1, n=6), 1)]
    elif name == "ring":
        hole = rng.uniform(0.45, 0.65)
        polygons = [(_ellipse((0, 0), 1, 1, n=48), 1), (_ellipse((0, 0), hole, hole, n=48), 0)]
    else:
        raise ValueError(f"unknown shape {name!r}; valid choices: {', '.join(DETECTION_CLASSES)}")
    outline = polygons[0][0]
    low, high = outline.min(axis=0), outline.max(axis=0)
    centre, extent = (low + high) / 2, (high - low).max()
    return [((p - centre) / extent, fill) for p, fill in polygons]
