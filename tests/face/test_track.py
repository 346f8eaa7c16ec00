"""Tracking a "photo video" (a real photograph under known rigid motions), losing and
finding the face again, counting a second face, the One-Euro filter, and segmentation."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from talkingface.face.ibug68 import interocular, to_ibug68
from talkingface.face.mesh import FaceMesh, Roi
from talkingface.face.track import (
    FaceTracker,
    OneEuro,
    PersonSegmenter,
    StreamTooShort,
    jitter,
    on_threads,
    read_in_views,
    smooth,
)
from tests.face.test_face import _move


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return data.astronaut()


def _video(photo, n=12):
    """Frames of the photo turning and drifting (2 deg and 3 px a frame) with their maps."""
    frames, maps = [], []
    for i in range(n):
        frame, m = _move(photo, 2.0 * i - 10, (3.0 * i - 15, 1.5 * i - 8))
        frames.append(frame)
        maps.append(m)
    return frames, maps


def test_a_photo_video_is_tracked_and_follows_the_known_motion(photo):
    tracker = FaceTracker(count_every=4)
    reference = FaceTracker().track(photo).points
    frames, maps = _video(photo)
    results = [tracker.track(frame) for frame in frames]
    assert all(r.points is not None and r.presence > 0.9 for r in results)
    assert results[0].detected and results[0].faces == 1  # detected once, then tracked
    assert [r.faces for r in results[1:]] == [None, None, None, 1, None, None, None, 1,
                                              None, None, None]  # fmt: skip
    errors = []
    for result, m in zip(results, maps, strict=True):
        want = to_ibug68(reference[:, :2] @ m[:, :2].T + m[:, 2])
        got = to_ibug68(result.points)[:, :2]
        errors.append(np.median(np.linalg.norm(got - want, axis=1)[17:]) / interocular(want))
    assert max(errors) <= 0.02, np.round(errors, 4)


def test_a_lost_face_is_found_again_and_a_second_face_is_counted(photo):
    tracker = FaceTracker(count_every=1)
    blank = np.zeros_like(photo)
    results = [tracker.track(f) for f in (photo, blank, blank, photo)]
    assert [r.points is not None for r in results] == [True, False, False, True]
    assert results[3].detected  # found again by the detector, not by the old crop
    head = photo[40:240, 130:330]
    pair = np.ascontiguousarray(np.concatenate([head, head[:, ::-1]], axis=1))
    tracker.reset()
    assert tracker.track(pair).faces == 2 and tracker.track(pair).faces == 2


def test_faces_read_again_in_views_on_threads(photo):
    """Each found frame's face read in ten views of the crop around its tracked mesh: the
    same points whichever thread read it, found frames only, and a short stream refused."""
    frames, _ = _video(photo, n=8)
    tracker = FaceTracker()  # one view each
    meshes = np.stack([tracker.track(f).points for f in frames])
    found = np.ones(len(frames), bool)
    found[3] = False  # as if interpolated: kept as it is
    progress = []
    two = read_in_views(iter(frames), meshes, found, workers=2, progress=progress.append)
    one = read_in_views(iter(frames), meshes, found, workers=1)
    assert np.array_equal(two, one) and progress == [0]
    assert np.array_equal(two[3], meshes[3])
    model = FaceMesh()
    for i in (0, 5, 7):
        assert np.array_equal(two[i], model.run(frames[i], Roi.from_landmarks(meshes[i])).points)
    # The views moved the points (a little: well under 2 % of the eye distance).
    iod = interocular(to_ibug68(meshes[0])[None])[0]
    moved = np.linalg.norm(two[found] - meshes[found], axis=-1).mean() / iod
    assert 0 < moved < 0.02, moved
    with pytest.raises(StreamTooShort):
        read_in_views(iter(frames[:5]), meshes, found)


def test_on_threads_keeps_the_order_and_holds_few_items_in_memory():
    """Results come back in the items' order although later items finish first, at most
    two items a worker are taken from the stream before their results are used, and a
    worker's exception reaches the caller."""
    import time

    taken, used = [], []

    def items():
        for i in range(30):
            taken.append(i)
            yield i, (29 - i) % 7 * 0.002

    def slow(i, wait):
        time.sleep(wait)
        return i * i

    for result in on_threads(slow, items(), 3, "test"):
        used.append(result)
        assert len(taken) - len(used) <= 2 * 3 + 1
    assert used == [i * i for i in range(30)]

    def fails(i):
        if i == 4:
            raise ValueError("frame 4")
        return i

    with pytest.raises(ValueError, match="frame 4"):
        list(on_threads(fails, ((i,) for i in range(10)), 2, "test"))


