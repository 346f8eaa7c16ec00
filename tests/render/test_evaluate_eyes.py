"""The evaluation's eye-opening measure in pixels, on drawn open and closed eyes."""

import numpy as np

from talkingface.render.evaluate import eye_pixels

SKIN = (0.85, 0.62, 0.50)


def face(open_eyes: bool, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A skin-coloured image with two eyes (white with a blue iris when open, a brown lid
    line when closed) and its landmarks [68, 2]."""
    image = np.ones((size, size, 3)) * SKIN
    lm = np.full((68, 2), size / 2)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for (a, b, up, low), cx in (((36, 39, (37, 38), (41, 40)), 20.0),
                                ((42, 45, (43, 44), (47, 46)), 44.0)):  # fmt: skip
        lid = 3.0 if open_eyes else 0.2
        lm[a], lm[b] = (cx - 6, 30), (cx + 6, 30)
        lm[list(up)] = [(cx - 2, 30 - lid), (cx + 2, 30 - lid)]
        lm[list(low)] = [(cx - 2, 30 + lid), (cx + 2, 30 + lid)]
        if open_eyes:
            eye = ((xx - cx) / 6) ** 2 + ((yy - 30) / 3) ** 2 < 1
            image[eye] = (0.95, 0.95, 0.95)
            image[(xx - cx) ** 2 + (yy - 30) ** 2 < 4] = (0.2, 0.35, 0.7)
        else:
            image[(np.abs(yy - 30) < 0.6) & (np.abs(xx - cx) < 6)] = (0.35, 0.2, 0.15)
    return image, lm


def test_eye_measure_tells_open_from_closed_eyes():
    (img_open, lm_open), (img_closed, lm_closed) = face(True), face(False)
    measured = eye_pixels(np.stack([img_open, img_closed]), np.stack([lm_open, lm_closed]))
    assert measured[0] > 0.4 and measured[1] < 0.05
    # the box does not follow the lids: open pixels read open under closed landmarks
    assert eye_pixels(img_open[None], lm_closed[None])[0] == measured[0]
