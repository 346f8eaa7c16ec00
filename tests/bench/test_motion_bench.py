"""The motion benchmark runs and reports what its JSON promises (figures not asserted)."""

import json

import torch

from talkingface.bench import motion


def test_report_shape():
    threads = torch.get_num_threads()
    report = motion.run(
        presets=("tiny",),
        seconds=(1.0,),
        long_seconds=4.0,
        long_presets=("tiny",),
        hubert_dim=24,
        hubert_presets=("tiny",),
        repeats=1,
        devices=("cpu",),
        threads=1,
    )
    assert report["torch_threads"] == 1 and torch.get_num_threads() == threads  # restored
    json.dumps(report)  # the CLI prints it as JSON
    assert report["bench"] == "motion" and report["device"] == "cpu"
    assert report["weights"] == "random-init"
    assert report["devices"]["cpu"] and report["torch"]
    rows = report["results"]
    # 2 widths x 2 lengths x postnet off/on
    assert len(rows) == 8
    assert {(r["feature_dim"], r["audio_seconds"], r["postnet"]) for r in rows} == {
        (d, s, p) for d in (80, 24) for s in (1.0, 4.0) for p in (False, True)
    }
    for r in rows:
        assert r["preset"] == "tiny" and r["device"] == "cpu"
        assert r["frames"] == round(r["audio_seconds"] * 25)
        assert r["ms_total"] > 0 and r["ms_per_audio_second"] > 0 and r["ms_min"] > 0
        assert r["params"] > 0 and r["windows"] >= 1
    by_key = {(r["feature_dim"], r["audio_seconds"], r["postnet"]): r for r in rows}
    assert by_key[(80, 4.0, True)]["params"] > by_key[(80, 4.0, False)]["params"]
    # the tiny preset's windows (96 frames once widened to its receptive field): 4 s takes two
    assert by_key[(80, 4.0, False)]["windows"] > 1 and by_key[(80, 1.0, False)]["windows"] == 1
