"""The ingest benchmark runs and reports what its JSON promises (figures are not asserted)."""

import pytest

from talkingface.bench import ingest

pytestmark = pytest.mark.slow


def test_report_shape():
    report = ingest.run(seconds=2.0, track_frames=20)
    assert report["bench"] == "ingest" and report["video"]["frames"] == 50
    assert report["tracking"]["frames"] == 20 and report["tracking"]["face_found"] == 20
    tracking = report["tracking"]
    assert tracking["views"] == 10
    assert tracking["frames_per_second_one_view"] > tracking["frames_per_second"] > 0
    assert tracking["frames_per_second_ten_views"] > tracking["frames_per_second"]
    assert report["ingest"]["face_found"] == 50 and report["ingest"]["frames_per_second"] > 0
    assert set(report["meets_targets"]) == set(report["targets"])
