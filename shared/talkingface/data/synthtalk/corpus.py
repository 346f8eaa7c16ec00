"""`talkingface synth corpus`: many synthetic speakers' audio + landmarks for the motion model.

Splits are by speaker, and through speakers by voice and language; sentences never repeat
across splits (docs/synthtalk.md):

- every speaker of HELDOUT_LANGUAGE is in `test` (an unseen language, unseen voices);
- of the other speakers, in creation order, index % 5 == 3 goes to `val` and index % 5 == 4
  to `test`; the rest are `train`;
- a val/test sentence that also occurs in train is drawn again.

Everything derives from the seed through independent numpy streams keyed by purpose, speaker
and utterance (`stream_rng`), so the same seed gives the same files, and utterances could be
built in any order.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from talkingface import __version__
from talkingface.data.synthtalk import fileformat as ff
from talkingface.data.synthtalk.articulation import articulate
from talkingface.data.synthtalk.sentences import sentence
from talkingface.data.synthtalk.speaker import Speaker, sample_speaker
from talkingface.data.synthtalk.speech import LANGUAGES, Voice, random_voice, synthesize
from talkingface.media import write_wav

HELDOUT_LANGUAGE = "it"  # never seen in train or val: the unseen-language test condition
SECONDS_PER_UTTERANCE = 3.0  # planning estimate only; the corpus stops on measured duration


@dataclass(frozen=True)
class PlannedSpeaker:
    index: int
    speaker: Speaker
    voice: Voice
    split: str


def stream_rng(seed: int, *key: int) -> np.random.Generator:
    """An independent random stream for one purpose, e.g. (seed, UTTERANCE, speaker, turn)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


SPEAKER, TEXT, REDRAW, UTTERANCE = range(4)  # stream purposes


def _split_for(index: int, language: str) -> str:
    if language == HELDOUT_LANGUAGE:
        return "test"
    return {3: "val", 4: "test"}.get(index % 5, "train")


def plan_speakers(minutes: float, seed: int) -> tuple[list[PlannedSpeaker], int]:
    """Speakers (face, style, voice, split) and utterances per speaker for `minutes`."""
    if HELDOUT_LANGUAGE not in LANGUAGES:
        raise RuntimeError(f"held-out language {HELDOUT_LANGUAGE} has no espeak voice")
    utterances = max(1, math.ceil(minutes * 60 / SECONDS_PER_UTTERANCE))
    count = max(10, len(LANGUAGES), round(minutes * 2))  # every language has a speaker
    per_speaker = max(3, math.ceil(utterances / count))
    planned = []
    for index in range(count):
        rng = stream_rng(seed, SPEAKER, index)
        language = LANGUAGES[index % len(LANGUAGES)]
        gender = ("female", "male")[int(rng.integers(2))]
        speaker = sample_speaker(rng, f"sp{index:04d}")
        voice = random_voice(rng, language, gender)
        planned.append(PlannedSpeaker(index, speaker, voice, _split_for(index, language)))
    return planned, per_speaker


def _plan_texts(planned: list[PlannedSpeaker], per_speaker: int, seed: int) -> dict[int, list[str]]:
    texts: dict[int, list[str]] = {}
    for p in planned:
        rng = stream_rng(seed, TEXT, p.index)
        texts[p.index] = [sentence(rng, p.voice.language) for _ in range(per_speaker)]
    train = {t for p in planned if p.split == "train" for t in texts[p.index]}
    for p in planned:
        if p.split == "train":
            continue
        rng = stream_rng(seed, REDRAW, p.index)
        for i, text in enumerate(texts[p.index]):
            while text in train:
                text = sentence(rng, p.voice.language)
            texts[p.index][i] = text
    return texts


def _speaker_record(p: PlannedSpeaker) -> dict[str, Any]:
    s = p.speaker
    return {
        "id": s.speaker_id,
        "split": p.split,
        "language": p.voice.language,
        "voice": {**p.voice.__dict__, "voice_id": p.voice.voice_id},
        "identity": [round(float(x), 6) for x in s.identity],
        "style": {
            "articulation_gain": s.articulation_gain,
            "asymmetry": s.asymmetry,
            "blink_rate": s.blink_rate,
            "brow_activity": s.brow_activity,
        },
    }


