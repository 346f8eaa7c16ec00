"""The synth benchmark runs and reports what its JSON promises (figures are not asserted)."""

from talkingface.bench import synth


def test_report_shape():
    report = synth.run(corpus_seconds=5.0, avatar_seconds=0.4)
    assert report["bench"] == "synth" and report["device"] == "cpu"
    assert report["corpus"]["audio_seconds"] >= 5.0 and report["corpus"]["realtime_factor"] > 0
    for size in ("256", "128"):
        assert report["avatar"][size]["frames"] == 10
        assert report["avatar"][size]["frames_per_second"] > 0
    assert set(report["meets_targets"]) == set(report["targets"])
