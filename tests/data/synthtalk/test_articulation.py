"""SynthTalk articulation: visemes, coarticulation, blinks, brows and synthetic speakers."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from talkingface import lm3d as L
from talkingface.data.synthtalk import articulation as A
from talkingface.data.synthtalk import face, visemes
from talkingface.data.synthtalk.speaker import Speaker, sample_speaker, speaker_landmarks

SR = 16000
VOWELS = {"a", "i", "u", "o", "e", "ə"}


@dataclass(frozen=True)
class Event:
    start: float
    end: float
    phoneme: str
    word: int = 0


def make_events(
    seq: str, lead: float = 0.3, consonant: float = 0.08, vowel: float = 0.15
) -> tuple[list[Event], float]:
    """Events for a space-separated phoneme string between leading and trailing silence."""
    t, events = lead, []
    for p in seq.split():
        d = vowel if p in VOWELS else consonant
        events.append(Event(t, t + d, p))
        t += d
    return events, t + lead


def tone(duration: float, f0: float = 140.0, gain: np.ndarray | float = 1.0) -> np.ndarray:
    """A harmonic 'voice' with a controllable amplitude envelope."""
    t = np.arange(round(duration * SR)) / SR
    x = sum(0.2 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 6))
    return (x * gain).astype(np.float32)


def speech_audio(events: list[Event], duration: float, f0: float = 140.0) -> np.ndarray:
    """Tone during the events, silence before and after."""
    t = np.arange(round(duration * SR)) / SR
    on = (t >= events[0].start) & (t < events[-1].end)
    return tone(duration, f0, on.astype(np.float64))


def plain_speaker(**style: float) -> Speaker:
    base = dict(articulation_gain=1.0, asymmetry=0.0, blink_rate=15.0, brow_activity=0.5)
    base.update(style)
    return Speaker("test", np.zeros(len(face.IDENTITY_TRAITS), np.float32), **base)


def centre_frame(event: Event, num_frames: int) -> int:
    """The frame whose centre is nearest the event's temporal centre."""
    return int(np.clip(round(0.5 * (event.start + event.end) * A.FPS - 0.5), 0, num_frames - 1))


def mouth_width(lm: np.ndarray) -> np.ndarray:
    return np.linalg.norm(lm[..., 54, :] - lm[..., 48, :], axis=-1)


def run(seq: str, seed: int = 0, speaker: Speaker | None = None, **kw: float):
    events, duration = make_events(seq, **kw)
    track = A.articulate(
        events,
        speech_audio(events, duration),
        SR,
        speaker or plain_speaker(),
        np.random.default_rng(seed),
    )
    return events, duration, track


@pytest.mark.parametrize("lead", [0.3, 0.313, 0.327])  # frame grid at different phases
@pytest.mark.parametrize("consonant", [0.06, 0.08, 0.1])
def test_bilabials_close_and_open_vowels_open(lead, consonant):
    events, _, track = run("a p a b a m a", lead=lead, consonant=consonant)
    gap = L.mouth_opening(track.landmarks)
    open_gap = np.mean([gap[centre_frame(e, len(gap))] for e in events if e.phoneme == "a"])
    closed = [gap[centre_frame(e, len(gap))] for e in events if e.phoneme in "pbm"]
    assert open_gap > 0.15  # > 1.5 cm between the inner lips on a wide "a"
    assert max(closed) < 0.1 * open_gap
    assert min(closed) > -0.01 * open_gap  # lips meet, they do not cross
    # Leading and trailing silence: neutral, closed mouth.
    assert abs(gap[0]) < 0.005 and abs(gap[-1]) < 0.005
    assert np.allclose(track.controls[0, :5], 0.0, atol=1e-3)


def test_rounded_vowels_narrow_the_mouth():
    events, _, track = run("i u i o e o")
    width = mouth_width(track.landmarks)
    at = {e.phoneme: [] for e in events}
    for e in events:
        at[e.phoneme].append(width[centre_frame(e, len(width))])
    neutral = mouth_width(plain_speaker().neutral_landmarks())
    assert max(at["u"]) < 0.85 * min(at["i"])
    assert max(at["o"]) < 0.9 * min(at["e"])
    assert min(at["i"]) > neutral  # spread


