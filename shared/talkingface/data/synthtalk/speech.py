"""SynthTalk's speech source: espeak-ng utterances at 16 kHz with exact phoneme timings.

`synthesize(text, voice)` runs libespeak-ng in-process (see `_espeak.py`) and returns the
audio with one `PhonemeEvent` per phoneme, timed from espeak's own sample positions, so the
face can be animated in lock-step with the sound. The same text and voice always give a
bit-identical `Utterance`.

Voices (`random_voice`, all drawn from the numpy Generator passed in, in this order):

* gender: "male" or "female" with probability 1/2 each, unless given;
* variant: uniform over espeak's m1 m2 m3 m4 m6 m7 (male) or f1-f5 (female) voice variants,
  made deterministic as described in `_espeak.py` (no pitch flutter, roughness, breath or
  echo: dry voices);
* rate_wpm: uniform integer in [130, 210] words per minute (espeak's default is 175);
* pitch: espeakPITCH, uniform integer in [30, 55] for male and [50, 80] for female voices;
  50 keeps the variant's own base pitch and 0/100 halve/double it; measured median f0 is
  about 75-130 Hz for male and 170-320 Hz for female voices;
* pitch_range: espeakRANGE, uniform integer in [30, 90] (0 is monotone, 50 espeak's
  normal intonation).

Sentence intonation comes from the text's final punctuation (see `sentences.py`).

Audio: espeak's 22 050 Hz int16 output, resampled with scipy.signal.resample_poly(320, 441)
to 16 kHz float32 mono and peak-normalised so that max |x| = 0.95 (absolute level carries no
information: espeak's volume is fixed). Leading and trailing silence is kept as espeak
produced it, and event times are the exact espeak sample index / 22 050, so they stay
aligned with the resampled audio.

Phonemes: `PhonemeEvent.phoneme` is the IPA name espeak reports (UTF-8, at most 8 bytes)
with length marks kept (e.g. "ɑː") and no stress marks (espeak's phoneme events carry none).
Some names are multi-segment: diphthongs ("aɪ", "oʊ"), affricates ("tʃ"), English
r-coloured vowels ("ɛɹ", "ɑːɹ"), syllabic consonants ("n̩"), Polish "ʲ" (a palatal glide,
[j]). Pauses are included as "_" with word -1 (consecutive pauses merged, zero-length ones
dropped). Timing:

* a phoneme starts at espeak's event for it and ends where the next phoneme or pause
  starts (the last one at the end of the audio);
* except that espeak emits a phoneme's event *after* its "prepause" (the silent closure of
  a voiceless stop, a short gap before some word-initial consonants), which would leave the
  lips of a [p] open for its whole closure. The run of exact digital silence (>= 1 ms)
  right before such an event, after a sounding phoneme, is given to the phoneme it
  prepares: "p" starts at its closure. Silence after a pause event stays in the pause;
* espeak emits the event of a vowel that follows a nasal or liquid after the vowel's onset
  transition, so such vowels start a few ms late;
* espeak occasionally reports two phonemes of a word at the same sample (Portuguese "lh"
  as "l" + "j", a final "l" before a pause): the empty one is joined to its neighbour in
  the same word ("lj", "ɛl") rather than dropped, so every phoneme espeak spoke appears.
  All events have positive duration except a zero-length phoneme with no neighbour in its
  word (not seen in practice).

`Utterance.words` gives each word's span: from its first phoneme's start to its last
phoneme's end (espeak's own word events come slightly before the word's closure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import firwin, resample_poly

from talkingface.data.synthtalk import _espeak
from talkingface.data.synthtalk._espeak import EspeakError
from talkingface.data.synthtalk.sentences import SENTENCE_LANGUAGES

__all__ = [
    "LANGUAGES",
    "SAMPLE_RATE",
    "EspeakError",
    "PhonemeEvent",
    "Utterance",
    "Voice",
    "WordEvent",
    "random_voice",
    "synthesize",
]

# espeak voice names; every one has a word list in sentences.py.
LANGUAGES: tuple[str, ...] = SENTENCE_LANGUAGES
SAMPLE_RATE = 16000
PAUSE = "_"
VARIANTS: dict[str, tuple[str, ...]] = {
    "male": _espeak.MALE_VARIANTS,
    "female": _espeak.FEMALE_VARIANTS,
}
RATE_WPM = (130, 210)
PITCH = {"male": (30, 55), "female": (50, 80)}
PITCH_RANGE = (30, 90)
PEAK = 0.95
# Shorter runs of exact zeros happen inside voiced sound; closures last 10-60 ms.
_MIN_CLOSURE = 22  # samples at 22 050 Hz, 1 ms


@dataclass(frozen=True)
class Voice:
    """An espeak voice: language, variant and prosody settings."""

    language: str  # espeak voice name, e.g. "de"
    gender: str  # "male" | "female"
    variant: str  # espeak variant, e.g. "m3", "f2"
    rate_wpm: int
    pitch: int  # espeakPITCH, 0-100
    pitch_range: int  # espeakRANGE, 0-100

    def __post_init__(self) -> None:
        if self.gender not in VARIANTS:
            raise ValueError(f"gender must be 'male' or 'female', got {self.gender!r}")
        if self.variant not in VARIANTS[self.gender]:
            raise ValueError(f"variant {self.variant!r} is not a {self.gender} variant")
        if not 80 <= self.rate_wpm <= 450:
            raise ValueError(f"rate_wpm {self.rate_wpm} outside espeak's 80-450")
        if not (0 <= self.pitch <= 100 and 0 <= self.pitch_range <= 100):
            raise ValueError("pitch and pitch_range must be in 0-100")

    @property
    def voice_id(self) -> str:
        """Stable short id, e.g. "de-f2-r170-p70-i60"."""
        return f"{self.language}-{self.variant}-r{self.rate_wpm}-p{self.pitch}-i{self.pitch_range}"


def random_voice(rng: np.random.Generator, language: str, gender: str | None = None) -> Voice:
    """A voice drawn from the distributions in the module docstring."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; have {', '.join(LANGUAGES)}")
    # The gender draw happens even when gender is given, so a seed's stream advances the
    # same way whether or not the caller fixed the gender.
    drawn = "male" if rng.random() < 0.5 else "female"
    gender = gender or drawn
    if gender not in VARIANTS:
        raise ValueError(f"gender must be 'male' or 'female', got {gender!r}")
    variants = VARIANTS[gender]
    variant = variants[int(rng.integers(len(variants)))]
    rate = int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1))
    lo, hi = PITCH[gender]
    pitch = int(rng.integers(lo, hi + 1))
    pitch_range = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
    return Voice(language, gender, variant, rate, pitch, pitch_range)


