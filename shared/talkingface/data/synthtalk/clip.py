"""`talkingface synth clip`: an avatar's person saying new sentences in a new voice.

The demo's input audio and its ground truth. The person (face shape, style, appearance) is
recreated from the avatar's seed by replaying `build_avatar`'s PERSON stream, and checked
against the avatar's manifest. What the person says is new: sentences in `language`
(default the corpus's held-out language, which no motion model trains on) that are not in
the avatar's script, read by a voice drawn from the clip's own seed. The ground-truth
landmarks come from `articulate` with the avatar's speaker, and each frame is rendered with
the avatar's recorded head-pose track replayed back and forth from frame `pose_start` (0 by
default), with exactly the indices the renderer service uses
(`talkingface.render.checkpoint.pose_indices`), so a rendered frame and its ground truth share
the head pose (docs/synthtalk.md). Starting at the avatar's `val` split puts the clip on head
poses its renderer never trained on (what the demo does).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from talkingface.data.synthtalk import fileformat as ff
from talkingface.data.synthtalk.articulation import articulate
from talkingface.data.synthtalk.avatar import (
    PERSON,
    manifest_head,
    read_script,
    save_landmarks,
    script_json,
)
from talkingface.data.synthtalk.corpus import HELDOUT_LANGUAGE, stream_rng
from talkingface.data.synthtalk.speaker import Speaker, sample_speaker
from talkingface.data.synthtalk.speech import LANGUAGES, Voice, random_voice
from talkingface.data.synthtalk.video import (
    Appearance,
    PersonRenderer,
    render_video,
    sample_appearance,
)
from talkingface.media import write_wav
from talkingface.render.checkpoint import pose_indices

# Random stream purposes of a clip's seed, numbered after avatar.py's four so that a clip's
# streams never coincide with those of an avatar built with the same seed.
VOICE, SCRIPT, ARTICULATION = range(4, 7)
POSE_MODE = "pingpong"
_TIMBRE = ("gender", "variant", "rate_wpm", "pitch", "pitch_range")


def avatar_person(manifest: dict[str, Any]) -> tuple[Speaker, Appearance]:
    """The speaker and appearance `build_avatar` drew for the avatar of `manifest`, checked
    against the manifest's record of them (ValueError when they differ)."""
    seed = manifest["seed"]
    rng = stream_rng(seed, PERSON)
    speaker = sample_speaker(rng, f"avatar{seed}")
    appearance = sample_appearance(rng)
    recorded = manifest.get("speaker", {})
    identity = [round(float(x), 6) for x in speaker.identity]
    if recorded.get("id") != speaker.speaker_id or recorded.get("identity") != identity:
        raise ValueError(
            f"avatar seed {seed} does not recreate the avatar's speaker "
            f"({recorded.get('id')!r}): a manifest of another generator version?"
        )
    if json.loads(json.dumps(appearance.to_json())) != manifest.get("appearance"):
        raise ValueError(f"avatar seed {seed} does not recreate the avatar's appearance")
    return speaker, appearance


def _new_voice(rng: np.random.Generator, language: str, avatar_voice: dict[str, Any]) -> Voice:
    """A random voice whose timbre (gender, variant, rate, pitch, range) is not the avatar's."""
    voice = random_voice(rng, language)
    while all(getattr(voice, k) == avatar_voice.get(k) for k in _TIMBRE):
        voice = random_voice(rng, language)
    return voice


def build_clip(
    avatar_dir: Path | str,
    out: Path | str,
    seed: int,
    *,
    language: str | None = None,
    seconds: float = 5.0,
    pose_start: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a clip of the avatar in `avatar_dir` saying about `seconds` of new sentences into
    `out`; returns the manifest plus `seconds_to_build` (which the file leaves out, so the
    same avatar, seed and arguments give identical files)."""
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    language = language or HELDOUT_LANGUAGE
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; one of {', '.join(LANGUAGES)}")
    avatar_dir, out = Path(avatar_dir), Path(out)
    avatar = ff.read_manifest(avatar_dir, ff.AVATAR)
    if (out / ff.MANIFEST).exists():
        raise FileExistsError(f"{out} already holds a SynthTalk product; choose a new --out")
    started = time.perf_counter()
    speaker, appearance = avatar_person(avatar)
    with np.load(avatar_dir / "poses.npz") as poses:
        track_R, track_t = poses["R"], poses["t"]
        # The torso replays the avatar's own torso track (avatars of before it: rigid).
        torso_track = (poses["torso_R"], poses["torso_t"]) if "torso_R" in poses else None
    avatar_script = json.loads((avatar_dir / "script.json").read_text())
    avoid = {s["text"] for s in avatar_script["sentences"]}

    voice = _new_voice(stream_rng(seed, VOICE), language, avatar["voice"])
    audio, phonemes, sentences = read_script(seconds, stream_rng(seed, SCRIPT), voice, avoid)
    track = articulate(phonemes, audio, ff.SAMPLE_RATE, speaker, stream_rng(seed, ARTICULATION))
    frames = track.landmarks.shape[0]
    if not 0 <= pose_start < len(track_R):
        raise ValueError(f"pose_start must lie in 0..{len(track_R) - 1} (the avatar's track)")
    indices = pose_indices(frames, len(track_R), POSE_MODE, start=pose_start)
    rotations, translations = track_R[indices], track_t[indices]

    size = int(avatar["size"])
    renderer = PersonRenderer(speaker.neutral_landmarks(), appearance, size=size)
    out.mkdir(parents=True, exist_ok=True)
    torso = (None, None) if torso_track is None else tuple(a[indices] for a in torso_track)
    lm2d = render_video(
        out, renderer, track.landmarks, rotations, translations, "synth clip", progress, *torso
    )

    write_wav(out / "audio.wav", audio, ff.SAMPLE_RATE)
    save_landmarks(out, track, lm2d, speaker)
    np.savez_compressed(
        out / "poses.npz",
        R=rotations.astype(np.float32),
        t=translations.astype(np.float32),
        K=renderer.K.astype(np.float32),
        **({} if torso[0] is None else {"torso_R": torso[0], "torso_t": torso[1]}),
    )
    np.save(out / "pose_indices.npy", indices.astype(np.int64))
    (out / "script.json").write_text(script_json(sentences, phonemes))
    manifest = {
        **manifest_head(ff.CLIP, seed, size, frames, len(audio), language, voice),
        "sentences": [s["text"] for s in sentences],
        "avatar": {
            "seed": avatar["seed"],
            "speaker_id": speaker.speaker_id,
            "language": avatar["language"],
            "voice_id": avatar["voice"]["voice_id"],
        },
        "pose": {"mode": POSE_MODE, "start": pose_start, "track_frames": len(track_R)},
        "camera": {
            "K": renderer.K.tolist(),
            "convention": "p_cam = R @ p_canonical + t; OpenCV camera (x right, y down, z forward)",
        },
    }
    ff.write_manifest(out, manifest)
    return {**manifest, "seconds_to_build": round(time.perf_counter() - started, 2)}
