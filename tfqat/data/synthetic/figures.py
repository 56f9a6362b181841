"""The pose scene: articulated figures with the 17 COCO keypoints, 1-4 per image, front / back
/ profile views. A figure's left limbs and ear are always warm (red-orange), its right ones always
cool (blue), so left and right stay learnable in every view."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfqat.data.synthetic.background import _background, _draw_clutter
from tfqat.data.synthetic.canvas import (
    _PLACEMENT_TRIES,
    _SS,
    DEFAULT_IMAGE_SIZE,
    _Canvas,
    _capsule,
    _ellipse,
    _hsv,
    _log_uniform,
    _polygons_mask,
    _random_colour,
    _rotate,
    _round,
    _shaded_patch,
    _unit,
)

KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip

_PERSON_HEIGHT_RANGE = (60.0, 220.0)  # px at 256, log-uniform
_PERSONS_PER_IMAGE = (1, 4)
_MAX_PERSON_IOU = 0.3
_MIN_KEYPOINTS_INSIDE = 11
_KEYPOINT_DROP_RATE = 0.04  # labeled keypoints randomly left unlabeled (v=0)
_OCCLUDER_PROBABILITY = 0.4
_LEFT_HUES = (0.0, 0.1)  # red to orange
_RIGHT_HUES = (0.53, 0.7)  # cyan to blue
_TORSO_HUES = ((0.22, 0.45), (0.75, 0.92))  # greens, purples

NOSE, LEFT_EYE, RIGHT_EYE, LEFT_EAR, RIGHT_EAR = range(5)
TORSO, HEAD, LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG = range(6)
_PARTS_PER_PERSON = 6
# Body parts a keypoint belongs to: it is visible (v=2) when one of them is drawn on top of it.
_KEYPOINT_PARTS = (
    (HEAD,), (HEAD,), (HEAD,), (HEAD,), (HEAD,), (TORSO, LEFT_ARM), (TORSO, RIGHT_ARM),
    (LEFT_ARM,), (RIGHT_ARM,), (LEFT_ARM,), (RIGHT_ARM,), (TORSO, LEFT_LEG), (TORSO, RIGHT_LEG),
    (LEFT_LEG,), (RIGHT_LEG,), (LEFT_LEG,), (RIGHT_LEG,),
)  # fmt: skip


@dataclass
class _Piece:
    polygons: list[np.ndarray]
    colour: tuple[int, int, int]


@dataclass
class _Figure:
    """A person ready to draw: keypoints in 1x image coordinates, parts in drawing order."""

    keypoints: np.ndarray  # (17, 2)
    labeled: np.ndarray  # (17,) bool: False for face points the view hides (back of head, profile)
    parts: list[tuple[int, list[_Piece]]]  # (part id, pieces), back to front


def _pose_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
    scale = size / DEFAULT_IMAGE_SIZE
    canvas = _Canvas(_background(rng, size))
    _draw_clutter(canvas, rng, int(rng.integers(2, 9)), scale)
    figures = _place_figures(rng, size, scale)
    person_masks = [
        _draw_figure(canvas, figure, 1 + i * _PARTS_PER_PERSON) for i, figure in enumerate(figures)
    ]
    if figures and rng.random() < _OCCLUDER_PROBABILITY:
        _draw_occluders(canvas, rng, figures)
    _draw_clutter(canvas, rng, int(rng.integers(0, 3)), scale * 0.5, owner=-1)
    objects = [
        _person_annotation(canvas, rng, figure, mask, 1 + i * _PARTS_PER_PERSON)
        for i, (figure, mask) in enumerate(zip(figures, person_masks))
    ]
    return canvas.finish(rng), [obj for obj in objects if obj is not None]


def _place_figures(rng: np.random.Generator, size: int, scale: float) -> list[_Figure]:
    """1-4 random figures, mostly inside the image, overlapping each other only a little."""
    figures, boxes = [], []
    for _ in range(int(rng.integers(_PERSONS_PER_IMAGE[0], _PERSONS_PER_IMAGE[1] + 1))):
        for _ in range(_PLACEMENT_TRIES):
            height = _log_uniform(rng, *_PERSON_HEIGHT_RANGE) * scale
            figure = _random_figure(rng, height, rng.uniform(0.1, 0.9, 2) * size)
            inside = np.all((figure.keypoints >= 0) & (figure.keypoints < size), axis=1)
            box = np.concatenate([figure.keypoints.min(axis=0), figure.keypoints.max(axis=0)])
            if inside.sum() >= _MIN_KEYPOINTS_INSIDE and all(
                _iou(box, b) <= _MAX_PERSON_IOU for b in boxes
            ):
                figures.append(figure)
                boxes.append(box)
                break
    return figures


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union) if union > 0 else 0.0


@dataclass
class _View:
    """How a figure faces the camera, and its body frame in the image."""

    facing: int  # profile views: +1 facing image-right, -1 image-left; 0 front and back
    back: bool
    width: float  # shoulder and hip spread, 1 in a full front view
    up: np.ndarray  # unit vector from hips to neck
    across: np.ndarray  # unit vector perpendicular to `up`, toward image-right when upright
    left: np.ndarray  # unit vector toward the figure's left side


def _random_view(rng: np.random.Generator) -> _View:
    """Front (the figure's left on image right), back (mirrored) or profile. A profile figure is
    turned slightly either way, so its left and right joints stay a little apart."""
    kind = rng.choice(["front", "back", "profile"], p=[0.45, 0.2, 0.35])
    up = _unit(-np.pi / 2 + rng.normal(0, 0.15))
    across = np.array([-up[1], up[0]])
    if kind == "profile":
        facing, side, width = (
            int(rng.choice([-1, 1])),
            int(rng.choice([-1, 1])),
            rng.uniform(0.1, 0.3),
        )
    else:
        facing, side, width = 0, (1 if kind == "front" else -1), rng.uniform(0.8, 1.0)
    return _View(facing, kind == "back", width, up, across, across * side)


def _random_figure(rng: np.random.Generator, h: float, hip_centre: np.ndarray) -> _Figure:
    """A figure of standing height `h` in a random pose and view."""
    view = _random_view(rng)
    up, left = view.up, view.left
    kp = np.zeros((17, 2))
    neck = hip_centre + up * 0.3 * h
    shoulder_centre = neck - up * 0.02 * h
    shoulder_offset, hip_offset = left * 0.13 * h * view.width, left * 0.09 * h * view.width
    kp[5], kp[6] = shoulder_centre + shoulder_offset, shoulder_centre - shoulder_offset
    kp[11], kp[12] = hip_centre + hip_offset, hip_centre - hip_offset
    for sign, (shoulder, elbow, wrist) in ((1, (5, 7, 9)), (-1, (6, 8, 10))):
        kp[elbow], kp[wrist] = _limb(rng, view, kp[shoulder], sign, 0.17 * h, 0.15 * h, arm=True)
    for sign, (hip, knee, ankle) in ((1, (11, 13, 15)), (-1, (12, 14, 16))):
        kp[knee], kp[ankle] = _limb(rng, view, kp[hip], sign, 0.24 * h, 0.23 * h, arm=False)
    labeled = np.ones(17, bool)
    head = _head(rng, view, kp, labeled, neck, h)
    parts = _body_parts(rng, view, kp, neck, hip_centre, h, head)
    return _Figure(kp, labeled, parts)


def _limb(rng, view: _View, root, sign: int, upper: float, lower: float, arm: bool):
    """Middle and end joints of an arm or leg (`sign` +1 left, -1 right): raised from hanging
    toward its side (front, back) or forward (profile), then bent. In profile, elbows flex
    forward and knees backward."""
    if arm:
        raise_angle = rng.uniform(-1.0, 2.6) if view.facing else rng.uniform(-0.3, 2.8)
        bend = rng.uniform(0, 2.4) if view.facing else rng.uniform(-2.2, 2.2)
    else:
        raise_angle = rng.uniform(-0.5, 1.4) if view.facing else rng.uniform(-0.15, 0.6)
        bend = rng.uniform(0, 1.8) if view.facing else rng.uniform(-0.5, 0.5)
    swing = view.across * view.facing if view.facing else view.left * sign
    direction = -view.up * np.cos(raise_angle) + swing * np.sin(raise_angle)
    middle = root + direction * upper
    if view.facing:
        # In image coordinates (y down) a negative angle turns a hanging limb toward +x.
        bend *= -view.facing if arm else view.facing
    return middle, middle + _rotate(direction[None], bend)[0] * lower


def _head(rng, view: _View, kp: np.ndarray, labeled: np.ndarray, neck, h: float) -> list[_Piece]:
    """Sets the face keypoints (and `labeled` for those the view hides); returns the head pieces:
    neck and head, ears in their side's colour, eye dots, nose."""
    head_up = _rotate(view.up[None], rng.normal(0, 0.2))[0]
    centre = neck + head_up * 0.14 * h
    rx, ry = (0.075 if view.facing else 0.07) * h, 0.085 * h
    head_across = np.array([-head_up[1], head_up[0]])
    angle = np.arctan2(head_across[1], head_across[0])
    skin = _hsv(rng.uniform(0.02, 0.11), rng.uniform(0.2, 0.6), rng.uniform(0.35, 0.95))
    eye_radius = max(0.14 * rx, 0.75)
    dark = (20, 20, 25)

    def at(across_offset: float, up_offset: float) -> np.ndarray:
        return centre + head_across * across_offset * rx + head_up * up_offset * ry

    def dot(point, radius: float, colour) -> _Piece:
        return _Piece([_ellipse(point, radius, radius, n=12)], colour)

    def ear(point, is_left: bool) -> _Piece:
        return _Piece(
            [_ellipse(point, 0.24 * rx, 0.3 * ry, angle, n=16)], _side_colour(rng, is_left)
        )

    neck_piece = _Piece([_capsule(neck, centre, 0.03 * h)], skin)
    if view.facing:
        f = view.facing
        near_ear = RIGHT_EAR if f == 1 else LEFT_EAR  # facing image-right shows the right side
        near_eye, far_ear = near_ear - 2, LEFT_EAR + RIGHT_EAR - near_ear
        kp[NOSE], kp[near_eye], kp[near_ear] = (
            at(1.08 * f, -0.05),
            at(0.55 * f, 0.2),
            at(-0.1 * f, 0.05),
        )
        labeled[[far_ear - 2, far_ear]] = False
        nose = _ellipse(at(0.95 * f, -0.05), 0.22 * rx, 0.16 * ry, angle)
        head = _Piece([_ellipse(centre, rx, ry, angle), nose], skin)
        return [
            neck_piece,
            head,
            ear(kp[near_ear], near_ear == LEFT_EAR),
            dot(kp[near_eye], eye_radius, dark),
        ]
    side = float(np.dot(view.left, view.across))  # +1 front, -1 back
    kp[LEFT_EAR], kp[RIGHT_EAR] = at(0.98 * side, 0.05), at(-0.98 * side, 0.05)
    ears = [ear(kp[LEFT_EAR], True), ear(kp[RIGHT_EAR], False)]
    if view.back:
        labeled[[NOSE, LEFT_EYE, RIGHT_EYE]] = False
        hair = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.3, 0.8), rng.uniform(0.08, 0.35))
        return [neck_piece, *ears, _Piece([_ellipse(centre, rx, ry, angle)], hair)]
    kp[NOSE], kp[LEFT_EYE], kp[RIGHT_EYE] = (
        at(0, -0.15),
        at(0.38 * side, 0.18),
        at(-0.38 * side, 0.18),
    )
    return [
        neck_piece,
        *ears,
        _Piece([_ellipse(centre, rx, ry, angle)], skin),
        dot(kp[LEFT_EYE], eye_radius, dark),
        dot(kp[RIGHT_EYE], eye_radius, dark),
        dot(kp[NOSE], max(0.13 * rx, 0.7), tuple(int(c * 0.7) for c in skin)),
    ]


