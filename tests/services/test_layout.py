"""Every fleet service has its folder, notes and an image that runs the matching command."""

import re
from pathlib import Path

import pytest

from talkingface.cli import SERVICES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("service", SERVICES)
def test_service_folder(service):
    folder = ROOT / "services" / service
    assert (folder / "README.md").is_file()
    dockerfile = (folder / "Dockerfile").read_text()
    assert f'ENTRYPOINT ["talkingface", "serve", "{service}"]' in dockerfile
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"{service}/Dockerfile copies missing {path}"