@pytest.mark.parametrize("duration", [0.0, 0.019, 0.021, 1.0, 2.345, 7.77])
def test_frame_count(duration):
    n = round(duration * SR)
    events = [Event(0.0, duration / 2, "a"), Event(duration / 2, duration, "m")] if n else []
    track = A.articulate(events, tone(duration), SR, plain_speaker(), np.random.default_rng(0))
    t = round(n / SR * 25)
    assert track.controls.shape == (t, 8) and track.controls.dtype == np.float32
    assert track.landmarks.shape == (t, 68, 3) and track.landmarks.dtype == np.float32
    assert track.loudness_db.shape == track.f0_hz.shape == track.blink.shape == (t,)
    assert np.isfinite(track.landmarks).all()


def test_blinks_close_the_eyes_briefly():
    speaker = plain_speaker(blink_rate=25.0)
    events, duration = make_events("a m a " * 60, lead=1.0)
    track = A.articulate(
        events, speech_audio(events, duration), SR, speaker, np.random.default_rng(7)
    )
    eyes = L.eye_opening(track.landmarks)
    neutral = L.eye_opening(speaker.neutral_landmarks())
    onsets, durs = track.blink_events.T
    assert len(onsets) >= 5
    assert ((durs >= 0.1) & (durs <= 0.3)).all()
    assert (np.diff(onsets) > 0.9).all()
    flagged = track.blink >= 0.9
    assert flagged.sum() >= len(onsets)  # every blink reaches a closed frame
    assert (eyes[flagged] < 0.12 * neutral).all()
    assert (eyes[track.blink == 0] > 0.99 * neutral).all()
    # Nonzero blink frames lie inside an event; runs are at most 300 ms + one frame long.
    times = (np.arange(len(eyes)) + 0.5) / A.FPS
    inside = ((times[:, None] > onsets - 0.01) & (times[:, None] < onsets + durs + 0.01)).any(1)
    assert inside[track.blink > 0].all()
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, track.blink > 0, 0])))[::2]
    assert runs.max() <= round(0.3 * A.FPS) + 1
    both = track.controls[:, [5, 6]]
    assert np.abs(both[:, 0] - both[:, 1]).max() < 0.3  # together, with slight jitter


