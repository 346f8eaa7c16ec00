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
    assert "FROM ${BASE_IMAGE}" in dockerfile
    assert f'ENTRYPOINT ["talkingface", "serve", "{service}"]' in dockerfile


def test_base_image_copies_what_exists():
    dockerfile = (ROOT / "services" / "base" / "Dockerfile").read_text()
    sources = re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.M)
    assert sources
    for source in sources:
        for path in source.split():
            assert (ROOT / path).exists(), f"base/Dockerfile copies missing {path}"