@dataclass(frozen=True)
class PhonemeEvent:
    """One phoneme (or pause "_") with its time span in the utterance."""

    start: float  # seconds from the start of the audio
    end: float  # seconds: start of the next phoneme or pause, or the end of the audio
    phoneme: str  # IPA as espeak reports it; "_" for a pause
    word: int  # index into Utterance.words; -1 for pauses


@dataclass(frozen=True)
class WordEvent:
    """A word as espeak spoke it; `text` is the slice of the input it came from."""

    start: float  # seconds: start of the word's first phoneme
    end: float  # seconds: end of the word's last phoneme
    text: str
    index: int


@dataclass
class Utterance:
    """One synthesised sentence: audio, its phoneme and word timings, and what made it."""

    text: str
    voice: Voice
    audio: np.ndarray  # float32 [N], 16 kHz mono, peak |x| = 0.95 (0 if silent)
    sample_rate: int  # 16000
    phonemes: list[PhonemeEvent]
    duration: float  # seconds = len(audio) / 16000
    words: list[WordEvent]


# resample_poly's own default anti-aliasing filter for 320/441 (Kaiser beta 5, 10 zero
# crossings per side), designed once: redesigning it per call cost a quarter of synthesis.
_RESAMPLE_FILTER = firwin(2 * 10 * 441 + 1, 1.0 / 441, window=("kaiser", 5.0))


def _to_16k(samples: np.ndarray) -> np.ndarray:
    x = resample_poly(samples.astype(np.float64) / 32768.0, 320, 441, window=_RESAMPLE_FILTER)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0:
        x *= PEAK / peak
    return x.astype(np.float32)


