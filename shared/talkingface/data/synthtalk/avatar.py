"""`talkingface synth avatar`: minutes of one synthetic person talking, for avatar training.

One speaker (face, style, voice, appearance) reads sentences separated by short pauses; the
articulated landmarks drive the rendered head while a smooth random head motion plays. The
directory holds the frames, head and torso masks, background plate, audio, canonical and
projected landmarks, per-frame head and torso poses and intrinsics (docs/synthtalk.md). The
neck and shoulders move partly on their own (`camera.torso_motion`). Frames of the first 10/11
of the video are `train`, the rest `val` (the split the official GeneFace code uses).
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from talkingface import __version__
from talkingface.data.synthtalk import fileformat as ff
from talkingface.data.synthtalk.articulation import articulate
from talkingface.data.synthtalk.camera import DISTANCE, random_head_motion, torso_motion
from talkingface.data.synthtalk.corpus import HELDOUT_LANGUAGE, stream_rng
from talkingface.data.synthtalk.sentences import sentence
from talkingface.data.synthtalk.speaker import sample_speaker
from talkingface.data.synthtalk.speech import LANGUAGES, random_voice, synthesize
from talkingface.data.synthtalk.video import PersonRenderer, render_video, sample_appearance
from talkingface.lm3d import FPS
from talkingface.media import write_wav

PERSON, SCRIPT, MOTION, ARTICULATION = range(4)  # random stream purposes
TORSO = 7  # the torso's own sway (after clip.py's 4..6, so no stream is shared)
PAUSE_SECONDS = (0.25, 0.6)


def read_script(
    seconds: float, rng: np.random.Generator, voice, avoid: Collection[str] = ()
) -> tuple[np.ndarray, list, list[dict]]:
    """Random sentences read one after another by `voice`, separated by pauses of
    U(PAUSE_SECONDS), until `seconds` of audio; the audio is cut at `seconds`. A sentence in
    `avoid` is drawn again. All draws come from `rng`: per sentence the text (and its
    redraws), then the pause after it. Returns audio, phoneme events (shifted to the script's
    time, those starting before the cut) and sentences ({text, start, end} in seconds)."""
    avoid = set(avoid)
    pieces: list[np.ndarray] = []
    phonemes: list = []
    sentences: list[dict] = []
    offset = 0.0
    while offset < seconds:
        text = sentence(rng, voice.language)
        while text in avoid:
            text = sentence(rng, voice.language)
        utterance = synthesize(text, voice)
        pieces.append(utterance.audio)
        for event in utterance.phonemes:
            phonemes.append(
                SimpleNamespace(
                    start=event.start + offset,
                    end=event.end + offset,
                    phoneme=event.phoneme,
                    word=event.word,
                )
            )
        sentences.append(
            {"text": text, "start": round(offset, 4), "end": round(offset + utterance.duration, 4)}
        )
        offset += utterance.duration
        pause = np.zeros(int(rng.uniform(*PAUSE_SECONDS) * ff.SAMPLE_RATE), np.float32)
        pieces.append(pause)
        offset += len(pause) / ff.SAMPLE_RATE
    audio = np.concatenate(pieces)[: round(seconds * ff.SAMPLE_RATE)]
    phonemes = [e for e in phonemes if e.start < len(audio) / ff.SAMPLE_RATE]
    return audio, phonemes, sentences


def script_json(sentences: list[dict], phonemes: list) -> str:
    """script.json's text: the sentences read and the phoneme events (start, end, IPA)."""
    return json.dumps(
        {
            "sentences": sentences,
            "phonemes": [[round(e.start, 4), round(e.end, 4), e.phoneme] for e in phonemes],
        },
        ensure_ascii=False,
    )


def _script(seconds: float, seed: int, voice) -> tuple[np.ndarray, list, list[dict]]:
    """Sentences read one after another until `seconds` of audio: audio, phonemes, sentences."""
    return read_script(seconds, stream_rng(seed, SCRIPT), voice)


