"""A thin, locked ctypes binding to libespeak-ng that returns 22 050 Hz samples and events.

One process-wide engine: libespeak-ng keeps all of its state in C globals, so it is
initialised once (AUDIO_OUTPUT_SYNCHRONOUS, phoneme events with IPA names) and every
synthesis runs under `_LOCK`. The structs below follow `speak_lib.h` (API revision 12) field
for field; the header is not needed at run time.

Determinism. Stock espeak-ng is not bit-reproducible across calls in one process; three
kinds of state leak from one utterance into the next, and each is neutralised here:

* wavegen.c keeps the pitch "flutter" phase (a function-static counter), the glottal-cycle
  counter behind "roughness" amplitude modulation, breath-noise resonator memories and
  `rand()` for breathy voices. We point espeak at a private data directory (symlinks to the
  system data) whose `voices/!v` holds our own variants, derived at run time from the
  system's m*/f* variants with `flutter 0`, `roughness 8` (8 disables the modulation) and no
  `breath`/`breathw` lines. Their `echo` is switched off too (`echo 0 0`): with it, pauses
  are not digital silence, and speech.py finds stop closures as runs of exact zeros.
* The automatic gain control in wavegen.c remembers a reduction after an overflow; a
  volume of 40 (espeak's normal is 100) keeps every sample far from int16 full scale
  (measured peaks stay below 16 000 over all languages, variants and prosody extremes).
* CalcLengths() scans the phoneme list past the end of the current clause for the next word
  boundary, reading stale entries left by earlier, longer clauses (it changes the length of
  the last vowel and of clause pauses by tens of milliseconds). Before every synthesis we
  translate a fixed long clause with espeak_TextToPhonemes (about 1 ms, no audio), so those
  stale entries are always the same. A clause of the real text longer than that priming
  clause (~400 phonemes) could still read history; sentences from `sentences.py` are far
  shorter.

With these, the same text and voice give the same samples whatever was synthesised before.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 22050

# speak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
EVENT_SENTENCE = 2
EVENT_END = 5
EVENT_MSG_TERMINATED = 6
EVENT_PHONEME = 7
# espeak_PARAMETER
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7

# Variant files we derive. Male m5 (no own pitch) and m8 (odd tone curve) are left out.
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
_VARIANT_PREFIX = "synthtalk-"
# Lines dropped from the system variants, then appended with fixed values (module docstring).
_DROPPED_KEYS = ("breath", "breathw", "echo", "flutter", "roughness")
_APPENDED = "flutter 0\nroughness 8\necho 0 0\n"
# 100 is espeak's normal volume; at 40 no sample comes near int16 full scale, so the AGC in
# wavegen.c (whose state would leak into the next utterance) never reduces the gain.
_VOLUME_VALUE = 40
# One clause (espeak splits clauses at ~240 words) of simple CV words: every second entry of
# the phoneme list it leaves behind starts a word, so CalcLengths' scan past the end of a
# shorter clause stops within a couple of entries, on the same data every time.
_PRIMING_TEXT = ("ba " * 200).strip().encode() + b"\0"


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),  # espeak_EVENT_TYPE (an enum, int-sized)
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class EspeakError(RuntimeError):
    """libespeak-ng is missing, failed to initialise or refused a request."""


@dataclass(frozen=True)
class RawEvent:
    """One espeak event; `sample` is its exact index in the 22 050 Hz output."""

    type: int
    sample: int
    text_position: int  # 1-based character index into the UTF-8 text
    length: int  # characters, for word events
    number: int  # word number for word events
    phoneme: str  # IPA name for phoneme events, "" otherwise (and for pauses)


class _Collector:
    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.events: list[RawEvent] = []
        self.error: BaseException | None = None


_LOCK = threading.Lock()
_lib: ctypes.CDLL | None = None
_callback: _SynthCallback | None = None  # kept referenced: C holds only the pointer
_collector: _Collector | None = None
_data_root: str | None = None
_data_owner_pid = 0


def _reset_lock_in_child() -> None:
    # A fork taken while another thread held the lock would otherwise deadlock the child.
    global _LOCK
    _LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)


def _load_library() -> ctypes.CDLL:
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as e:
        raise EspeakError(
            f"libespeak-ng not found ({e}); run `make setup` to install espeak-ng"
        ) from e
    lib.espeak_ng_InitializePath.argtypes = [ctypes.c_char_p]
    lib.espeak_ng_InitializePath.restype = None
    lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    lib.espeak_Info.restype = ctypes.c_char_p
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint),
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_TextToPhonemes.argtypes = [
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    return lib


def _system_data_dir(lib: ctypes.CDLL) -> Path:
    # InitializePath(NULL) applies espeak's own search ($ESPEAK_DATA_PATH, then the
    # compiled-in location) without loading anything; espeak_Info then reports the result.
    lib.espeak_ng_InitializePath(None)
    path = ctypes.c_char_p()
    lib.espeak_Info(ctypes.byref(path))
    data = Path((path.value or b"").decode())
    if not (data / "phontab").is_file():
        raise EspeakError(f"espeak-ng data not found at {data!s}; run `make setup`")
    return data


def _derived_variant(text: str) -> str:
    kept = [
        line for line in text.splitlines() if not line.strip().lower().startswith(_DROPPED_KEYS)
    ]
    return "\n".join(kept) + "\n" + _APPENDED


def _build_data_root(system: Path) -> str:
    root = Path(tempfile.mkdtemp(prefix="synthtalk-espeak-"))
    data = root / "espeak-ng-data"
    voices = data / "voices"
    variants = voices / "!v"
    variants.mkdir(parents=True)
    for entry in system.iterdir():
        if entry.name != "voices":
            (data / entry.name).symlink_to(entry)
    for entry in (system / "voices").iterdir():
        if entry.name != "!v":
            (voices / entry.name).symlink_to(entry)
    for name in MALE_VARIANTS + FEMALE_VARIANTS:
        source = system / "voices" / "!v" / name
        if not source.is_file():
            raise EspeakError(f"espeak-ng voice variant {source} is missing")
        text = source.read_text(encoding="utf-8", errors="replace")
        (variants / (_VARIANT_PREFIX + name)).write_text(_derived_variant(text), encoding="utf-8")
    return str(root)


def _remove_data_root() -> None:
    # Forked children inherit the atexit hook; only the process that made the copy removes it.
    if _data_root is not None and os.getpid() == _data_owner_pid:
        shutil.rmtree(_data_root, ignore_errors=True)


def _on_synth(wav: ctypes.POINTER(ctypes.c_short), n: int, events: ctypes.POINTER(_Event)) -> int:
    col = _collector
    if col is None:
        return 1
    try:
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            ev = events[i]
            phoneme = ""
            if ev.type == EVENT_PHONEME:
                # A name that fills all 8 bytes has no terminator; `.string` stops at 8.
                phoneme = ev.id.string.decode("utf-8", errors="replace")
            number = ev.id.number if ev.type in (EVENT_WORD, EVENT_SENTENCE, EVENT_END) else 0
            col.events.append(
                RawEvent(ev.type, ev.sample, ev.text_position, ev.length, number, phoneme)
            )
            i += 1
        if wav and n > 0:
            col.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    except BaseException as e:  # an exception must not unwind through C
        col.error = e
        return 1
    return 0


def _prime(lib: ctypes.CDLL) -> None:
    buf = ctypes.create_string_buffer(_PRIMING_TEXT)
    ptr = ctypes.c_void_p(ctypes.addressof(buf))
    # espeak advances the pointer clause by clause and sets it to NULL at the end.
    while ptr.value:
        lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, 0)


def _ensure_initialised() -> ctypes.CDLL:
    global _lib, _callback, _data_root, _data_owner_pid
    if _lib is not None:
        return _lib
    lib = _load_library()
    root = _build_data_root(_system_data_dir(lib))
    _data_root, _data_owner_pid = root, os.getpid()
    atexit.register(_remove_data_root)
    # buflength 500 ms: fewer Python callbacks per utterance than the 60 ms default.
    options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 500, root.encode(), options)
    if rate != SAMPLE_RATE:
        raise EspeakError(f"espeak_Initialize returned {rate}, expected {SAMPLE_RATE} Hz")
    _callback = _SynthCallback(_on_synth)
    lib.espeak_SetSynthCallback(_callback)
    _lib = lib
    return lib


def synth(
    text: str, language: str, variant: str, rate: int, pitch: int, pitch_range: int
) -> tuple[np.ndarray, list[RawEvent]]:
    """Synthesise `text`; returns int16 samples at 22 050 Hz and the events in emitted order."""
    global _collector
    if variant not in MALE_VARIANTS + FEMALE_VARIANTS:
        raise ValueError(f"unknown voice variant {variant!r}")
    data = text.encode("utf-8") + b"\0"
    with _LOCK:
        lib = _ensure_initialised()
        # Voice, then every prosody parameter, in the same order each time. Punctuation
        # and capitals stay at their defaults (off): setting them returns
        # EE_INTERNAL_ERROR in espeak-ng 1.51 even for the default value.
        name = f"{language}+{_VARIANT_PREFIX}{variant}".encode()
        if lib.espeak_SetVoiceByName(name) != 0:
            raise EspeakError(f"espeak-ng has no voice {language!r}")
        for param, value in (
            (_RATE, rate),
            (_VOLUME, _VOLUME_VALUE),
            (_PITCH, pitch),
            (_RANGE, pitch_range),
            (_WORDGAP, 0),
        ):
            if lib.espeak_SetParameter(param, value, 0) != 0:
                raise EspeakError(f"espeak_SetParameter({param}, {value}) failed")
        _prime(lib)
        _collector = col = _Collector()
        try:
            status = lib.espeak_Synth(
                data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
        finally:
            _collector = None
    if col.error is not None:
        raise EspeakError("error while collecting espeak output") from col.error
    if status != 0:
        raise EspeakError(f"espeak_Synth failed with status {status}")
    audio = np.concatenate(col.chunks) if col.chunks else np.zeros(0, np.int16)
    return audio.astype(np.int16, copy=False), col.events
