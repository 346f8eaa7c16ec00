"""Settings pick the store implementation; both come back usable."""

from talkingface.config import Settings
from talkingface.storage import LocalStore, MinioStore, store_from_settings


def test_local_store_from_settings(tmp_path):
    settings = Settings.from_env({"TALKINGFACE_STORE_DIR": str(tmp_path / "s")})
    store = store_from_settings(settings)
    assert isinstance(store, LocalStore)
    store.put("uploads/a.bin", b"x")
    assert (tmp_path / "s" / "uploads" / "a.bin").read_bytes() == b"x"


def test_minio_store_from_settings(s3_server):
    settings = Settings.from_env(
        {
            "TALKINGFACE_STORE": "minio",
            "TALKINGFACE_MINIO_ENDPOINT": s3_server.endpoint,
            "TALKINGFACE_MINIO_ACCESS_KEY": s3_server.access_key,
            "TALKINGFACE_MINIO_SECRET_KEY": s3_server.secret_key,
            "TALKINGFACE_MINIO_BUCKET": "factory-test",
            "TALKINGFACE_MINIO_REGION": s3_server.region,
        }
    )
    store = store_from_settings(settings)
    assert isinstance(store, MinioStore) and store.bucket == "factory-test"
    store.put("uploads/a.bin", b"y")
    assert store.get("uploads/a.bin") == b"y"
