"""The render benchmark runs and reports what its JSON promises (figures not asserted)."""

import json
import math

import torch

from talkingface.bench import render


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_report_shape():
    threads = torch.get_num_threads()
    report = render.run(sizes=(32,), batch=2, frames=2, repeats=1, devices=("cpu",), threads=1)
    assert report["torch_threads"] == 1 and torch.get_num_threads() == threads  # restored
    json.dumps(report)  # the CLI prints it as JSON
    assert report["bench"] == "render" and report["device"] == "cpu"
    assert report["weights"] == "random-init" and report["preset"] == "cpu"
    assert report["devices"]["cpu"] and report["torch"] and "cuda" not in report
    assert set(report["cpu"]) == {"32"}
    entries = report["cpu"]["32"]
    assert set(entries) == {"batch_1", "batch_2"}
    for name, entry in entries.items():
        assert entry["batch"] == int(name.removeprefix("batch_"))
        assert entry["device"] == "cpu" and entry["backend"] == "torch"
        assert entry["frames"] == 2 and entry["repeats"] == 1
        assert _positive(entry["frames_per_second"]) and _positive(entry["ms_per_frame"])
        assert _positive(entry["samples_per_ray"]) and 0 < entry["occupancy"] < 1
    # The same frames and weights: the work done does not depend on the batch.
    assert entries["batch_1"]["samples_per_ray"] == entries["batch_2"]["samples_per_ray"]
