"""The renderer's compiled CPU kernels (`csrc/`), built on first use and cached.

`hashgrid()` is the fused CPU hash-grid lookup and backward (`csrc/hashgrid.cpp`), compiled
with `torch.utils.cpp_extension` into the user's torch extension cache
(`$TORCH_EXTENSIONS_DIR`, by default `~/.cache/torch_extensions`) the first time a process
asks for it — about a minute once per machine and torch version, then a load of the cached
library. It needs a C++20 compiler (g++ ≥ 11) and ninja (a Python dependency). Where the
build fails, or `TALKINGFACE_CPU_KERNELS=0`, it is None and the hash grid uses its
pure-PyTorch lookup, the reference the kernel is tested against: same table layout, same
weights files, the same numbers to float rounding.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

ENV = "TALKINGFACE_CPU_KERNELS"
SOURCES = Path(__file__).parent / "csrc"
_lock = threading.Lock()


def enabled() -> bool:
    """Whether the compiled kernels may be used (`TALKINGFACE_CPU_KERNELS` is not 0)."""
    return os.environ.get(ENV, "1").strip() not in ("0", "false", "no", "off")


@functools.cache
def _build_hashgrid() -> ModuleType | None:
    try:
        from torch.utils.cpp_extension import load

        return load(
            name="talkingface_hashgrid",
            sources=[str(SOURCES / "hashgrid.cpp")],
            extra_cflags=["-O3", "-std=c++20"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, a failed build: the torch path serves
        logger.warning(
            "the CPU hash-grid kernel could not be built (%s: %s); using the pure-PyTorch "
            "lookup (slower, same results)", type(exc).__name__, str(exc).splitlines()[0]
            if str(exc) else "")  # fmt: skip
        return None


def hashgrid() -> ModuleType | None:
    """The compiled hash-grid module (`forward`, `backward`), or None where it cannot be
    used (see the module docstring)."""
    if not enabled():
        return None
    with _lock:  # one build per process, whichever thread asks first
        return _build_hashgrid()


def main() -> int:
    """`python -m talkingface.render.kernels`: build (or load) the kernels; say which."""
    import time

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    started = time.perf_counter()
    module = hashgrid()
    seconds = time.perf_counter() - started
    if module is None:
        why = "switched off" if not enabled() else "not buildable here"
        print(f"kernels: hash grid {why}; the renderer uses pure PyTorch")
    else:
        print(f"kernels: hash grid ready ({seconds:.1f} s, {module.__file__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
