"""`synth corpus` end to end on real espeak speech: format, determinism, lips, splits."""

import json
import unicodedata

import numpy as np
import pytest

from talkingface import lm3d as L
from talkingface.data.synthtalk import fileformat as ff
from talkingface.data.synthtalk.corpus import HELDOUT_LANGUAGE, build_corpus
from talkingface.data.synthtalk.preview import corpus_preview
from talkingface.media import probe

BILABIALS = {"p", "b", "m"}
OPEN_VOWELS = {"a", "ɑ", "æ", "ɐ", "ä"}


def _base(ipa: str) -> str:
    """The IPA symbol without stress, length or diacritics."""
    kept = [
        c
        for c in unicodedata.normalize("NFD", ipa)
        if c not in "ˈˌːˑ" and not unicodedata.combining(c)
    ]
    return "".join(kept)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    build_corpus(root, minutes=1.0, seed=7, progress=False)
    return root


def test_format_and_frame_alignment(corpus):
    manifest, utterances = ff.read_corpus(corpus)
    assert manifest["format"] == ff.CORPUS and manifest["version"] == ff.FORMAT_VERSION
    assert 60 <= manifest["duration_seconds"] < 60 + 15
    speakers = {s["id"]: s for s in json.loads((corpus / "speakers.json").read_text())}
    for utt in utterances:
        audio = utt.audio()
        arrays = utt.arrays()
        duration = len(audio) / ff.SAMPLE_RATE
        assert abs(duration - utt.record["duration"]) < 1e-3
        lm = arrays["lm3d"]
        assert lm.dtype == np.float32 and lm.shape[1:] == (68, 3)
        assert abs(lm.shape[0] - duration * 25) <= 1
        assert arrays["controls"].shape == (lm.shape[0], 8)
        assert np.isfinite(lm).all()
        assert utt.record["speaker"] in speakers
        assert np.abs(audio).max() > 0.05  # speech, not silence


def test_lips_close_on_bilabials_and_open_on_open_vowels(corpus):
    _, utterances = ff.read_corpus(corpus)
    bilabial, open_vowel = [], []
    for utt in utterances:
        arrays = utt.arrays()
        gap = L.mouth_opening(arrays["lm3d"])
        for start, end, ipa in zip(
            arrays["phoneme_start"], arrays["phoneme_end"], arrays["phoneme"], strict=True
        ):
            frame = min(int((start + end) / 2 * 25), len(gap) - 1)
            base = _base(str(ipa))
            if base in BILABIALS:
                bilabial.append(gap[frame])
            elif base in OPEN_VOWELS and end - start >= 0.06:
                open_vowel.append(gap[frame])
    assert len(bilabial) >= 10 and len(open_vowel) >= 10
    # Inner-lip gap in canonical units (1 = 10 cm): closed is under 2 mm, open over 8 mm.
    assert np.median(bilabial) < 0.02, np.median(bilabial)
    assert np.median(open_vowel) > 0.08, np.median(open_vowel)
    assert np.percentile(bilabial, 90) < np.percentile(open_vowel, 10)


def test_speakers_differ_in_face_shape(corpus):
    from talkingface.data.synthtalk.face import landmarks

    speakers = json.loads((corpus / "speakers.json").read_text())
    neutral = [landmarks(np.array(s["identity"]), np.zeros(8)) for s in speakers]
    assert len(neutral) >= 8
    for i in range(len(neutral)):
        for j in range(i + 1, len(neutral)):
            # At least one landmark moves by more than 2 mm between any two speakers.
            assert np.abs(neutral[i] - neutral[j]).max() > 0.02


def test_splits_hold_out_speakers_languages_and_sentences(corpus):
    manifest, utterances = ff.read_corpus(corpus)
    by_split = {s: [u.record for u in utterances if u.split == s] for s in ("train", "val", "test")}
    assert all(by_split.values()), {k: len(v) for k, v in by_split.items()}
    speakers = {s: {r["speaker"] for r in rows} for s, rows in by_split.items()}
    assert not speakers["train"] & speakers["val"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["val"] & speakers["test"]
    assert HELDOUT_LANGUAGE not in {r["language"] for r in by_split["train"] + by_split["val"]}
    assert HELDOUT_LANGUAGE in {r["language"] for r in by_split["test"]}
    train_texts = {r["text"] for r in by_split["train"]}
    assert not train_texts & {r["text"] for r in by_split["val"] + by_split["test"]}
    voices = {s: {r["voice_id"] for r in rows} for s, rows in by_split.items()}
    assert not voices["train"] & (voices["val"] | voices["test"])
    assert manifest["splits"]["test"]["utterances"] == len(by_split["test"])


def test_same_seed_same_landmarks_other_seed_differs(tmp_path):
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        build_corpus(tmp_path / name, minutes=0.1, seed=seed, progress=False)
        _, utterances = ff.read_corpus(tmp_path / name)
        runs.append([(u.record["text"], u.arrays()["lm3d"], u.audio()) for u in utterances])
    assert len(runs[0]) == len(runs[1])
    for (text_a, lm_a, audio_a), (text_b, lm_b, audio_b) in zip(runs[0], runs[1], strict=True):
        assert text_a == text_b
        np.testing.assert_array_equal(lm_a, lm_b)
        np.testing.assert_array_equal(audio_a, audio_b)
    assert [r[0] for r in runs[0]] != [r[0] for r in runs[2]]


def test_refuses_to_overwrite(corpus):
    with pytest.raises(FileExistsError):
        build_corpus(corpus, minutes=0.1, seed=1, progress=False)


def test_preview_has_video_and_audio_of_the_right_length(corpus, tmp_path):
    out = corpus_preview(corpus, tmp_path / "preview.mp4")
    info = probe(out)
    assert info["video"]["codec"] == "h264" and info["audio"]["codec"] == "aac"
    assert info["video"]["frames"] > 100
    expected = info["video"]["frames"] / 25
    assert abs(info["video"]["duration"] - expected) < 0.05
    assert abs(info["audio"]["duration"] - expected) < 0.1