def _side_colour(
    rng: np.random.Generator, is_left: bool, value_scale: float = 1.0
) -> tuple[int, int, int]:
    hues = _LEFT_HUES if is_left else _RIGHT_HUES
    return _hsv(rng.uniform(*hues), rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95) * value_scale)


def _body_parts(
    rng, view: _View, kp, neck, hip_centre, h: float, head: list[_Piece]
) -> list[tuple[int, list[_Piece]]]:
    """Torso, limbs and head in drawing order (back to front)."""
    pieces = {TORSO: [_torso(rng, view, neck, hip_centre, h)], HEAD: head}
    for part, (a, b, c), is_left in (
        (LEFT_ARM, (5, 7, 9), True), (RIGHT_ARM, (6, 8, 10), False),
        (LEFT_LEG, (11, 13, 15), True), (RIGHT_LEG, (12, 14, 16), False),
    ):  # fmt: skip
        is_arm = part in (LEFT_ARM, RIGHT_ARM)
        upper_colour = _side_colour(rng, is_left, 1.0 if is_arm else 0.85)
        lower_colour = tuple(int(v * 0.75) for v in upper_colour)
        upper_radius, lower_radius = (0.035, 0.03) if is_arm else (0.05, 0.04)
        if is_arm:
            end = _ellipse(kp[c], 0.035 * h, 0.035 * h, n=12)  # hand
        else:
            toe = view.across * view.facing * 0.08 * h if view.facing else -view.up * 0.015 * h
            end = _capsule(kp[c], kp[c] + toe, 0.025 * h)  # foot
        pieces[part] = [
            _Piece([_capsule(kp[a], kp[b], upper_radius * h)], upper_colour),
            _Piece([_capsule(kp[b], kp[c], lower_radius * h), end], lower_colour),
        ]
    if view.facing:
        near_is_left = view.facing == -1  # facing image-left shows the left side
        far_arm, near_arm = (RIGHT_ARM, LEFT_ARM) if near_is_left else (LEFT_ARM, RIGHT_ARM)
        far_leg, near_leg = (RIGHT_LEG, LEFT_LEG) if near_is_left else (LEFT_LEG, RIGHT_LEG)
        order = [far_arm, far_leg, TORSO, near_leg, HEAD, near_arm]
    else:
        legs, arms = [LEFT_LEG, RIGHT_LEG], [LEFT_ARM, RIGHT_ARM]
        rng.shuffle(legs)
        rng.shuffle(arms)
        order = legs + [TORSO, HEAD] + arms
    return [(part, pieces[part]) for part in order]


