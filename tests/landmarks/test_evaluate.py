"""`talkingface eval projection`: paper table 4's structure on a tiny SynthTalk avatar."""

import json

import numpy as np
import pytest

from talkingface.cli import main
from talkingface.landmarks.bundle import avatar_index

pytestmark = pytest.mark.slow


def test_eval_projection_table4(
    tiny_ckpt, tiny_avatar, tiny_corpus, tiny_judge, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("TALKINGFACE_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["eval", "projection", "--data", str(tiny_avatar), "--ckpt", str(tiny_ckpt),
            "--judge", str(tiny_judge)]  # fmt: skip
    assert main([*argv, "--corpus", str(tiny_corpus), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    index = avatar_index(tiny_avatar)
    assert result["index"]["frames"] == len(index.frames)
    assert result["index"]["threshold_mm"] == pytest.approx(index.threshold, abs=1e-4)
    rows = result["table4"]["in_domain"]
    assert rows[0]["name"] == "ground truth"
    assert [r.get("alpha") for r in rows[1:]] == [0.0, 0.5, 1.0]
    truth, *by_alpha = rows
    assert truth["l2_mm"] == 0.0 and truth["mouth_lmd_mm"] == 0.0
    for row in [*rows, *result["table4"]["out_of_domain"]]:
        assert 0.0 <= row["landmark_ood_pct"] <= 100.0 and row["dist_mm"] >= 0.0
        assert "sync_conf" in row  # the tiny checkpoint has a sync expert
        assert "judge_conf" in row  # and the independent judge was given
    assert result["judge"]["version"] and result["judge"]["disjoint"]
    assert "flatters" in result["judges"]["sync_conf"]
    # Projection pulls the prediction toward the training set, monotonically in alpha.
    dists = [r["dist_mm"] for r in by_alpha]
    assert dists[0] > dists[1] > dists[2]
    bad = [r["landmark_ood_pct"] for r in by_alpha]
    assert bad[0] >= bad[1] >= bad[2]
    ood = result["table4"]["out_of_domain"]
    assert [r["alpha"] for r in ood] == [0.0, 0.5, 1.0]
    assert ood[0]["dist_mm"] > ood[2]["dist_mm"]
    assert "l2_mm" not in ood[0]  # no ground truth for OOD audio
    assert result["eval_set"]["ood_language"] == "it" and result["eval_set"]["ood_utterances"] > 0
    assert np.isfinite(by_alpha[1]["mouth_lmd_mm"])


def test_eval_projection_needs_a_checkpoint(tiny_avatar, capsys):
    assert main(["eval", "projection", "--data", str(tiny_avatar)]) == 2
    assert "--ckpt" in capsys.readouterr().err
    assert main(["eval", "projection", "--data", str(tiny_avatar), "--ckpt", ".", "-k", "0"]) == 2
