"""Store failures map to the stable error codes services report."""

import grpc
import pytest

from talkingface.storage import LocalStore, StoreError
from talkingface.storage.errors import as_talkingface_error


@pytest.mark.parametrize(
    ("action", "code", "status"),
    [
        (lambda s: s.get("../etc/passwd"), "STORE_KEY_INVALID", grpc.StatusCode.INVALID_ARGUMENT),
        (lambda s: s.get("missing/key"), "STORE_OBJECT_NOT_FOUND", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_store_errors_become_stable_codes(tmp_path, action, code, status):
    with pytest.raises(StoreError) as raised:
        action(LocalStore(tmp_path))
    error = as_talkingface_error(raised.value)
    assert (error.code, error.status) == (code, status)
