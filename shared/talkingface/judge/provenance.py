"""Where a judge's training data came from, and the check that it is independent of a corpus.

A judge is only an independent referee of a motion model if it never saw that model's
speakers. SynthTalk speaker ids (`sp0000`, ...) repeat in every corpus whatever the seed, so
speakers are identified by their identity vectors (`speakers.json`: the face-shape
coefficients that make the person), each reduced to a short digest. `judge.json` records the
training corpus's manifest seed, every speaker's id, split and identity digest, and a digest
of them all; `check_disjoint` compares those with another corpus.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from talkingface.data.synthtalk.fileformat import read_corpus

TRAINING_SPLITS = ("train", "val")  # the splits whose speakers shaped (or selected) a judge


def identity_digest(identity: list[float]) -> str:
    """A short digest of one identity vector (rounded to 1e-4: the file keeps 1e-6)."""
    text = ",".join(f"{float(x):.4f}" for x in identity).replace("-0.0000", "0.0000")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def corpus_identity(corpus: Path | str) -> dict[str, Any]:
    """A corpus's manifest seed and its speakers: id -> {split, identity digest}."""
    corpus = Path(corpus)
    manifest, _ = read_corpus(corpus)
    path = corpus / "speakers.json"
    if not path.is_file():
        raise FileNotFoundError(f"{corpus}: no speakers.json; cannot identify its speakers")
    speakers = {
        s["id"]: {"split": s.get("split", ""), "identity": identity_digest(s["identity"])}
        for s in json.loads(path.read_text())
    }
    everyone = "\n".join(f"{k}:{v['identity']}" for k, v in sorted(speakers.items()))
    return {
        "path": str(corpus),
        "manifest_seed": manifest.get("seed"),
        "speakers": speakers,
        "identity_hash": hashlib.sha256(everyone.encode()).hexdigest()[:16],
    }


def training_identities(provenance: dict[str, Any]) -> dict[str, str]:
    """identity digest -> speaker id, for the speakers a judge trained (or validated) on."""
    return {
        v["identity"]: k
        for k, v in provenance["speakers"].items()
        if v.get("split") in TRAINING_SPLITS
    }


def check_disjoint(judge_dir: Path | str, corpus_dir: Path | str) -> dict[str, Any]:
    """Raise ValueError unless `corpus_dir` shares no speaker (by identity vector) with the
    judge's training speakers and was built with another seed; returns a summary."""
    from talkingface.judge.model import read_meta

    meta = read_meta(judge_dir)
    mine = meta["corpus"]
    other = corpus_identity(corpus_dir)
    if mine.get("manifest_seed") == other["manifest_seed"]:
        raise ValueError(
            f"{corpus_dir} was built with seed {other['manifest_seed']}, the same seed as the "
            f"judge's training corpus ({mine.get('path')}): the judge is not independent of it"
        )
    trained = training_identities(mine)
    shared = sorted(
        f"{sid} (judge's {trained[v['identity']]})"
        for sid, v in other["speakers"].items()
        if v["identity"] in trained
    )
    if shared:
        raise ValueError(
            f"{corpus_dir} shares {len(shared)} speaker(s) with the judge's training data "
            f"(same identity vectors): {', '.join(shared[:8])}"
            + (" ..." if len(shared) > 8 else "")
        )
    return {
        "judge_corpus_seed": mine.get("manifest_seed"),
        "corpus_seed": other["manifest_seed"],
        "corpus_identity_hash": other["identity_hash"],
        "shared_speakers": 0,
    }
