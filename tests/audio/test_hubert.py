"""HubertFrontEnd on a tiny random HubertModel saved to disk: offline loading, shape,
25 fps alignment, determinism, windowing, and clear errors for bad checkpoints."""

from __future__ import annotations

import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from talkingface.audio import extract, frame_count  # noqa: E402
from talkingface.audio.hubert import HubertFrontEnd  # noqa: E402
from talkingface.errors import TalkingFaceError  # noqa: E402

# Windowed vs single-pass agreement (docs/audio_features.md), per-frame relative L2 error
# ||windowed - single|| / ||single|| for this random model (global attention sees a
# different context in each window, so a trained model's error is a property of it).
FAR_FROM_SEAMS_S = 1.5
MAX_MEAN_REL_FAR = 0.05
MAX_REL_FAR = 0.2
MAX_REL_ANYWHERE = 0.4


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    assert attempts == [], "HubertFrontEnd tried the network"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,  # default kernels (10,3,3,3,3,2,2), strides 5*2^6 = 320
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    path = tmp_path_factory.mktemp("hubert")
    transformers.HubertModel(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def speech50():
    rng = np.random.default_rng(0)
    t = np.arange(50 * 16000) / 16000
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t) ** 2
    audio = envelope * sum(np.sin(k * phase) / k for k in range(1, 8))
    return (0.2 * audio + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_shape_alignment_and_determinism(checkpoint, speech50):
    front = HubertFrontEnd(checkpoint)
    assert front.dim == 32 and front.name == "hubert"
    assert front.stride == 320 and front.field == 400
    audio = speech50[: 3 * 16000 + 123]
    out = front(audio)
    frames = frame_count(len(audio))
    assert out.shape == (frames, 32) and out.dtype == np.float32
    # 25 fps frame i sits at 50 Hz position 2i + 0.375 (centre (i+0.5)*640 vs j*320+200).
    hidden = front.hidden50(audio)
    expected = 0.625 * hidden[0 : 2 * frames : 2] + 0.375 * hidden[1 : 2 * frames : 2]
    n = min(frames, (hidden.shape[0] - 1) // 2)
    np.testing.assert_allclose(out[:n], expected[:n], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out, front(audio))
    np.testing.assert_array_equal(out, HubertFrontEnd(checkpoint)(audio))
    feats = extract(audio, front_end=front)
    assert feats.kind == "hubert" and feats.features.shape == (frames, 32)


def test_short_audio(checkpoint):
    out = HubertFrontEnd(checkpoint)(np.zeros(700, np.float32))
    assert out.shape == (1, 32) and np.all(np.isfinite(out))


def test_windowed_matches_single_pass(checkpoint, speech50):
    windowed = HubertFrontEnd(checkpoint, window_seconds=20.0, overlap_seconds=1.0)
    single = HubertFrontEnd(checkpoint, window_seconds=60.0)
    a, b = windowed(speech50), single(speech50)
    assert a.shape == b.shape == (1250, 32)
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    # Windows start at 0, 19 and 30 s (the last one ends at 50 s).
    edges = np.array([19.0, 20.0, 30.0, 39.0])
    t = (np.arange(len(rel)) + 0.5) / 25
    far = np.min(np.abs(t[:, None] - edges[None]), axis=1) > FAR_FROM_SEAMS_S
    assert rel[far].mean() < MAX_MEAN_REL_FAR
    assert rel[far].max() < MAX_REL_FAR
    assert rel.max() < MAX_REL_ANYWHERE


def test_bad_checkpoints_are_invalid_request(tmp_path):
    cases = [tmp_path / "missing"]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append(empty)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    transformers.HubertConfig(hidden_size=32, num_attention_heads=2).to_json_file(
        no_weights / "config.json"
    )
    cases.append(no_weights)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("{not json")
    cases.append(garbage)
    for path in cases:
        with pytest.raises(TalkingFaceError) as err:
            HubertFrontEnd(path)
        assert err.value.code == "INVALID_REQUEST"
        assert str(path) in err.value.message


def test_configured_checkpoint_is_used_end_to_end(checkpoint, tmp_path, speech50):
    """TALKINGFACE_HUBERT_CHECKPOINT as a directory, and as `store:PREFIX` in the store."""
    from talkingface.audio.features import extract
    from talkingface.audio.servicer import load_front_end
    from talkingface.config import Settings
    from talkingface.storage import LocalStore

    audio = speech50[: 3 * 16000]
    direct = load_front_end(Settings.from_env({"TALKINGFACE_HUBERT_CHECKPOINT": str(checkpoint)}))
    assert direct.name == "hubert" and direct.dim == 32
    result = extract(audio, front_end=direct)
    assert result.kind == "hubert" and result.features.shape == (75, 32)

    store = LocalStore(tmp_path / "store")
    for file in checkpoint.iterdir():
        store.put(f"models/hubert-tiny/{file.name}", file.read_bytes())
    settings = Settings.from_env(
        {
            "TALKINGFACE_HUBERT_CHECKPOINT": "store:models/hubert-tiny",
            "TALKINGFACE_STORE_DIR": str(tmp_path / "store"),
            "TALKINGFACE_CACHE_DIR": str(tmp_path / "cache"),
        }
    )
    from_store = load_front_end(settings)
    np.testing.assert_allclose(from_store(audio), direct(audio), rtol=1e-5, atol=1e-5)
