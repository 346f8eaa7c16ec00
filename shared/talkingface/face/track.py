"""Tracking one face through a video, temporal smoothing, and person segmentation.

`FaceTracker.track(frame)` detects on the first frame and whenever the track is lost (the
mesh's face-presence score under 0.5); otherwise it crops from the previous frame's mesh, as
MediaPipe's face-mesh graph does. Every `count_every` frames it also runs the detector to
count the faces in view, so that a second person who walks in is noticed although the
tracker never needs the detector for the tracked face. Faces are counted from a detection
score of 0.75 (weaker detections are mostly clutter: a fold of clothing scored 0.55 on the
test portrait). The caller decides what too many faces means (`talkingface avatar ingest`:
an error when it lasts more than a few frames). Each mesh is the model's one reading of its
crop, as MediaPipe's; `read_in_views` reads tracked faces again as the mean of ten views
(`face.mesh.VIEWS`, shifted and mirrored).

`OneEuro` is the One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) over any array of
coordinates: a low-pass filter whose cut-off rises with speed, so slow motion is smoothed
and fast motion is followed without lag. `jitter` measures what it removes.

`PersonSegmenter.run(frame)` is MediaPipe's selfie segmentation: the probability that each
pixel belongs to a person.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from talkingface.face.detect import FaceDetector, letterbox
from talkingface.face.mesh import MIN_PRESENCE, SINGLE_VIEW, VIEWS, FaceMesh, Roi
from talkingface.face.models import TFLiteModel

COUNT_MIN_SCORE = 0.75


@dataclass
class Tracked:
    """One frame's result: the mesh in image pixels ([468, 3]) or None when no face was
    found; its presence score; whether the detector was run for it (first frame, lost track
    or a face count); how many faces the detector saw (None when it was not run); the
    detection score of the face taken (None when tracked)."""

    points: np.ndarray | None
    presence: float
    detected: bool
    faces: int | None
    detection_score: float | None = None


class FaceTracker:
    """Tracks the most prominent face of a video, frame by frame (not thread-safe)."""

    def __init__(self, cache_dir=None, count_every: int = 5, refine: int = 1) -> None:
        self.detector = FaceDetector(cache_dir)
        self.mesh = FaceMesh(cache_dir, SINGLE_VIEW)
        self.count_every = max(1, count_every)
        self.refine = refine
        self.previous: np.ndarray | None = None
        self.frame = 0

    def reset(self) -> None:
        self.previous = None

    def track(self, rgb: np.ndarray) -> Tracked:
        index, self.frame = self.frame, self.frame + 1
        counted = None
        if self.previous is not None:
            result = self.mesh.run(rgb, Roi.from_landmarks(self.previous))
            if result.presence >= MIN_PRESENCE:
                self.previous = result.points
                if index % self.count_every == 0:
                    counted = _count(self.detector.detect(rgb))
                return Tracked(result.points, result.presence, counted is not None, counted)
        faces = self.detector.detect(rgb)  # best score first
        best = None
        for face in faces:  # the first whose mesh confirms a face
            result = self.mesh.run(rgb, Roi.from_detection(face))
            for _ in range(self.refine):  # the crop a tracked frame would have had
                if result.presence < MIN_PRESENCE:
                    break
                result = self.mesh.run(rgb, Roi.from_landmarks(result.points))
            if result.presence >= MIN_PRESENCE:
                best = (face, result)
                break
        if best is None:
            self.previous = None
            return Tracked(None, 0.0, True, _count(faces))
        face, result = best
        self.previous = result.points
        return Tracked(result.points, result.presence, True, _count(faces), face.score)


def _count(faces) -> int:
    return sum(face.score >= COUNT_MIN_SCORE for face in faces)


def on_threads(fn: Callable[..., Any], items: Iterable[tuple], workers: int,
               name: str) -> Iterator[Any]:  # fmt: skip
    """`fn(*item)` for each of `items` on `workers` threads, yielded in the items' order; at
    most two items a worker wait in memory (a video's frames are streamed, not stored). For
    work that lets go of the GIL: LiteRT's interpreters, PIL's resampling."""
    with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, *item))
            while len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class StreamTooShort(ValueError):
    """`read_in_views` got fewer frames than meshes."""


def read_in_views(frames: Iterable[np.ndarray], meshes: np.ndarray, found: np.ndarray,
                  views=VIEWS, workers: int | None = None,
                  progress: Callable[[int], None] | None = None,
                  also: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
                  ) -> np.ndarray:  # fmt: skip
    """Each frame's face where `found`, read again as the mean of `views` of the crop around
    its mesh ([T, 468, 3], one per frame of the stream `frames`); the other frames keep
    theirs. Frames are read on `workers` threads (default: the cores, at most 4), each with
    its own interpreter (LiteRT lets go of the GIL while it runs: 1.9x on 2 cores); at most
    two frames a worker wait in memory. `progress(i)` is called every 50 frames;
    `also(i, frame, points)`, on the worker, with each face read again (for what else the
    frame is needed: the ingest's lip colours). Returns the new meshes; StreamTooShort when
    the stream has fewer frames than `meshes`."""
    out = np.array(meshes, dtype=np.float32, copy=True)
    workers = workers or min(4, len(os.sched_getaffinity(0)))
    local = threading.local()

    def read(i: int, frame: np.ndarray) -> tuple[int, np.ndarray]:
        if not hasattr(local, "mesh"):
            local.mesh = FaceMesh(views=views)
        points = local.mesh.run(frame, Roi.from_landmarks(meshes[i])).points
        if also is not None:
            also(i, frame, points)
        return i, points

    count = 0

    def feed():
        nonlocal count
        for i, frame in enumerate(frames):
            if i >= len(out):
                break
            count += 1
            if progress is not None and i % 50 == 0:
                progress(i)
            if found[i]:
                yield i, np.ascontiguousarray(frame)

    for j, points in on_threads(read, feed(), workers, "face-views"):
        out[j] = points
    if count < len(out):
        raise StreamTooShort(f"the stream gave {count} frames for {len(out)} meshes")
    return out


class OneEuro:
    """The One-Euro filter at a fixed rate, element-wise over arrays of any shape.

    min_cutoff (Hz) sets the smoothing at rest; beta how fast the cut-off rises with speed
    (units of the signal per second); d_cutoff (Hz) smooths the speed estimate.
    """

    def __init__(self, rate: float = 25.0, min_cutoff: float = 1.0, beta: float = 0.05,
                 d_cutoff: float = 1.0) -> None:  # fmt: skip
        self.rate, self.min_cutoff, self.beta, self.d_cutoff = rate, min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None

    def _alpha(self, cutoff):
        tau = 1.0 / (2 * np.pi * cutoff)
        return 1.0 / (1.0 + tau * self.rate)

    def __call__(self, value: np.ndarray) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        if self.x is None:
            self.x, self.dx = value.copy(), np.zeros_like(value)
            return value.copy()
        speed = (value - self.x) * self.rate
        a_d = self._alpha(self.d_cutoff)
        self.dx = a_d * speed + (1 - a_d) * self.dx
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        a = self._alpha(cutoff)
        self.x = a * value + (1 - a) * self.x
        return self.x.copy()

    def reset(self) -> None:
        self.x = self.dx = None


def smooth(track: np.ndarray, rate: float = 25.0, zero_phase: bool = False,
           **options: float) -> np.ndarray:  # fmt: skip
    """A whole [T, ...] track through a fresh OneEuro filter. `zero_phase`: the mean of a
    forward and a backward pass, which smooths as much without the filter's lag (a causal
    filter trails every move; a recorded track can be read both ways)."""
    track = np.asarray(track)
    f = OneEuro(rate, **options)
    forward = np.stack([f(frame) for frame in track])
    if not zero_phase:
        return forward
    f = OneEuro(rate, **options)
    backward = np.stack([f(frame) for frame in track[::-1]])[::-1]
    return (forward + backward) / 2


def jitter(track: np.ndarray) -> float:
    """Median over points of the RMS second difference of a [T, N, C] track (frame-to-frame
    acceleration: what smoothing removes and steady motion does not add), in its units."""
    track = np.asarray(track, dtype=np.float64)
    if len(track) < 3:
        return 0.0
    accel = track[2:] - 2 * track[1:-1] + track[:-2]
    per_point = np.sqrt((np.linalg.norm(accel, axis=-1) ** 2).mean(axis=0))
    return float(np.median(per_point))


class PersonSegmenter:
    """`run(rgb)` -> [H, W] float32 probability that a pixel shows a person."""

    INPUT = 256

    def __init__(self, cache_dir=None) -> None:
        self.model = TFLiteModel("selfie_segmentation", cache_dir)

    def run(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        square, scale, offset = letterbox(np.asarray(rgb), self.INPUT)
        (prob,) = self.model.run(square.astype(np.float32)[None] / 255.0)
        prob = prob.reshape(self.INPUT, self.INPUT)
        left, top = int(offset[0]), int(offset[1])
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        inner = np.ascontiguousarray(prob[top : top + nh, left : left + nw], dtype=np.float32)
        return np.asarray(Image.fromarray(inner).resize((w, h), Image.BILINEAR))
