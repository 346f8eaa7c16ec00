"""SynthTalk speech on the real libespeak-ng: formats, timings, determinism, voices."""

import numpy as np
import pytest

from talkingface.data.synthtalk import sentences, speech
from talkingface.data.synthtalk.speech import Voice, random_voice, synthesize


def _check_utterance(u: speech.Utterance) -> None:
    assert u.sample_rate == 16000
    assert u.audio.dtype == np.float32 and u.audio.ndim == 1
    assert u.duration == pytest.approx(len(u.audio) / 16000)
    assert 0.5 < float(np.abs(u.audio).max()) <= 0.95 + 1e-6
    assert u.phonemes, "no phoneme events"
    starts = np.array([p.start for p in u.phonemes])
    ends = np.array([p.end for p in u.phonemes])
    assert starts[0] >= 0 and ends[-1] <= u.duration
    assert np.all(np.diff(starts) > 0), "phonemes out of order"
    assert np.all(ends > starts), "phoneme without duration"
    assert np.all(ends[:-1] <= starts[1:] + 1e-9), "phonemes overlap"
    spoken = [p for p in u.phonemes if p.phoneme != speech.PAUSE]
    assert spoken and all(0 <= p.word < len(u.words) for p in spoken)
    assert all(p.word == -1 for p in u.phonemes if p.phoneme == speech.PAUSE)


def test_languages_speak_with_ordered_phonemes():
    assert len(speech.LANGUAGES) >= 8
    rng = np.random.default_rng(0)
    for language in speech.LANGUAGES:
        text = sentences.sentence(rng, language, 3, 5)
        u = synthesize(text, random_voice(rng, language))
        _check_utterance(u)
        rms = float(np.sqrt(np.mean(u.audio**2)))
        assert rms > 0.02, f"{language}: near-silent audio"
        assert [w.text for w in u.words] == [w.strip(",.?!¿¡") for w in text.split()], (
            f"{language}: words do not follow the text"
        )


def test_same_voice_and_text_are_bit_identical():
    voice = Voice("en-us", "female", "f2", 180, 70, 60)
    text = "Hello there, my friend. How are you today?"
    first = synthesize(text, voice)
    # Something else in between: espeak state must not leak into the repeat.
    synthesize(
        "Ein kleines Beispiel mit vielen Wörtern, bitte sehr!",
        random_voice(np.random.default_rng(3), "de", "male"),
    )
    second = synthesize(text, voice)
    assert first.audio.tobytes() == second.audio.tobytes()
    assert first.phonemes == second.phonemes
    assert first.words == second.words


def test_seeds_give_different_voices_and_sentences():
    a, b = np.random.default_rng(1), np.random.default_rng(2)
    voices_a = [random_voice(a, "fr") for _ in range(5)]
    voices_b = [random_voice(b, "fr") for _ in range(5)]
    assert voices_a != voices_b
    assert len({v.voice_id for v in voices_a + voices_b}) == 10
    assert sentences.sentence(np.random.default_rng(1), "fr") != sentences.sentence(
        np.random.default_rng(2), "fr"
    )
    # ...and the same seed gives the same draws.
    assert random_voice(np.random.default_rng(1), "fr") == voices_a[0]
    again = sentences.sentence(np.random.default_rng(4), "pl")
    assert again == sentences.sentence(np.random.default_rng(4), "pl")


def test_voice_distributions():
    rng = np.random.default_rng(5)
    voices = [random_voice(rng, "es") for _ in range(200)]
    assert {v.gender for v in voices} == {"male", "female"}
    for v in voices:
        assert v.variant in speech.VARIANTS[v.gender]
        assert 130 <= v.rate_wpm <= 210 and 30 <= v.pitch_range <= 90
        assert speech.PITCH[v.gender][0] <= v.pitch <= speech.PITCH[v.gender][1]
    v = Voice("de", "female", "f2", 170, 70, 60)
    assert v.voice_id == "de-f2-r170-p70-i60"
    with pytest.raises(ValueError):
        Voice("de", "female", "m3", 170, 70, 60)
    with pytest.raises(ValueError):
        random_voice(rng, "xx")


def _median_f0(u: speech.Utterance) -> float:
    import pyworld

    f0, _ = pyworld.harvest(u.audio.astype(np.float64), u.sample_rate, f0_floor=60.0, f0_ceil=400.0)
    return float(np.median(f0[f0 > 0]))


@pytest.mark.parametrize("language", ["en-us", "de"])
def test_male_voices_are_lower_than_female(language):
    rng = np.random.default_rng(11)
    text = sentences.sentence(rng, language, 2, 2)  # ~1 s: harvest is slow
    male = synthesize(text, random_voice(rng, language, "male"))
    female = synthesize(text, random_voice(rng, language, "female"))
    assert _median_f0(male) < 0.8 * _median_f0(female)


def test_bilabials_of_papa_bob_mama():
    u = synthesize("a papa bob mama", Voice("en-us", "male", "m3", 160, 45, 50))
    _check_utterance(u)
    by_word: dict[int, list[str]] = {}
    for p in u.phonemes:
        by_word.setdefault(p.word, []).append(p.phoneme)
    assert [w.text for w in u.words] == ["a", "papa", "bob", "mama"]
    assert by_word[1].count("p") == 2 and by_word[2].count("b") == 2
    assert by_word[3].count("m") == 2
    for p in u.phonemes:
        if p.phoneme in ("p", "b", "m"):
            word = u.words[p.word]
            assert 0 < p.start < p.end < u.duration
            assert 0.01 < p.end - p.start < 0.3
            assert word.start - 1e-9 <= p.start and p.end <= word.end + 1e-9
    # Words follow one another in time.
    assert all(a.end <= b.start + 1e-9 for a, b in zip(u.words[:-1], u.words[1:], strict=True))


def test_sentences_and_heldout():
    rng = np.random.default_rng(9)
    for language in speech.LANGUAGES:
        assert len(sentences.WORDS[language]) >= 80
        for _ in range(20):
            s = sentences.sentence(rng, language, 4, 11)
            assert 4 <= len(s.split()) <= 11 and s[-1] in ".?!"
        held = sentences.heldout_sentences(language)
        assert len(held) >= 3
    with pytest.raises(ValueError):
        sentences.sentence(rng, "xx")
