"""Drawing, shared by both scenes: masks, the canvas with the owner of each pixel, polygon
geometry and colours. Every image is drawn at twice its size and box-downsampled, which
anti-aliases the edges."""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from PIL import Image, ImageDraw, ImageStat

# The scenes' sizes in pixels are given for this image size and scale with `image_size`.
DEFAULT_IMAGE_SIZE = 256
_SS = 2  # supersampling factor of the drawing canvas
_PLACEMENT_TRIES = 12  # attempts at placing a shape or a figure


@dataclass
class _Mask:
    """A binary mask on the 2x canvas, placed with its top-left pixel at (x0, y0)."""

    image: Image.Image  # mode L, 0 or 255
    pixels: np.ndarray  # the same as bool (h, w)
    x0: int
    y0: int

    def on_canvas(self, canvas_size: int) -> tuple[tuple[slice, slice], np.ndarray]:
        """The canvas slices this mask covers and the part of `pixels` inside the canvas."""
        h, w = self.pixels.shape
        cx0, cy0 = max(self.x0, 0), max(self.y0, 0)
        cx1, cy1 = min(self.x0 + w, canvas_size), min(self.y0 + h, canvas_size)
        if cx1 <= cx0 or cy1 <= cy0:
            return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
        local = self.pixels[cy0 - self.y0 : cy1 - self.y0, cx0 - self.x0 : cx1 - self.x0]
        return (slice(cy0, cy1), slice(cx0, cx1)), local


def _polygons_mask(polygons: list[tuple[np.ndarray, int]]) -> _Mask:
    """Rasterizes (vertices in 1x image coordinates, fill 1 or 0) polygons, in order, at 2x."""
    # A vertex at continuous 1x position p lies at 2p - 0.5 in PIL's pixel-centre coordinates.
    scaled = [(_SS * np.asarray(p, np.float64) - 0.5, fill) for p, fill in polygons]
    points = np.concatenate([p for p, _ in scaled])
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 2
    image = Image.new("L", (int(x1 - x0), int(y1 - y0)), 0)
    draw = ImageDraw.Draw(image)
    for p, fill in scaled:
        draw.polygon((p - (x0, y0)).ravel().tolist(), fill=255 * fill)
    return _Mask(image, np.asarray(image) > 0, int(x0), int(y0))


class _Canvas:
    """A 2x-supersampled RGB image plus, per 2x pixel, the id of what was drawn there last.

    Owner ids: 0 background or clutter, -1 occluders, >= 1 annotated things.
    """

    def __init__(self, background: Image.Image):
        self.size = _SS * background.width
        # Nearest-neighbour upsampling: where nothing is drawn, downsampling restores the
        # background.
        self.image = background.resize((self.size, self.size), Image.Resampling.NEAREST)
        self.owner = np.zeros((self.size, self.size), np.int32)

    def owners_under(self, mask: _Mask) -> np.ndarray:
        region, local = mask.on_canvas(self.size)
        return self.owner[region][local]

    def paint(self, mask: _Mask, colour, owner: int) -> None:
        """Paints `colour` (an RGB triple or an (h, w, 3) uint8 patch the size of the mask) under
        the mask."""
        fill = Image.fromarray(colour) if isinstance(colour, np.ndarray) else colour
        self.image.paste(fill, (mask.x0, mask.y0), mask.image)
        region, local = mask.on_canvas(self.size)
        self.owner[region][local] = owner

    def mean_colour(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """Mean RGB inside a 1x box (x0, y0, x1, y1)."""
        x0, y0, x1, y1 = (int(round(min(max(_SS * v, 0), self.size))) for v in box)
        if x1 <= x0 or y1 <= y0:
            return np.full(3, 128.0)
        return np.array(ImageStat.Stat(self.image.crop((x0, y0, x1, y1))).mean)

    def finish(self, rng: np.random.Generator) -> np.ndarray:
        """Downsamples to 1x and adds sensor-like noise; returns the uint8 image."""
        image = np.asarray(self.image.reduce(_SS)).astype(np.int16)
        noise = np.round(_gaussian_quantiles() * rng.uniform(1.5, 8.0)).astype(np.int16)
        image += noise[rng.integers(0, 256, image.shape, dtype=np.uint8)]
        return np.clip(image, 0, 255).astype(np.uint8)


@functools.cache
def _gaussian_quantiles() -> np.ndarray:
    """256 equally likely standard-normal values: indexing them with random bytes is a much
    faster Gaussian noise than drawing normals."""
    return np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32)


@functools.cache
def _unit_arc(start: float, stop: float, n: int) -> np.ndarray:
    """n points of the unit circle from angle `start` to `stop` (excluded when a full turn)."""
    t = np.linspace(start, stop, n, endpoint=stop - start < 2 * np.pi)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _ellipse(centre, rx: float, ry: float, angle: float = 0.0, n: int = 32) -> np.ndarray:
    return _rotate(_unit_arc(0.0, 2 * np.pi, n) * (rx, ry), angle) + centre


def _capsule(p0, p1, radius: float, n: int = 8) -> np.ndarray:
    """Outline of a thick segment with round ends (a stadium)."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    d = p1 - p0
    angle = np.arctan2(d[1], d[0]) if np.hypot(*d) > 1e-9 else 0.0
    cap = _rotate(_unit_arc(-np.pi / 2, np.pi / 2, n) * radius, angle)
    return np.concatenate([p1 + cap, p0 - cap])


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _contrasting_colour(
    rng: np.random.Generator, reference: np.ndarray, min_distance: float = 70.0
):
    """A random colour at least `min_distance` (RGB) from `reference`, so objects stay visible."""
    colour = _random_colour(rng)
    for _ in range(20):
        if np.linalg.norm(np.subtract(colour, reference)) >= min_distance:
            break
        colour = _random_colour(rng)
    return colour


def _shaded_patch(rng: np.random.Generator, colour, shape: tuple[int, int]) -> np.ndarray:
    """A uint8 patch of `colour` with a random linear shading gradient across it."""
    h, w = shape
    shade = _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(0, 45)
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], np.float32) @ shade
    corners = np.clip(np.asarray(colour, np.float32) + corners[:, None], 0, 255).astype(np.uint8)
    # Bilinear upsampling of the 2x2 corner colours is a linear ramp.
    ramp = Image.fromarray(corners.reshape(2, 2, 3)).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(ramp)


def _round(values) -> list[float]:
    return [round(float(v), 2) for v in values]
