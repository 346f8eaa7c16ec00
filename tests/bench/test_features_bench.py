"""The features benchmark runs and reports what its JSON promises (figures not asserted)."""

from talkingface.bench import features


def test_report_shape():
    report = features.run(logmel_seconds=2.0, hubert_seconds=1.0)
    assert report["bench"] == "features"
    assert report["logmel"]["extract_rtf"] > 0 and report["logmel"]["audio_seconds"] == 2.0
    assert report["hubert_large_random"][0]["device"] == "cpu"
    assert report["hubert_large_random"][0]["rtf"] > 0