def save_landmarks(out: Path, track, lm2d: np.ndarray, speaker) -> None:
    """`landmarks.npz`: the articulation track's landmarks and controls, the projected 2-D
    landmarks and the speaker's neutral face (the same arrays for avatars and clips)."""
    np.savez_compressed(
        out / "landmarks.npz",
        lm3d=track.landmarks.astype(np.float32),
        lm2d=lm2d,
        controls=track.controls.astype(np.float32),
        blink=track.blink.astype(np.float32),
        loudness_db=track.loudness_db.astype(np.float32),
        f0_hz=track.f0_hz.astype(np.float32),
        neutral_lm3d=speaker.neutral_landmarks().astype(np.float32),
    )


def manifest_head(
    product: str, seed: int, size: int, frames: int, samples: int, language: str, voice
) -> dict[str, Any]:
    """The fields every SynthTalk video product's manifest starts with (avatar, clip)."""
    return {
        "format": product,
        "version": ff.FORMAT_VERSION,
        "generator": f"talkingface {__version__}",
        "seed": seed,
        "fps": FPS,
        "sample_rate": ff.SAMPLE_RATE,
        "size": size,
        "frames": frames,
        "duration_seconds": round(samples / ff.SAMPLE_RATE, 4),
        "language": language,
        "voice": {**voice.__dict__, "voice_id": voice.voice_id},
    }


def build_avatar(
    out: Path | str,
    seconds: float,
    seed: int,
    size: int = 256,
    language: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write one synthetic person's talking video and its ground truth into `out`."""
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    if size < 32 or size % 2:
        raise ValueError("size must be an even number of pixels, at least 32")
    out = Path(out)
    if (out / ff.MANIFEST).exists():
        raise FileExistsError(f"{out} already holds a SynthTalk product; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rng = stream_rng(seed, PERSON)
    speaker = sample_speaker(rng, f"avatar{seed}")
    appearance = sample_appearance(rng)
    seen = [lang for lang in LANGUAGES if lang != HELDOUT_LANGUAGE]
    language = language or seen[int(rng.integers(len(seen)))]
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; one of {', '.join(LANGUAGES)}")
    voice = random_voice(rng, language)

    audio, phonemes, sentences = _script(seconds, seed, voice)
    track = articulate(phonemes, audio, ff.SAMPLE_RATE, speaker, stream_rng(seed, ARTICULATION))
    frames = track.landmarks.shape[0]
    rotations, translations, euler = random_head_motion(stream_rng(seed, MOTION), frames, FPS)
    shift = translations - np.array([0.0, 0.0, DISTANCE], np.float32)
    torso_R, torso_t, _ = torso_motion(stream_rng(seed, TORSO), euler, shift, FPS)

    renderer = PersonRenderer(speaker.neutral_landmarks(), appearance, size=size)
    lm2d = render_video(
        out, renderer, track.landmarks, rotations, translations, "synth avatar", progress,
        torso_R, torso_t,
    )  # fmt: skip

    write_wav(out / "audio.wav", audio, ff.SAMPLE_RATE)
    np.save(out / "background.npy", renderer.background)
    save_landmarks(out, track, lm2d, speaker)
    np.savez_compressed(
        out / "poses.npz",
        R=rotations.astype(np.float32),
        t=translations.astype(np.float32),
        euler_deg=np.rad2deg(euler).astype(np.float32),
        K=renderer.K.astype(np.float32),
        torso_R=torso_R,
        torso_t=torso_t,
    )
    (out / "script.json").write_text(script_json(sentences, phonemes))
    train_frames = frames * 10 // 11
    manifest = {
        **manifest_head(ff.AVATAR, seed, size, frames, len(audio), language, voice),
        "speaker": {
            "id": speaker.speaker_id,
            "identity": [round(float(x), 6) for x in speaker.identity],
            "articulation_gain": speaker.articulation_gain,
            "asymmetry": speaker.asymmetry,
            "blink_rate": speaker.blink_rate,
        },
        "appearance": appearance.to_json(),
        "splits": {"train": [0, train_frames], "val": [train_frames, frames]},
        "camera": {
            "K": renderer.K.tolist(),
            "convention": "p_cam = R @ p_canonical + t; OpenCV camera (x right, y down, z forward)",
        },
        "seconds_to_build": round(time.perf_counter() - started, 2),
    }
    ff.write_manifest(out, manifest)
    return manifest