def _torso(rng, view: _View, neck, hip_centre, h: float) -> _Piece:
    """A rounded quadrilateral from the shoulders to the hips; never thinner than a chest."""
    top = neck - view.up * 0.02 * h
    half_top, half_bottom = max(0.13 * view.width, 0.075) * h, max(0.09 * view.width, 0.065) * h
    corners = [
        top + view.across * half_top,
        top - view.across * half_top,
        hip_centre - view.across * half_bottom,
        hip_centre + view.across * half_bottom,
    ]
    edges = [_capsule(a, b, 0.03 * h) for a, b in zip(corners, corners[1:] + corners[:1])]
    return _Piece([np.array(corners), *edges], _torso_colour(rng))


def _torso_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    if rng.random() < 0.25:
        return _hsv(0, 0, rng.uniform(0.2, 0.85))  # grey
    hues = _TORSO_HUES[int(rng.integers(len(_TORSO_HUES)))]
    return _hsv(rng.uniform(*hues), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.9))


def _draw_figure(canvas: _Canvas, figure: _Figure, owner_base: int) -> np.ndarray:
    """Draws a figure; returns its full (occluded parts included) 2x mask on the canvas."""
    person = np.zeros((canvas.size, canvas.size), bool)
    for part, pieces in figure.parts:
        for piece in pieces:
            mask = _polygons_mask([(p, 1) for p in piece.polygons])
            canvas.paint(mask, piece.colour, owner_base + part)
            region, local = mask.on_canvas(canvas.size)
            person[region] |= local
    return person