def test_same_seed_same_track_different_seed_different():
    a = run("a p i u m a", seed=3)[2]
    b = run("a p i u m a", seed=3)[2]
    c = run("a p i u m a", seed=4)[2]
    for field in ("controls", "loudness_db", "f0_hz", "blink", "landmarks", "blink_events"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert not np.array_equal(a.controls, c.controls)


def test_speakers_differ_and_follow_their_distributions():
    speakers = [sample_speaker(np.random.default_rng(s), f"spk{s}") for s in range(200)]
    a, b = speakers[:2]
    assert np.abs(a.neutral_landmarks() - b.neutral_landmarks()).max() > 1e-3
    ids = np.stack([s.identity for s in speakers])
    assert ids.shape == (200, 12) and np.abs(ids).max() <= 2.5
    assert 0.8 < ids.std() < 1.2
    assert all(10 <= s.blink_rate <= 25 and 0.3 <= s.brow_activity <= 1.0 for s in speakers)
    gains = np.log([s.articulation_gain for s in speakers])
    assert abs(np.median(gains)) < 0.05 and 0.1 < gains.std() < 0.2
    again = sample_speaker(np.random.default_rng(0), "spk0")
    assert np.array_equal(again.identity, a.identity) and again.to_dict() == a.to_dict()


def test_gain_scales_mouth_motion_only():
    controls = np.zeros((3, 8), np.float32)
    controls[:, 0] = [0.2, 0.5, 0.9]  # jaw
    controls[:, 2] = 0.5  # round
    controls[:, 5:] = 0.5  # blinks, brows
    base = plain_speaker()
    lm1 = speaker_landmarks(base, controls)
    lm2 = speaker_landmarks(replace(base, articulation_gain=1.3), controls)
    eyes_off = speaker_landmarks(base, np.c_[controls[:, :5], np.zeros((3, 3))])
    neutral = base.neutral_landmarks()
    mouth1, mouth2 = lm1[:, L.MOUTH] - neutral[L.MOUTH], lm2[:, L.MOUTH] - neutral[L.MOUTH]
    assert np.allclose(mouth2, 1.3 * mouth1, atol=1e-5)
    upper = np.r_[L.RIGHT_BROW, L.LEFT_BROW, L.RIGHT_EYE, L.LEFT_EYE]
    assert np.allclose(lm2[:, upper], lm1[:, upper])
    assert not np.allclose(eyes_off[:, upper], lm1[:, upper])
    # A bilabial closure survives any gain.
    events, _, track = run("a m a")
    m = centre_frame(events[1], len(track.blink))
    for gain in (0.7, 1.4):
        lm = speaker_landmarks(replace(base, articulation_gain=gain), track.controls)
        assert abs(L.mouth_opening(lm[m])) < 0.01


def test_asymmetry_moves_one_corner_more():
    controls = np.zeros((1, 8), np.float32)
    controls[0, :3] = [0.8, 0.0, 0.6]
    base = plain_speaker()
    neutral = base.neutral_landmarks()
    lm = speaker_landmarks(replace(base, asymmetry=0.2), controls)[0]
    sym = speaker_landmarks(base, controls)[0]
    right = np.linalg.norm((lm[48] - neutral[48])[:2])  # subject's right corner, x < 0
    left = np.linalg.norm((lm[54] - neutral[54])[:2])
    assert right == pytest.approx(0.8 / 1.2 * left, rel=1e-4)
    assert np.allclose(lm[L.MOUTH, 2], sym[L.MOUTH, 2])  # depth untouched
    assert np.allclose(lm[:48], sym[:48])
    assert np.allclose(L.mouth_opening(lm), L.mouth_opening(sym), atol=1e-6)  # gap kept


def test_quiet_speech_articulates_less():
    events, duration = make_events("a m a " * 8)
    t = np.arange(round(duration * SR)) / SR
    half = 0.5 * (events[0].start + events[-1].end)
    envelope = np.where(t < half, 1.0, 0.1) * ((t >= events[0].start) & (t < events[-1].end))
    track = A.articulate(
        events, tone(duration, gain=envelope), SR, plain_speaker(), np.random.default_rng(0)
    )
    jaw = [
        (e.start, track.controls[centre_frame(e, len(track.blink)), 0])
        for e in events
        if e.phoneme == "a"
    ]
    loud = np.mean([j for s, j in jaw if s < half - 0.3])
    quiet = np.mean([j for s, j in jaw if s > half + 0.3])
    assert quiet < 0.8 * loud
    assert (
        track.loudness_db[len(track.blink) // 2 + 20]
        < track.loudness_db[len(track.blink) // 2 - 20] - 15
    )


def test_pitch_opens_the_jaw_and_accents_raise_the_brows():
    events, duration = make_events("a m a " * 12)
    num = A.frame_count(duration)
    f0 = np.full(num, 120.0, np.float32)
    accent = num // 2
    f0[accent - 3 : accent + 4] = 120.0 * 2 ** (np.array([1, 3, 5, 6, 5, 3, 1]) / 12)
    audio = speech_audio(events, duration)
    speaker = plain_speaker(brow_activity=1.0)
    high = A.articulate(events, audio, SR, speaker, np.random.default_rng(0), f0_hz=f0)
    flat = A.articulate(
        events, audio, SR, speaker, np.random.default_rng(0), f0_hz=np.full(num, 120.0)
    )
    assert high.controls[accent, 0] > 1.08 * flat.controls[accent, 0]
    assert np.allclose(high.controls[: accent - 10, 0], flat.controls[: accent - 10, 0], rtol=1e-5)
    brow = high.controls[:, 7]
    assert len(high.brow_events) == 1 and 0.3 <= high.brow_events[0, 1] <= 0.8
    assert brow[accent] == pytest.approx(high.brow_events[0, 1], rel=1e-5)
    assert brow[accent - 8] == 0.0 and brow[accent + 8] == 0.0  # ~300 ms rise and fall
    assert (flat.controls[:, 7] == 0).all()


def test_estimated_f0_follows_a_tone():
    duration = 2.0
    f0 = A.estimate_f0(tone(duration, f0=180.0), SR, A.frame_count(duration))
    voiced = f0[5:-5]
    assert (voiced > 0).all() and np.allclose(voiced, 180.0, rtol=0.02)
    assert (A.estimate_f0(np.zeros(SR, np.float32), SR, 25) == 0).all()


# Phonemes as espeak-ng reports them (--ipa, one per event) for en, de, fr, es, it, pt, nl,
# pl, ru, sv, cs, tr, with stress and length marks, ties and nasalisation.
_ESPEAK_TEXT = """
a a- aɪ aː b c d dz dʑ dʒ dʒː e eː f h i iː j ju k kʲ kː l m mʲ n o oʊ oː p pf pʲ r r̝̊ s
ss sx t ts tɕ tʃ tʃʲ tʲ u uː ũ v w x y z æ ç ð ŋ œ œ̃ ɐ ɐ̃ʊ̃ ɑː ɑ̃ ɒ ɔ̃ ɕ ə ɚ ɛ ɛː ɜ ɟ ɡ ɣ ɨ
ɪ ɫ ɭ ɯ ɲ ɲʲ ɹ ɾ ʁ ʃ ʉ ʊ ʊɹ ʋ ʌ ʎ ʑ ʒ ˈa ˈaɪ ˈaʊ ˈeə ˈeɪ ˈeʊ ˈiə ˈõ ˈyː ˈø ˈøː ˈœy ˈɐ̃
ˈɑ̃ ˈɔø ˈɔɪ ˈɔː ˈəʊ ˈɛɪ ˈɵ ˈʌʊ ˌoʊ ˌɒ t͡ʃ d͡ʒ t͡s a‍ɪ n̩ l̩ ɑːɹ ɪɹ ɛɹ ɔːɹ ᵻ ʔ əl ʏ ɔʏ ɛi
ʌu ɦ ʝ χ ʂ ʐ tʂ ɛ̃ ẽ ĩ w̃ j̃ θ β ɥ ɬ x ʀ ɑ ɔ æː ɘ ɤ ɞ _ _: ||
"""
ESPEAK_PHONEMES = _ESPEAK_TEXT.split()


def test_espeak_phonemes_all_known():
    assert visemes.unknown_symbols(ESPEAK_PHONEMES) == {}
    assert visemes.unknown_symbols(["a", "☃", "p#!"]) == {"☃": ["☃"], "p#!": ["!"]}
    assert visemes.viseme_classes("☃") == ("alveolar",)  # neutral consonant fallback


@pytest.mark.parametrize(
    ("phoneme", "classes"),
    [
        ("p", ("bilabial",)),
        ("ˈm", ("bilabial",)),
        ("f", ("labiodental",)),
        ("t͡ʃ", ("postalveolar",)),
        ("tʃ", ("postalveolar",)),
        ("ɑ̃", ("open",)),
        ("ˈaː", ("open",)),
        ("aɪ", ("open", "close_front")),
        ("ˈaʊ", ("open", "rounded_close")),
        ("y", ("rounded_close",)),
        ("ø", ("rounded_mid",)),
        ("ə", ("schwa",)),
        ("iː", ("close_front",)),
        ("", ("silence",)),
        ("_:", ("silence",)),
        ("ʲ", ("close_front",)),  # Polish palatalisation as its own segment = [j]
    ],
)
def test_viseme_classes(phoneme, classes):
    assert visemes.viseme_classes(phoneme) == classes


def test_diphthong_glides_between_its_targets():
    e = Event(0.3, 0.6, "aɪ")
    track = A.articulate([e], speech_audio([e], 0.9), SR, plain_speaker(), np.random.default_rng(0))
    first = track.controls[round((e.start + 0.06) * 25 - 0.5)]
    last = track.controls[round((e.end - 0.06) * 25 - 0.5)]
    assert first[0] > last[0] and last[1] > first[1]  # jaw closes, lips spread
