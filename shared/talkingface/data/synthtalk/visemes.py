"""Map IPA phonemes (as espeak-ng reports them) to viseme classes and articulation targets.

A phoneme string is normalised (NFD; stress marks, length marks, tie bars, combining
diacritics such as nasalisation or syllabicity and modifier letters such as aspiration are
dropped), then parsed greedily into known symbols. Affricates (t͡ʃ, ts, pf, ...) are one
consonant; a string holding several vowel-like symbols (diphthongs "aɪ", triphthongs, or
espeak's rhotic vowels such as "ɑːɹ") becomes several parts that share the segment's
duration equally, so the mouth glides from the first target to the second.

Each viseme class has a target for the five speech-driven controls (`SPEECH_CONTROLS`) and a
Cohen–Massaro dominance magnitude α and width w per control used by `articulation.py`.
"closure" is the fraction of the inner-lip gap that the lips close (1 = lips touching);
`articulation.py` converts it into face.py's `lip_close` coefficient.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

# Controls a viseme decides, in this order; blinks and brows come from elsewhere.
SPEECH_CONTROLS = ("jaw_open", "lip_spread", "lip_round", "closure", "upper_lip_raise")

# class: (targets jaw, spread, round, closure, upper_lip_raise), (α per control),
# (dominance width w per control, ms). articulation.py uses D = α·exp(-θ·d^c) with θ = w^-c,
# where d is the distance from the segment's core. Bilabial closure and open-vowel jaw get
# high α on the control they define and low α elsewhere, so their neighbours shape the rest
# (rounding carries through "u m u"); a vowel's "lips apart" (closure 0) has a narrow width
# so it does not leak into a neighbouring bilabial's closure.
_CLASS_TABLE: dict[str, tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]] = {
    "silence": ((0.0, 0.0, 0.0, 1.0, 0.0), (0.8, 0.8, 0.8, 0.8, 0.8), (60, 60, 60, 60, 60)),
    "bilabial": ((0.08, 0.0, 0.0, 1.0, 0.0), (0.5, 0.05, 0.05, 1.0, 0.2), (60, 60, 60, 40, 60)),
    "labiodental": ((0.1, 0.1, 0.0, 0.6, 0.4), (0.4, 0.1, 0.1, 0.8, 0.8), (60, 60, 60, 40, 50)),
    "dental": ((0.2, 0.15, 0.0, 0.0, 0.25), (0.4, 0.1, 0.1, 0.3, 0.5), (60, 60, 60, 30, 50)),
    "alveolar": ((0.18, 0.15, 0.0, 0.0, 0.1), (0.4, 0.08, 0.08, 0.3, 0.2), (60, 60, 60, 30, 50)),
    "sibilant": ((0.08, 0.3, 0.0, 0.0, 0.3), (0.9, 0.3, 0.15, 0.4, 0.4), (55, 60, 60, 30, 50)),
    "postalveolar": ((0.12, 0.0, 0.45, 0.0, 0.3), (0.7, 0.3, 0.5, 0.4, 0.4), (55, 60, 60, 30, 50)),
    "velar": ((0.25, 0.05, 0.0, 0.0, 0.05), (0.3, 0.05, 0.05, 0.3, 0.1), (60, 60, 60, 30, 50)),
    "glottal": ((0.25, 0.0, 0.0, 0.0, 0.0), (0.05, 0.02, 0.02, 0.1, 0.02), (60, 60, 60, 30, 50)),
    "open": ((0.8, 0.1, 0.0, 0.0, 0.1), (1.0, 0.3, 0.3, 0.5, 0.2), (75, 70, 70, 22, 60)),
    "mid": ((0.55, 0.3, 0.0, 0.0, 0.05), (0.7, 0.4, 0.3, 0.5, 0.2), (70, 70, 70, 22, 60)),
    "close_front": ((0.25, 0.85, 0.0, 0.0, 0.1), (0.6, 0.8, 0.8, 0.5, 0.2), (65, 75, 75, 22, 60)),
    "rounded_close": ((0.2, 0.0, 0.95, 0.0, 0.0), (0.6, 0.7, 1.0, 0.5, 0.2), (65, 80, 80, 22, 60)),
    "rounded_mid": ((0.5, 0.0, 0.65, 0.0, 0.0), (0.7, 0.6, 0.9, 0.5, 0.2), (70, 80, 80, 22, 60)),
    "schwa": ((0.35, 0.05, 0.0, 0.0, 0.05), (0.3, 0.1, 0.1, 0.4, 0.1), (60, 60, 60, 22, 50)),
}
CLASSES: tuple[str, ...] = tuple(_CLASS_TABLE)
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}
TARGETS = np.array([v[0] for v in _CLASS_TABLE.values()], np.float64)  # [C, 5]
ALPHA = np.array([v[1] for v in _CLASS_TABLE.values()], np.float64)  # [C, 5]
WIDTH = np.array([v[2] for v in _CLASS_TABLE.values()], np.float64) / 1000.0  # [C, 5], s
VOWEL_CLASSES = frozenset({"open", "mid", "close_front", "rounded_close", "rounded_mid", "schwa"})

_SYMBOLS: dict[str, str] = {}


def _add(cls: str, symbols: str) -> None:
    for s in symbols.split():
        _SYMBOLS[s] = cls


_add("bilabial", "p b m ɓ ʙ")
_add("labiodental", "f v ɱ ʋ β ɸ pf")
_add("dental", "θ ð")
_add("alveolar", "t d n l r ɾ ɬ ɮ ɫ ɭ ɳ ʈ ɖ ɽ ɺ ɗ")
_add("sibilant", "s z ts dz")
_add("postalveolar", "ʃ ʒ tʃ dʒ ʂ ʐ ɕ ʑ tɕ dʑ tʂ dʐ ɹ ɻ")
_add("velar", "k g ɡ ŋ x ɣ c ɟ ɲ ç ʝ ʎ q ɢ χ ʁ ʀ ɴ ɰ ʟ kx")
_add("glottal", "h ɦ ʔ ħ ʕ ɧ")
_add("open", "a ɑ æ ɐ ɶ")
_add("mid", "ɛ ʌ ɜ ɝ ɤ ɘ")
_add("close_front", "i ɪ e ɨ ɯ ᵻ j ɩ")
_add("rounded_close", "u ʊ y ʏ w ɥ ʍ ʉ ɷ")
_add("rounded_mid", "o ɔ ø œ ɵ ɞ ɒ")
_add("schwa", "ə ɚ ɜ˞")
# espeak's pause phonemes and word separators.
_add("silence", "_ | || ‖ #")

# Removed outright: stress, length (also ASCII ":"), syllable-break and linking marks,
# modifier letters that only colour the consonant (aspiration, palatalisation, ...),
# espeak's "'", "," and "-", and the zero-width joiners espeak uses to tie multi-letter
# phonemes (--ipa=3).
_DROP = set(".:ˈˌːˑ'‿ʰʲʷˠˤⁿˡʼ-,\u200c\u200d")
_MAX_SYMBOL = max(len(s) for s in _SYMBOLS)


def normalise(phoneme: str) -> str:
    """Canonical form of an IPA string: no stress/length/tie marks, no combining diacritics."""
    if phoneme.strip("ˈˌːˑ") == "ʲ":
        return "j"  # espeak's Polish emits a lone palatalisation mark as its own [j] segment
    out = []
    for ch in unicodedata.normalize("NFD", phoneme):
        if ch in _DROP or unicodedata.category(ch) == "Mn" or ch.isspace():
            continue
        out.append(ch)
    return "".join(out)


def _parse(symbol: str) -> tuple[list[str], list[str]]:
    """Greedy longest-match parse -> (known symbols, unknown characters)."""
    known: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(symbol):
        for n in range(min(_MAX_SYMBOL, len(symbol) - i), 0, -1):
            if symbol[i : i + n] in _SYMBOLS:
                known.append(symbol[i : i + n])
                i += n
                break
        else:
            # espeak sometimes spells a phoneme with ASCII capitals; try the lower case.
            lower = symbol[i].lower()
            if lower in _SYMBOLS:
                known.append(lower)
            else:
                unknown.append(symbol[i])
            i += 1
    return known, unknown


@lru_cache(maxsize=4096)
def viseme_parts(phoneme: str) -> tuple[int, ...]:
    """Class indices of a phoneme's parts, in time order (one for most, two for diphthongs).

    Unknown symbols fall back to the neutral "alveolar" consonant target; an empty string
    (espeak's pause) is silence. Cached: the same few hundred strings recur in every corpus.
    """
    norm = normalise(phoneme)
    if not norm:
        return (CLASS_INDEX["silence"],)
    if norm in _SYMBOLS:
        return (CLASS_INDEX[_SYMBOLS[norm]],)
    known, _ = _parse(norm)
    if not known:
        return (CLASS_INDEX["alveolar"],)
    classes = [_SYMBOLS[s] for s in known]
    if not any(c in VOWEL_CLASSES for c in classes):
        # A consonant cluster spelt as one phoneme: its release (last part) shows most.
        return (CLASS_INDEX[classes[-1]],)
    # Collapse repeats ("aa" from a stripped length mark) so a long vowel stays one target.
    parts = [c for k, c in enumerate(classes) if k == 0 or c != classes[k - 1]]
    return tuple(CLASS_INDEX[c] for c in parts)


def viseme_classes(phoneme: str) -> tuple[str, ...]:
    """Class names of a phoneme's parts, e.g. "aɪ" -> ("open", "close_front")."""
    return tuple(CLASSES[i] for i in viseme_parts(phoneme))


def unknown_symbols(phonemes: Iterable[str]) -> dict[str, list[str]]:
    """For tests and corpus checks: phoneme -> the characters in it no class knows."""
    report: dict[str, list[str]] = {}
    for p in phonemes:
        norm = normalise(p)
        if norm in _SYMBOLS:
            continue
        _, unknown = _parse(norm)
        if unknown:
            report[p] = unknown
    return report


def segment_table(
    starts: Sequence[float], ends: Sequence[float], phonemes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split events into viseme parts -> (start [S], end [S], class index [S]) arrays."""
    s_out: list[float] = []
    e_out: list[float] = []
    c_out: list[int] = []
    for start, end, ph in zip(starts, ends, phonemes, strict=True):
        parts = viseme_parts(ph)
        step = (end - start) / len(parts)
        for k, cls in enumerate(parts):
            s_out.append(start + k * step)
            e_out.append(start + (k + 1) * step)
            c_out.append(cls)
    return np.asarray(s_out, float), np.asarray(e_out, float), np.asarray(c_out, np.int64)
