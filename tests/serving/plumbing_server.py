"""A plumbing-only talkingface server for tests: Info + health + reflection + metrics.

Run as a subprocess by test_server.py. Its warm-up waits until the file named by argv[1]
exists, so the test controls when the server becomes ready; argv[2] is the server kind
(`threads` or `asyncio`); settings come from the environment exactly as in a service.
"""

import sys
import time
from pathlib import Path

from talkingface.config import Settings
from talkingface.logs import configure_logging
from talkingface.serving.server import ServiceServer


def main() -> None:
    ready_file = Path(sys.argv[1])
    settings = Settings.from_env()
    configure_logging("plumbing", settings.log_level, settings.log_format)

    def warmup() -> None:
        while not ready_file.exists():
            time.sleep(0.05)

    kind = sys.argv[2] if len(sys.argv) > 2 else "threads"
    ServiceServer("plumbing", [], settings, warmup=warmup,
                  asyncio=kind == "asyncio").serve_forever()  # fmt: skip


if __name__ == "__main__":
    main()
