"""Settings from the environment: parsing, fail-fast validation, docs kept in sync."""

from pathlib import Path

import pytest

from talkingface.config import ConfigError, Settings, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_without_environment():
    settings = Settings.from_env({})
    assert settings.store == "local"
    assert settings.grpc_port == 50051
    assert settings.redis_url == ""


def test_values_are_parsed_by_type():
    settings = Settings.from_env(
        {
            "TALKINGFACE_GRPC_PORT": "7000",
            "TALKINGFACE_SHUTDOWN_GRACE_S": "2.5",
            "TALKINGFACE_MINIO_SECURE": "true",
            "TALKINGFACE_LOG_LEVEL": "debug",
            "TALKINGFACE_STORE_DIR": "/tmp/tf-store",
        }
    )
    assert settings.grpc_port == 7000
    assert settings.shutdown_grace_s == 2.5
    assert settings.minio_secure is True
    assert settings.log_level == "DEBUG"
    assert settings.store_dir == Path("/tmp/tf-store")


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        Settings.from_env(
            {
                "TALKINGFACE_GRPC_PORT": "fifty",
                "TALKINGFACE_STORE": "s3",
                "TALKINGFACE_MINIO_SECURE": "maybe",
            }
        )
    text = str(err.value)
    assert "TALKINGFACE_GRPC_PORT='fifty'" in text
    assert "TALKINGFACE_STORE='s3'" in text
    assert "TALKINGFACE_MINIO_SECURE='maybe'" in text


def test_minio_store_requires_its_endpoint_and_keys():
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"TALKINGFACE_STORE": "minio", "TALKINGFACE_MINIO_ENDPOINT": "h:9000"})
    assert "TALKINGFACE_MINIO_ACCESS_KEY is required" in str(err.value)
    assert "TALKINGFACE_MINIO_ENDPOINT" not in str(err.value)


def test_require_fails_fast_for_a_component():
    settings = Settings.from_env({})
    with pytest.raises(ConfigError, match=r"(?s)broker cannot start.*TALKINGFACE_REDIS_URL"):
        settings.require("redis_url", by="broker")
    alias = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert alias.require("redis_url", by="broker").redis_url == "redis://127.0.0.1:1/0"


def test_secrets_are_masked():
    settings = Settings.from_env(
        {"TALKINGFACE_MINIO_SECRET_KEY": "hunter2", "TALKINGFACE_REDIS_URL": "redis://:pw@h/0"}
    )
    redacted = settings.redacted()
    assert redacted["minio_secret_key"] == "***"
    assert redacted["redis_url"] == "***"
    assert "hunter2" not in str(redacted)


def test_configuration_doc_lists_every_setting():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert markdown_table() in doc, (
        "docs/configuration.md is stale: run talkingface config --markdown"
    )