def _draw_occluders(canvas: _Canvas, rng: np.random.Generator, figures: list[_Figure]) -> None:
    """Rectangles or blobs over random keypoints, so some keypoints are occluded (v=1)."""
    for _ in range(int(rng.integers(1, 3))):
        figure = figures[int(rng.integers(len(figures)))]
        centre = figure.keypoints[int(rng.integers(17))] + rng.normal(0, 3, 2)
        body_height = np.ptp(figure.keypoints[:, 1])
        half = rng.uniform(0.06, 0.16, 2) * max(body_height, 40)
        if rng.random() < 0.5:
            outline = (
                _rotate(
                    np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half, rng.uniform(0, np.pi)
                )
                + centre
            )
        else:
            outline = _ellipse(centre, *half, rng.uniform(0, np.pi), n=24)
        mask = _polygons_mask([(outline, 1)])
        canvas.paint(mask, _shaded_patch(rng, _random_colour(rng), mask.pixels.shape), owner=-1)


def _person_annotation(
    canvas: _Canvas, rng, figure: _Figure, person: np.ndarray, owner_base: int
) -> dict | None:
    rows, cols = np.flatnonzero(person.any(axis=1)), np.flatnonzero(person.any(axis=0))
    if rows.size == 0:
        return None
    x0, x1, y0, y1 = cols[0] / _SS, (cols[-1] + 1) / _SS, rows[0] / _SS, (rows[-1] + 1) / _SS
    keypoints = []
    for k, (x, y) in enumerate(figure.keypoints):
        v = _visibility(canvas, figure, k, x, y, owner_base)
        if v and rng.random() < _KEYPOINT_DROP_RATE:
            v = 0
        keypoints += [round(float(x), 2), round(float(y), 2), v] if v else [0, 0, 0]
    return {
        "category_id": 1,
        "bbox": _round([x0, y0, x1 - x0, y1 - y0]),
        "area": round(float(person.sum()) / _SS**2, 2),
        "keypoints": keypoints,
        "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0),
    }


def _visibility(
    canvas: _Canvas, figure: _Figure, k: int, x: float, y: float, owner_base: int
) -> int:
    """COCO visibility: 0 unlabeled (outside or hidden by the view), 1 occluded, 2 visible."""
    limit = canvas.size / _SS
    if not figure.labeled[k] or not (0 <= x < limit and 0 <= y < limit):
        return 0
    owner = canvas.owner[int(y * _SS), int(x * _SS)]
    return 2 if owner in {owner_base + part for part in _KEYPOINT_PARTS[k]} else 1