def build_corpus(out: Path | str, minutes: float, seed: int, progress: bool = True) -> dict:
    """Write a corpus of about `minutes` of speech into `out`; returns its manifest."""
    if minutes <= 0:
        raise ValueError("minutes must be positive")
    out = Path(out)
    if (out / ff.MANIFEST).exists():
        raise FileExistsError(f"{out} already holds a SynthTalk product; choose a new --out")
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "landmarks").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    planned, per_speaker = plan_speakers(minutes, seed)
    texts = _plan_texts(planned, per_speaker, seed)
    target = minutes * 60.0
    total = 0.0
    records = []
    bar = tqdm(total=round(target), unit="s", desc="synth corpus", disable=not progress)
    # Round-robin over speakers so a short corpus still covers every speaker and split.
    for turn in range(per_speaker):
        for p in planned:
            if total >= target:
                break
            utt_id = f"{p.speaker.speaker_id}-u{turn:03d}"
            rng = stream_rng(seed, UTTERANCE, p.index, turn)
            record = _write_utterance(out, utt_id, p, texts[p.index][turn], rng)
            records.append(record)
            total += record["duration"]
            bar.update(min(record["duration"], max(target - bar.n, 0)))
    bar.close()
    with (out / "utterances.jsonl").open("w") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
    used = {r["speaker"] for r in records}
    speakers = [_speaker_record(p) for p in planned if p.speaker.speaker_id in used]
    (out / "speakers.json").write_text(json.dumps(speakers, indent=2, sort_keys=True))
    manifest = {
        "format": ff.CORPUS,
        "version": ff.FORMAT_VERSION,
        "generator": f"talkingface {__version__}",
        "seed": seed,
        "fps": 25,
        "sample_rate": ff.SAMPLE_RATE,
        "minutes_requested": minutes,
        "duration_seconds": round(total, 3),
        "heldout_language": HELDOUT_LANGUAGE,
        "splits": _split_summary(records),
        "seconds_to_build": round(time.perf_counter() - started, 2),
    }
    ff.write_manifest(out, manifest)
    return manifest


def _split_summary(records: list[dict]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for split in ("train", "val", "test"):
        rows = [r for r in records if r["split"] == split]
        summary[split] = {
            "utterances": len(rows),
            "speakers": len({r["speaker"] for r in rows}),
            "languages": sorted({r["language"] for r in rows}),
            "seconds": round(sum(r["duration"] for r in rows), 3),
        }
    return summary


def _write_utterance(
    out: Path, utt_id: str, p: PlannedSpeaker, text: str, rng: np.random.Generator
) -> dict[str, Any]:
    utterance = synthesize(text, p.voice)
    track = articulate(utterance.phonemes, utterance.audio, utterance.sample_rate, p.speaker, rng)
    write_wav(out / "audio" / f"{utt_id}.wav", utterance.audio, utterance.sample_rate)
    np.savez_compressed(
        out / "landmarks" / f"{utt_id}.npz",
        lm3d=track.landmarks.astype(np.float32),
        controls=track.controls.astype(np.float32),
        loudness_db=track.loudness_db.astype(np.float32),
        f0_hz=track.f0_hz.astype(np.float32),
        blink=track.blink.astype(np.float32),
        phoneme_start=np.array([e.start for e in utterance.phonemes], np.float32),
        phoneme_end=np.array([e.end for e in utterance.phonemes], np.float32),
        phoneme=np.array([e.phoneme for e in utterance.phonemes], dtype=str),
    )
    return {
        "id": utt_id,
        "speaker": p.speaker.speaker_id,
        "split": p.split,
        "language": p.voice.language,
        "voice_id": p.voice.voice_id,
        "text": text,
        "duration": round(utterance.duration, 6),
        "frames": int(track.landmarks.shape[0]),
        "audio": f"audio/{utt_id}.wav",
        "landmarks": f"landmarks/{utt_id}.npz",
    }