def test_one_euro_smooths_rest_and_follows_motion():
    rng = np.random.default_rng(0)
    t = np.arange(200) / 25.0
    still = 100.0 + rng.normal(0, 0.5, (200, 10, 2))  # 0.5 px of noise on a still face
    smoothed = smooth(still, min_cutoff=1.0, beta=0.05)
    assert jitter(smoothed) < 0.25 * jitter(still)
    # A fast move (100 px/s) is followed: after it settles the lag is under 2 px.
    path = np.where(t < 2, 0.0, np.minimum((t - 2) * 100.0, 100.0))
    moving = path[:, None, None] + rng.normal(0, 0.5, (200, 10, 2))
    out = smooth(moving, min_cutoff=1.0, beta=0.05)
    assert np.abs(out[-25:] - 100.0).max() < 2.0
    assert np.abs(out[60:75] - path[60:75, None, None]).mean() < 10.0  # mid-move lag, small
    f = OneEuro()
    assert np.array_equal(f(np.ones(3)), np.ones(3))  # the first sample passes unchanged


def test_zero_phase_smoothing_does_not_trail_the_motion():
    # A small 2 Hz motion (1 px) with 0.1 px of noise, smoothed as the ingest does (3 Hz at
    # rest, beta 1 per px/s): slow enough for the forward filter to trail it by a frame.
    rng = np.random.default_rng(1)
    t = np.arange(250) / 25.0
    path = 1.0 * np.sin(2 * np.pi * 2.0 * t)
    noisy = path[:, None] + rng.normal(0, 0.1, (250, 4))

    def best_lag(out):  # the shift (frames) that best lines the output up with the path
        errors = {lag: np.abs(out[5 + lag : 245 + lag] - path[5:245, None]).mean()
                  for lag in range(-3, 4)}  # fmt: skip
        return min(errors, key=errors.get), errors[0]

    forward_lag, forward_error = best_lag(smooth(noisy, min_cutoff=3.0, beta=1.0))
    both_lag, both_error = best_lag(smooth(noisy, min_cutoff=3.0, beta=1.0, zero_phase=True))
    assert forward_lag >= 1 and both_lag == 0, (forward_lag, both_lag)
    assert both_error < 0.7 * forward_error
    still = 100.0 + rng.normal(0, 0.5, (200, 10, 2))  # and it still smooths a still face
    assert jitter(smooth(still, min_cutoff=1.0, beta=0.05, zero_phase=True)) < 0.25 * jitter(still)


def test_person_segmentation_on_a_portrait(photo):
    prob = PersonSegmenter().run(photo)
    assert prob.shape == photo.shape[:2] and prob.dtype == np.float32
    assert prob[90:170, 190:260].mean() > 0.95  # the face
    assert prob[0:60, 0:60].mean() < 0.05 and prob[0:60, 450:].mean() < 0.05  # the backdrop
    assert prob[300:, 100:300].mean() > 0.9  # the suit


def test_a_small_face_in_a_720p_frame_is_found_in_tiles(photo):
    from talkingface.face.detect import FaceDetector

    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[104:616, 384:896] = photo  # the face is ~95 px of 1280: too small for one pass
    detector = FaceDetector()
    assert detector.detect(frame, tiles=False) == []
    best = detector.detect(frame)[0]
    (own,) = detector.detect(photo)
    np.testing.assert_allclose(best.box, own.box + np.array([384, 104, 384, 104]), atol=6.0)
    result = FaceTracker().track(frame)
    assert result.points is not None and result.faces == 1
