"""Evaluation pieces: the fixed split, the speaker subset, and the ridge baseline."""

import numpy as np

from talkingface.motion.evaluate import Ridge, eval_split, postnet_subset
from talkingface.motion.metrics import motion_metrics


def test_eval_split_halves_each_test_speaker(tiny_data):
    utts, _ = tiny_data
    test = [u for u in utts if u.split == "test"]
    adapt, evaluated = eval_split(test)
    assert adapt and evaluated
    for speaker, first in adapt.items():
        later = [u for u in evaluated if u.speaker == speaker]
        assert len(later) >= len(first) >= 1
        assert max(u.id for u in first) < min(u.id for u in later)
    assert not {u.id for u in evaluated} & {u.id for a in adapt.values() for u in a}


def test_postnet_subset_mixes_unseen_and_seen_languages(tiny_data):
    utts, _ = tiny_data
    adapt, _ = eval_split([u for u in utts if u.split == "test"])
    chosen = postnet_subset(adapt, 2)
    assert len(chosen) == 2
    languages = {adapt[s][0].language for s in chosen}
    assert "it" in languages and len(languages) == 2
    assert postnet_subset(adapt, 0) == sorted(adapt)


def test_ridge_fits_its_training_data_better_than_no_motion(tiny_data):
    _, corpus = tiny_data
    ridge = Ridge(corpus.stats).fit(corpus.train, corpus.val)
    fitted = motion_metrics(ridge.predict(corpus.train), [u.lm3d for u in corpus.train])
    still = [np.repeat(u.mean_face[None], u.frames, 0) for u in corpus.train]
    baseline = motion_metrics(still, [u.lm3d for u in corpus.train])
    assert fitted["l2_mm"] < 0.9 * baseline["l2_mm"]
    assert fitted["mouth_open_r"] > 0.5
