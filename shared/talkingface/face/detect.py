"""Face detection with MediaPipe's BlazeFace short-range model (faces within ~2 m).

The model sees the frame letterboxed into 128 × 128 (aspect kept, RGB scaled to [-1, 1]) and
scores 896 fixed anchors: 16 × 16 cells × 2 anchors at stride 8 and 8 × 8 cells × 6 anchors
at stride 16, each cell's anchors centred on it, of unit size (MediaPipe's
SsdAnchorsCalculator with num_layers 4, strides 8/16/16/16, fixed_anchor_size). Each anchor
regresses a box (centre offset, width, height) and six keypoints, all in 128-pixel units
relative to the anchor centre: the subject's right eye, left eye, nose tip, mouth centre,
right ear tragion, left ear tragion. Scores are sigmoids of logits clipped to ±100; boxes
over 0.5 are merged by weighted non-maximum suppression (overlap 0.3), as MediaPipe does.

The short-range model wants a face of at least about a fifth of the frame's long side. When
the whole frame shows none, `detect` looks again in overlapping square tiles of half the
frame's short side (a 720p frame: 18 tiles of 360 px), so a face of 7 % of a 1280-pixel
frame is still found; tiles' detections are merged by the same suppression.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from talkingface.face.models import TFLiteModel

INPUT = 128
MIN_SCORE = 0.5
NMS_IOU = 0.3
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")


def _anchors() -> np.ndarray:
    """[896, 2] anchor centres in [0, 1] (x, y), in the model's output order."""
    centres = []
    for stride, per_cell in ((8, 2), (16, 6)):
        cells = INPUT // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 2)
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


ANCHORS = _anchors()


@dataclass
class Detection:
    """One face in image pixels: box (x0, y0, x1, y1), the six keypoints [6, 2], a score."""

    box: np.ndarray
    keypoints: np.ndarray
    score: float
    extra: dict = field(default_factory=dict)

    @property
    def size(self) -> float:
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, float, np.ndarray]:
    """`rgb` [H, W, 3] uint8 scaled to fit `size` × `size` and centred on black; returns the
    square, the scale and the offset such that square = image * scale + offset."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out, scale, np.array([left, top], np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def weighted_nms(boxes, keypoints, scores, iou: float = NMS_IOU):
    """MediaPipe's weighted NMS: each kept face is the score-weighted mean of its cluster."""
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    kept = []
    remaining = np.ones(len(scores), bool)
    for i in range(len(scores)):
        if not remaining[i]:
            continue
        cluster = remaining & (_iou(boxes[i], boxes) > iou)
        cluster[i] = True
        weights = scores[cluster][:, None]
        box = (boxes[cluster] * weights).sum(0) / weights.sum()
        points = (keypoints[cluster] * weights[:, :, None]).sum(0) / weights.sum()
        kept.append((box, points, float(scores[i])))
        remaining &= ~cluster
    return kept


class FaceDetector:
    """`detect(rgb)` -> faces, best first. Not thread-safe (one LiteRT interpreter)."""

    def __init__(self, cache_dir=None, min_score: float = MIN_SCORE) -> None:
        self.model = TFLiteModel("face_detection", cache_dir)
        self.min_score = min_score

    def detect(self, rgb: np.ndarray, tiles: bool = True) -> list[Detection]:
        """Faces in `rgb` [H, W, 3] uint8, best score first (in tiles when the whole frame
        shows none and `tiles`)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError("expected an RGB image [H, W, 3] uint8")
        faces = self._detect(rgb)
        h, w = rgb.shape[:2]
        if faces or not tiles or min(h, w) < 2 * INPUT:
            return faces
        size = min(h, w) // 2
        step = size // 2
        found = []
        for top in range(0, h - size + 1, step):
            for left in range(0, w - size + 1, step):
                tile = np.ascontiguousarray(rgb[top : top + size, left : left + size])
                for face in self._detect(tile):
                    shift = np.array([left, top], np.float32)
                    face.box = face.box + np.tile(shift, 2)
                    face.keypoints = face.keypoints + shift
                    found.append(face)
        if not found:
            return []
        merged = weighted_nms(np.stack([f.box for f in found]),
                              np.stack([f.keypoints for f in found]),
                              np.array([f.score for f in found]))  # fmt: skip
        return [Detection(box, points.astype(np.float32), score) for box, points, score in merged]

    def _detect(self, rgb: np.ndarray) -> list[Detection]:
        square, scale, offset = letterbox(rgb, INPUT)
        x = square.astype(np.float32)[None] / 127.5 - 1.0
        raw, logits = self.model.run(x)
        raw, logits = raw[0], logits[0, :, 0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -100.0, 100.0)))
        keep = scores >= self.min_score
        if not keep.any():
            return []
        raw, scores, anchors = raw[keep], scores[keep], ANCHORS[keep]
        centre = raw[:, 0:2] / INPUT + anchors
        half = raw[:, 2:4] / INPUT / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        keypoints = raw[:, 4:16].reshape(-1, 6, 2) / INPUT + anchors[:, None, :]
        faces = []
        for box, points, score in weighted_nms(boxes, keypoints, scores):
            # model square [0, 1] -> image pixels
            box_px = (box.reshape(2, 2) * INPUT - offset) / scale
            points_px = (points * INPUT - offset) / scale
            faces.append(Detection(box_px.reshape(4), points_px.astype(np.float32), score))
        return faces
