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
        # The training path's march, timed beside it on the same frames.
        reference = entry["reference"]
        assert _positive(reference["frames_per_second"]) and _positive(entry["speedup"])
        assert entry["samples_per_ray"] <= reference["samples_per_ray"]
        assert 0 <= entry["max_pixel_difference"] <= 2 * 1e-3 + 1e-5  # both within the stop T
    # The same frames and weights: the work done does not depend on the batch.
    assert entries["batch_1"]["samples_per_ray"] == entries["batch_2"]["samples_per_ray"]


def test_a_trained_bundle_on_its_held_out_frames(tiny_bundle, tiny_avatar):
    report = render.run(batch=2, frames=2, repeats=1, threads=1, bundle=tiny_bundle,
                        data=tiny_avatar)  # fmt: skip
    json.dumps(report)
    assert report["weights"] == str(tiny_bundle) and report["preset"] == "tiny"
    entries = report["cpu"]["32"]
    assert set(entries) == {"batch_1", "batch_2"}
    for entry in entries.values():
        assert _positive(entry["frames_per_second"]) and entry["frames"] == 2
        assert 5 < entry["psnr_head"] < 60 and 5 < entry["reference"]["psnr_head"] < 60
        assert abs(entry["psnr_head"] - entry["reference"]["psnr_head"]) < 0.1
        assert entry["samples_per_ray"] <= entry["reference"]["samples_per_ray"]


def test_bundle_needs_its_avatar(tiny_bundle):
    import pytest

    with pytest.raises(ValueError, match="--data"):
        render.run(bundle=tiny_bundle)


def test_against_another_bundle_of_the_avatar(tiny_bundle, tiny_avatar):
    # The reference path on the --against bundle: here the same weights, so its figures are
    # those of the bundle's own reference path, and the two renderers still alternate.
    report = render.run(batch=1, frames=2, repeats=1, threads=1, bundle=tiny_bundle,
                        data=tiny_avatar, against=tiny_bundle)  # fmt: skip
    json.dumps(report)
    assert report["against"] == str(tiny_bundle) and report["against_preset"] == "tiny"
    entry = report["cpu"]["32"]["batch_1"]
    assert "max_pixel_difference" not in entry  # two models: no pixel difference reported
    own = render.run(batch=1, frames=2, repeats=1, threads=1, bundle=tiny_bundle,
                     data=tiny_avatar)["cpu"]["32"]["batch_1"]  # fmt: skip
    assert entry["reference"]["psnr_head"] == own["reference"]["psnr_head"]
    assert entry["reference"]["samples_per_ray"] == own["reference"]["samples_per_ray"]
    assert entry["psnr_head"] == own["psnr_head"]


def test_against_needs_a_bundle(tiny_bundle, tiny_avatar):
    import pytest

    with pytest.raises(ValueError, match="--against needs --bundle"):
        render.run(against=tiny_bundle)


def test_cli_reports_a_bad_pairing(capsys):
    from talkingface.cli import main

    assert main(["bench", "render", "--bundle", "x"]) == 2
    assert "--data" in capsys.readouterr().err
