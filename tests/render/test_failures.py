"""Rendering failures on pixels (`talkingface.render.failures`): the line fitted on an avatar's
training frames passes its own real frames and flags mouths painted shut."""

import numpy as np
import pytest

from talkingface.lm3d import mouth_opening
from talkingface.render.data import load_avatar
from talkingface.render.evaluate import mouth_boxes
from talkingface.render.failures import MouthCheck, projected_lm2d


@pytest.fixture(scope="module")
def avatar(tmp_path_factory):
    """8 s of a SynthTalk person at 128 x 128 (train: the first 10/11)."""
    from talkingface.data.synthtalk.avatar import build_avatar

    root = tmp_path_factory.mktemp("failures") / "avatar"
    build_avatar(root, seconds=8.0, seed=4, size=128, progress=False)
    return load_avatar(root)


def test_real_frames_pass_and_mouths_painted_shut_fail(avatar):
    check = MouthCheck.fit(avatar)
    assert check.slope > 0  # a wider gap shows more dark pixels in the lip box
    assert check.frames == avatar.train[1] - avatar.train[0]
    frames = np.arange(len(avatar))
    lm2d = projected_lm2d(avatar.lm3d, avatar.R, avatar.t, avatar.K)
    images = avatar.frames.astype(np.float32) / 255.0
    real = check.failures(images, avatar.lm3d, lm2d)
    assert real.mean() <= 0.05, real.mean()  # held-out frames included
    # The widest-open fifth of the frames, their lip box painted the face's own skin tone.
    wide = frames[mouth_opening(avatar.lm3d) >= np.quantile(mouth_opening(avatar.lm3d), 0.8)]
    shut = images[wide].copy()
    boxes = mouth_boxes(lm2d[wide], avatar.size)
    for image, box in zip(shut, boxes, strict=True):
        image[box] = np.median(image[avatar.masks[0]], axis=0)
    assert check.failures(shut, avatar.lm3d[wide], lm2d[wide]).mean() >= 0.8
