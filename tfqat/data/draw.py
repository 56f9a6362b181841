"""Drawing boxes and skeletons on images with PIL (no TensorFlow), for people to look at."""

import numpy as np
from PIL import Image, ImageDraw

PALETTE = [
    (255, 56, 56),
    (72, 249, 10),
    (0, 194, 255),
    (255, 157, 151),
    (146, 204, 23),
    (255, 178, 29),
    (61, 219, 134),
    (132, 56, 255),
    (255, 55, 199),
    (26, 147, 52),
    (0, 24, 236),
    (207, 210, 49),
]


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))


def draw_boxes(image, boxes_xyxy, labels, names=None, scores=None, color=None) -> Image.Image:
    """Boxes with their class name (and score); each class gets its own colour unless given."""
    picture = _to_pil(image)
    pen = ImageDraw.Draw(picture)
    for i, (box, label) in enumerate(zip(np.asarray(boxes_xyxy), np.asarray(labels))):
        c = color or PALETTE[int(label) % len(PALETTE)]
        pen.rectangle([float(v) for v in box], outline=c, width=1)
        text = names[int(label)] if names is not None else str(int(label))
        if scores is not None:
            text += f" {float(scores[i]):.2f}"
        pen.text((float(box[0]) + 1, float(box[1]) + 1), text, fill=c)
    return picture


def draw_keypoints(image, keypoints, skeleton, color=None, threshold=0.0) -> Image.Image:
    """Keypoints [P?, K, 3] (x, y, v or score) with the COCO 1-based skeleton drawn.

    Left-side points are drawn in one colour and right-side in another unless `color` is given.
    """
    picture = _to_pil(image)
    pen = ImageDraw.Draw(picture)
    people = np.asarray(keypoints, np.float32)
    if people.ndim == 2:
        people = people[None]
    for person in people:
        visible = person[:, 2] > threshold
        for a, b in skeleton:
            if visible[a - 1] and visible[b - 1]:
                line = [tuple(person[a - 1, :2]), tuple(person[b - 1, :2])]
                pen.line(line, fill=color or (255, 255, 0), width=1)
        for k, (x, y, _) in enumerate(person):
            if visible[k]:
                c = color or (PALETTE[0] if k % 2 else PALETTE[2])
                pen.ellipse([x - 2, y - 2, x + 2, y + 2], outline=c, fill=c)
    return picture
