"""The independent lip-sync judge (docs/judge.md): geometry, training, scoring, integrity,
speaker disjointness and the `train judge` / `eval judge` commands, on a 1-minute SynthTalk
corpus of its own (seed 5: other speakers than the motion tests' seed-3 corpus)."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from talkingface.cli import main
from talkingface.data.synthtalk.corpus import build_corpus
from talkingface.judge import Judge, JudgeConfig, check_disjoint, mouth_features, preset, shift_pair
from talkingface.judge.geometry import FEATURE_NAMES, STILL
from talkingface.judge.model import META, WEIGHTS
from talkingface.judge.train import OffsetSampler
from talkingface.motion.data import load_corpus

JUDGE_SEED = 5


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("judge-cache")


@pytest.fixture(scope="module")
def judge_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge-corpus") / "corpus"
    build_corpus(root, minutes=1.0, seed=JUDGE_SEED, progress=False)
    return root


@pytest.fixture(scope="module")
def judge_utts(judge_corpus, cache):
    return load_corpus(judge_corpus, cache, progress=False)


@pytest.fixture(scope="module")
def trained(judge_corpus, judge_utts, tmp_path_factory):
    """(judge directory, training summary) of a `tiny` judge."""
    from talkingface.judge.train import train_judge

    out = tmp_path_factory.mktemp("judge") / "judge"
    result = train_judge(judge_utts, judge_corpus, out, preset("tiny"), seed=1, progress=False)
    return out, result


def _heldout(utts):
    return [(u.features, u.lm3d) for u in utts if u.split == "test"]


def test_mouth_features_ignore_face_size_and_place(judge_utts):
    lm = judge_utts[0].lm3d
    g = mouth_features(lm)
    assert g.shape == (len(lm), 12)
    np.testing.assert_allclose(g.mean(axis=0), 0, atol=1e-5)
    moved = lm * 1.3 + np.array([0.2, -0.1, 0.05], np.float32)
    np.testing.assert_allclose(mouth_features(moved), g, atol=1e-4)
    assert g[:, 1].std() > 0  # the mouth moves


def _exaggerated(lm: np.ndarray, factor: float) -> np.ndarray:
    """The chin and mouth points' motion about their own mean, times `factor` (a tracker that
    reads the mouth moving further than it does)."""
    out = np.array(lm, np.float32, copy=True)
    points = [8, *range(48, 68)]
    mean = out[:, points].mean(axis=0, keepdims=True)
    out[:, points] = mean + factor * (out[:, points] - mean)
    return out


# Measurements linear in the points (not the widths, which are lengths).
LINEAR = [i for i, name in enumerate(FEATURE_NAMES) if "width" not in name]


def test_mouth_features_read_timing_not_extent(judge_utts):
    lm = max(judge_utts, key=lambda u: u.frames).lm3d
    wide = _exaggerated(lm, 1.5)
    g, g_wide = mouth_features(lm), mouth_features(wide)
    np.testing.assert_allclose(g.std(axis=0), 1.0, atol=1e-3)  # every measurement moves
    np.testing.assert_allclose(g_wide[:, LINEAR], g[:, LINEAR], atol=2e-3)
    for j in range(g.shape[1]):
        assert np.corrcoef(g[:, j], g_wide[:, j])[0, 1] > 0.99, FEATURE_NAMES[j]
    # Without the per-sequence scale (judges from before it) the extent shows.
    raw, raw_wide = mouth_features(lm, False), mouth_features(wide, False)
    np.testing.assert_allclose(raw_wide[:, 0].std() / raw[:, 0].std(), 1.5, rtol=1e-3)


def test_a_still_mouth_stays_still(judge_utts):
    lm = np.repeat(judge_utts[0].lm3d[:1], 200, axis=0)
    iod = float(np.linalg.norm(lm[0, 45] - lm[0, 36]))
    tremor = np.random.default_rng(0).normal(0.0, 0.05 * STILL * iod, lm.shape)
    g = mouth_features(lm + tremor.astype(np.float32))
    assert np.abs(g).max() < 0.5  # not blown up to unit std


def test_judge_scores_an_exaggerated_mouth_as_the_truth(trained, judge_utts):
    judge = Judge.load(trained[0])
    u = max(judge_utts, key=lambda u: u.frames)
    truth = judge.offsets(u.features, u.lm3d)
    wide = judge.offsets(u.features, _exaggerated(u.lm3d, 2.0))
    assert np.isfinite(truth).all()
    np.testing.assert_allclose(wide, truth, atol=0.01)


def test_judges_from_before_the_sequence_scale_load_without_it(trained):
    assert JudgeConfig.from_dict({}).sequence_scale is False
    meta = json.loads((trained[0] / META).read_text())
    assert meta["config"]["sequence_scale"] is True
    assert Judge.load(trained[0]).config.sequence_scale is True


def test_training_examples_are_augmented_validation_ones_not():
    config = preset("tiny")
    rng = np.random.default_rng(1)
    audio = [rng.normal(size=(120, 4)).astype(np.float32) for _ in range(3)]
    mouth = [rng.normal(size=(120, 12)).astype(np.float32) for _ in range(3)]
    a_plain, m_plain = OffsetSampler(audio, mouth, config, 7).sample(1)
    a_aug, m_aug = OffsetSampler(audio, mouth, config, 7, augment=True).sample(1)
    # the same example (the same draws up to the augmentation), read differently
    np.testing.assert_array_equal(a_aug.numpy(), a_plain.numpy())
    change = (m_aug - m_plain).numpy()
    assert 0.1 < change.std() < 1.0
    # the windows of one example share their frames' augmentation: the window at k + 1
    # is the window at k moved by one frame
    np.testing.assert_array_equal(m_aug[0, 1:, :-1].numpy(), m_aug[0, :-1, 1:].numpy())
    off = dataclasses.replace(config, augment_gain=0.0, augment_noise=0.0)
    _, m_off = OffsetSampler(audio, mouth, off, 7, augment=True).sample(1)
    np.testing.assert_array_equal(m_off.numpy(), m_plain.numpy())


def test_training_loss_falls(trained):
    _, result = trained
    t = result["training"]
    assert t["loss_last"] < t["loss_first"] - 0.1
    # the soft target's entropy is the floor: a good part of the way there in 150 steps
    assert t["loss_last"] - t["loss_floor"] < 0.75 * (t["chance_loss"] - t["loss_floor"])


def test_heldout_truth_aligned_beats_shifted(trained, judge_utts):
    judge = Judge.load(trained[0])
    items = _heldout(judge_utts)
    report = judge.truth_report(items)
    shifted = report["shifted"]
    assert shifted["0"]["logp"] > shifted["8"]["logp"]
    assert shifted["0"]["conf"] > shifted["8"]["conf"]
    assert report["pairs"] > 0 and 0 <= report["offset_accuracy"] <= 1
    assert set(report["accuracy_by_shift"]) == {str(k) for k in range(-8, 9)}
    # the same numbers are frozen into judge.json
    meta = json.loads((trained[0] / META).read_text())
    assert meta["truth_report"]["shifted"]["0"]["logp"] == pytest.approx(shifted["0"]["logp"])
    # score(): aligned truth above the truth with its audio 8 frames late
    aligned = judge.score(items)
    late = judge.score([shift_pair(f, lm, 8) for f, lm in items])
    assert aligned["judge_conf"] > late["judge_conf"]
    assert set(aligned) >= {"judge_conf", "judge_offset_ok", "judge_logp"}


def test_offsets_has_17_entries_nan_when_too_short(trained, judge_utts):
    judge = Judge.load(trained[0])
    u = max(judge_utts, key=lambda u: u.frames)
    r = judge.offsets(u.features, u.lm3d)
    assert r.shape == (17,) and np.isfinite(r).all()
    assert np.logaddexp.reduce(r) <= 0.0  # mean log-probabilities
    short = judge.offsets(u.features[:10], u.lm3d[:10])
    assert short.shape == (17,) and np.isnan(short).all()
    with pytest.raises(ValueError, match="wide"):
        judge.offsets(u.features[:, :5], u.lm3d)


def test_judge_json_records_version_and_provenance(trained, judge_corpus):
    out, result = trained
    meta = json.loads((out / META).read_text())
    assert meta["version"] == result["version"] and len(meta["version"]) == 12
    assert meta["seed"] == 1 and meta["config"]["audio_window"] == 5
    corpus = meta["corpus"]
    assert corpus["manifest_seed"] == JUDGE_SEED
    speakers = json.loads((judge_corpus / "speakers.json").read_text())
    assert set(corpus["speakers"]) == {s["id"] for s in speakers}
    assert len(corpus["identity_hash"]) == 16


def test_tampered_weights_are_refused(trained, tmp_path):
    copy = tmp_path / "judge"
    shutil.copytree(trained[0], copy)
    data = bytearray((copy / WEIGHTS).read_bytes())
    data[-3] ^= 0x01  # one bit of the last weight
    (copy / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="modified or replaced"):
        Judge.load(copy)


def test_check_disjoint(trained, judge_corpus, tiny_corpus, tmp_path):
    judge_dir = trained[0]
    with pytest.raises(ValueError, match="same seed"):
        check_disjoint(judge_dir, judge_corpus)
    summary = check_disjoint(judge_dir, tiny_corpus)  # seed 3: other speakers
    assert summary["shared_speakers"] == 0 and summary["corpus_seed"] == 3
    # same speakers under another manifest seed: caught by the identity vectors
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("speakers.json", "utterances.jsonl"):
        shutil.copy(judge_corpus / name, clone / name)
    manifest = json.loads((judge_corpus / "synthtalk.json").read_text())
    (clone / "synthtalk.json").write_text(json.dumps({**manifest, "seed": 99}))
    with pytest.raises(ValueError, match="shares"):
        check_disjoint(judge_dir, clone)


@pytest.mark.slow
def test_train_and_eval_commands(trained, judge_corpus, tiny_corpus, cache, tmp_path,
                                 monkeypatch, capsys):  # fmt: skip
    monkeypatch.setenv("TALKINGFACE_CACHE_DIR", str(cache))  # features extracted above
    out = tmp_path / "judge"
    argv = ["train", "judge", "--data", str(judge_corpus), "--out", str(out)]
    assert main([*argv, "--preset", "tiny", "--seed", "1", "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # the report alone: logs go to stderr
    assert report["version"] == trained[1]["version"]  # same data + seed -> same judge
    assert report["training"]["loss_last"] < report["training"]["loss_first"]
    assert main([*argv, "--preset", "tiny", "--quiet", "--json"]) == 2  # frozen: no overwrite
    assert "already holds a judge" in capsys.readouterr().err

    argv = ["eval", "judge", "--judge", str(out), "--quiet", "--json"]
    assert main([*argv, "--data", str(tiny_corpus)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["version"] == report["version"] and result["disjoint"]["corpus_seed"] == 3
    assert result["utterances"] > 0 and "offset_accuracy" in result
    assert set(result["shifted"]) == {"0", "2", "4", "8"}
    assert main([*argv, "--data", str(judge_corpus)]) == 2
    assert "same seed" in capsys.readouterr().err
    assert main(["eval", "judge", "--data", str(tiny_corpus), "--json"]) == 2
    assert "--judge" in capsys.readouterr().err
