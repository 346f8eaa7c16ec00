"""The renderer's compiled CPU kernels (`csrc/`), built on first use and cached.

`compiled()` is one module holding the fused CPU hash-grid lookup and backward
(`csrc/hashgrid.cpp`: `forward`, `backward`) and the inference march's sample selection
(`csrc/march.cpp`: `occupied_samples`), compiled
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
import hashlib
import importlib.util
import logging
import os
import threading
import time
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

ENV = "TALKINGFACE_CPU_KERNELS"
SOURCES = Path(__file__).parent / "csrc"
_lock = threading.Lock()


def enabled() -> bool:
    """Whether the compiled kernels may be used (`TALKINGFACE_CPU_KERNELS` is not 0)."""
    return os.environ.get(ENV, "1").strip() not in ("0", "false", "no", "off")


NAME = "talkingface_hashgrid"
CFLAGS = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=off"]
"""-fopenmp: `at::parallel_for` in the kernel is ATen's OpenMP template, compiled into the
kernel itself; without the flag it runs its tasks one after another on the calling thread.
-ffp-contract=off: no fused multiply-adds, so the march's float expressions round as torch's
do (the same samples are kept)."""
LDFLAGS = ["-fopenmp"]
STALE_LOCK_S = 600.0
"""A build lock older than this is left by a process killed while building (a build takes
one or two minutes): removed, or every later process would wait on it for ever."""


def _sources() -> list[Path]:
    return sorted(SOURCES.glob("*.cpp"))


def _stamp() -> str:
    """What the built library must have been built from: the sources, torch, the flags."""
    import torch

    digest = hashlib.sha256()
    for source in _sources():
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    digest.update(f"{torch.__version__}|{' '.join(CFLAGS)}|{' '.join(LDFLAGS)}".encode())
    return digest.hexdigest()


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _build() -> ModuleType | None:
    try:
        from torch.utils.cpp_extension import _get_build_directory, load

        build = Path(_get_build_directory(NAME, verbose=False))
        library, stamp, want = build / f"{NAME}.so", build / "talkingface.stamp", _stamp()
        # Built before from the same source: import it as is, with no lock, compiler or ninja
        # (torch's loader takes its build lock and runs ninja even when nothing changed).
        if library.is_file() and stamp.is_file() and stamp.read_text() == want:
            return _import(library)
        lock = build / "lock"
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            logger.warning("removing a stale build lock %s (a build was killed midway)", lock)
            lock.unlink(missing_ok=True)
        module = load(name=NAME, sources=[str(path) for path in _sources()], extra_cflags=CFLAGS,
                      extra_ldflags=LDFLAGS, verbose=False)  # fmt: skip
        stamp.write_text(want)
        return module
    except Exception as exc:  # no compiler, no ninja, a failed build: the torch path serves
        why = str(exc).splitlines()[0] if str(exc) else ""
        logger.warning(
            "the CPU kernels could not be built (%s: %s); using the pure-PyTorch hash-grid "
            "lookup and sample selection (slower, same results)",
            type(exc).__name__,
            why,
        )
        return None


def compiled() -> ModuleType | None:
    """The compiled module (`forward`, `backward`, `occupied_samples`), or None where it
    cannot be used (see the module docstring)."""
    if not enabled():
        return None
    with _lock:  # one build per process, whichever thread asks first
        return _build()


def main() -> int:
    """`python -m talkingface.render.kernels`: build (or load) the kernels; say which."""
    import time

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    started = time.perf_counter()
    module = compiled()
    seconds = time.perf_counter() - started
    if module is None:
        why = "switched off" if not enabled() else "not buildable here"
        print(f"kernels: CPU kernels {why}; the renderer uses pure PyTorch")
    else:
        print(f"kernels: CPU kernels ready ({seconds:.1f} s, {module.__file__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
