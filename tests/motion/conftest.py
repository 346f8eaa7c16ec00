"""Tiny motion models trained once per session on a tiny SynthTalk corpus (a few seconds)."""

from pathlib import Path

import pytest

from talkingface.data.synthtalk.corpus import build_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """About 1 minute of SynthTalk speech (12+ speakers, every split present)."""
    root = tmp_path_factory.mktemp("motion-corpus") / "corpus"
    build_corpus(root, minutes=1.0, seed=3, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_data(tiny_corpus, tmp_path_factory):
    """(utterances, Corpus) with features extracted in-process (cached per session)."""
    from talkingface.motion.train import prepare_corpus

    cache = tmp_path_factory.mktemp("motion-cache")
    return prepare_corpus(tiny_corpus, cache, progress=False)


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_data, tmp_path_factory) -> Path:
    """CKPT_DIR with a `tiny` sync expert and a `tiny` motion model (variant full)."""
    from talkingface.motion.train import default_config, train_motion, train_syncnet

    _, corpus = tiny_data
    out = tmp_path_factory.mktemp("motion-ckpt")
    config = default_config("tiny", "full", 1, None)
    train_syncnet(corpus, out, config, progress=False, device="cpu")
    train_motion(corpus, out, config, progress=False, device="cpu")
    return out


@pytest.fixture(scope="session")
def tiny_postnet(tiny_data, tiny_ckpt, tmp_path_factory) -> Path:
    """A `tiny` postnet directory adapted to one test speaker of the tiny corpus."""
    from talkingface.motion.adapt import train_postnet
    from talkingface.motion.infer import MotionModel
    from talkingface.motion.train import default_config, load_syncnet

    utts, _ = tiny_data
    test = [u for u in utts if u.split == "test"]
    mine = [u for u in test if u.speaker == test[0].speaker]
    model = MotionModel.load(tiny_ckpt / "motion", device="cpu")
    out = tmp_path_factory.mktemp("motion-postnet") / "postnet"
    config = default_config("tiny", "full", 1, None)
    train_postnet(
        model,
        mine[:-1] or mine,
        mine[-1:],
        mine[0].mean_face,
        out,
        config,
        load_syncnet(tiny_ckpt, model.device),
        progress=False,
    )
    return out
