"""The API's option checks agree with the stages' own limits."""

import pytest

from talkingface.broker import messages
from talkingface.errors import TalkingFaceError
from talkingface.v1 import broker_pb2 as pb


def test_limits_are_the_stages_own():
    from talkingface.landmarks.servicer import MAX_K
    from talkingface.render.servicer import MAX_RESOLUTION

    assert messages.MAX_K == MAX_K and messages.MAX_RESOLUTION == MAX_RESOLUTION


def test_render_options_leave_unset_defaults_unset():
    out = messages.render_options(pb.RenderOptions(seed=4))
    assert out == {"seed": 4, "temperature": 0.0, "pose_mode": "pingpong", "resolution": 0}
    out = messages.render_options(pb.RenderOptions(k=messages.MAX_K, alpha=0.0))
    assert out["k"] == messages.MAX_K and out["alpha"] == 0.0
    for bad in (pb.RenderOptions(k=messages.MAX_K + 1), pb.RenderOptions(alpha=-0.1)):
        with pytest.raises(TalkingFaceError) as caught:
            messages.render_options(bad)
        assert caught.value.code == "PROJECTION_INVALID_OPTIONS"
    with pytest.raises(TalkingFaceError) as caught:
        messages.render_options(pb.RenderOptions(resolution=messages.MAX_RESOLUTION + 2))
    assert caught.value.code == "INVALID_REQUEST"
    assert messages.render_options(pb.RenderOptions(pose_start=7))["pose_start"] == 7
    with pytest.raises(TalkingFaceError) as caught:
        messages.render_options(pb.RenderOptions(pose_start=-1))
    assert caught.value.code == "INVALID_REQUEST"