def _closure_start(samples: np.ndarray, prev: int, at: int) -> int:
    """Start of the digital silence that ends at sample `at`, if it began after `prev`."""
    nonzero = np.flatnonzero(samples[prev:at])
    if nonzero.size == 0:
        return at  # the previous phoneme is all silence itself (a stop, a glottal stop)
    first_zero = prev + int(nonzero[-1]) + 1
    return first_zero if at - first_zero >= _MIN_CLOSURE else at


def _events(
    text: str, samples: np.ndarray, raw: list[_espeak.RawEvent], duration: float
) -> tuple[list[PhonemeEvent], list[WordEvent]]:
    # Word events with length 0 are clause markers espeak emits with a repeated word
    # number; real words have a span in the text.
    located: list[tuple[int, str, int]] = []  # (22 050 Hz sample, phoneme or PAUSE, word)
    spans: list[str] = []
    word = -1
    for ev in raw:
        if ev.type == _espeak.EVENT_WORD and ev.length > 0:
            start = ev.text_position - 1
            spans.append(text[start : start + ev.length])
            word = len(spans) - 1
        elif ev.type == _espeak.EVENT_PHONEME:
            at = ev.sample
            if ev.phoneme:
                # espeak marks a phoneme after its "prepause" (the closure of a stop, a gap
                # before a word-initial consonant), leaving that silence to the phoneme
                # before; give it back to the phoneme it prepares.
                if located and located[-1][1] != PAUSE:
                    at = _closure_start(samples, located[-1][0], at)
                located.append((at, ev.phoneme, word))
            elif not located or located[-1][1] != PAUSE:
                located.append((at, PAUSE, -1))
    rate = _espeak.SAMPLE_RATE
    marks = [(min(max(at / rate, 0.0), duration), name, w) for at, name, w in located]
    phonemes: list[PhonemeEvent] = []
    carry = ""  # a zero-length phoneme waiting to be prefixed to the next one
    for i, (t, name, w) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else duration
        nxt = marks[i + 1] if i + 1 < len(marks) else None
        if name != PAUSE:
            name, carry = carry + name, ""
        if end > t:
            if name == PAUSE and phonemes and phonemes[-1].phoneme == PAUSE:
                phonemes[-1] = PhonemeEvent(phonemes[-1].start, end, PAUSE, -1)
            else:
                phonemes.append(PhonemeEvent(t, end, name, w))
        elif name == PAUSE:
            continue
        elif nxt is not None and nxt[1] != PAUSE and nxt[2] == w:
            carry = name  # e.g. Portuguese "lh": "l" and "j" at one sample -> "lj"
        elif phonemes and phonemes[-1].word == w:
            prev = phonemes[-1]  # e.g. a final "l" at the pause: "ɛ" + "l" -> "ɛl"
            phonemes[-1] = PhonemeEvent(prev.start, prev.end, prev.phoneme + name, w)
        else:
            phonemes.append(PhonemeEvent(t, t, name, w))  # nothing to attach it to
    first: dict[int, float] = {}
    final: dict[int, float] = {}
    for p in phonemes:
        if p.word >= 0:
            first.setdefault(p.word, p.start)
            final[p.word] = p.end
    # A word spans its phonemes; one espeak spoke no phoneme for gets an empty span at the
    # end of the previous word.
    words: list[WordEvent] = []
    for i, span in enumerate(spans):
        prev_end = words[-1].end if words else 0.0
        start = first.get(i, prev_end)
        words.append(WordEvent(start, final.get(i, start), span, i))
    return phonemes, words


def synthesize(text: str, voice: Voice) -> Utterance:
    """Speak `text` with `voice`; identical inputs give a bit-identical result."""
    samples, raw = _espeak.synth(
        text, voice.language, voice.variant, voice.rate_wpm, voice.pitch, voice.pitch_range
    )
    audio = _to_16k(samples)
    duration = len(audio) / SAMPLE_RATE
    phonemes, words = _events(text, samples, raw, duration)
    return Utterance(
        text=text,
        voice=voice,
        audio=audio,
        sample_rate=SAMPLE_RATE,
        phonemes=phonemes,
        duration=duration,
        words=words,
    )
