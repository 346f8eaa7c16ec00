"""Fixtures shared by the renderer tests."""

import pytest

from talkingface.render.data import load_avatar


@pytest.fixture(scope="module")
def video(tiny_avatar):
    """The tiny SynthTalk avatar at 32 px, loaded once per test module."""
    return load_avatar(tiny_avatar, 32)
