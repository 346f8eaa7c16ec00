"""An avatar-training job: an uploaded video or SynthTalk avatar directory -> trained bundle,
published.

`TrainAvatarHandler` is the worker handler of the `train` queue. The job's request (written
by the broker's CreateAvatar) names the upload (a person's talking video, or a tar of a
SynthTalk avatar directory as `talkingface synth avatar` writes it), the avatar id the broker
registered and the training preset. Steps: PREPROCESS (a video: `talkingface avatar ingest`,
decoding in the sandbox, VIDEO_* codes for bad videos; a tar: fetch it, unpack it safely,
check it is a SynthTalk avatar),
TRAIN (`talkingface train avatar`: renderer, projection index and, when the fleet's motion
checkpoint is a local CKPT_DIR/motion, the avatar's postnet), PUBLISH (a new immutable
version under `avatars/<avatar_id>/`, manifest last). Training reports progress after every
step through the heartbeat, which also stops it at once when the job is cancelled.

Unpacking refuses anything but plain files and directories inside the target (tarfile's
`data` filter: no absolute paths, no `..`, no links out, no devices); a tar that is not a
SynthTalk avatar fails the job with INVALID_REQUEST, without retries. The tar (plain or
compressed) is read as a stream twice: first only its headers, summing the members' sizes and
counting them, and refused (INVALID_REQUEST) as soon as either passes
TALKINGFACE_TRAIN_TAR_MAX_MB or TALKINGFACE_TRAIN_TAR_MAX_MEMBERS, before one byte is unpacked
(a gzip bomb costs its decompression up to the cap, never disk); only then is it unpacked.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import gzip
import logging
import lzma
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from talkingface.broker.avatars import AvatarRegistry
from talkingface.broker.jobs import Job
from talkingface.broker.queue import Delivery
from talkingface.broker.worker import Heartbeat
from talkingface.config import Settings, env_name
from talkingface.errors import TalkingFaceError
from talkingface.storage import ObjectStore, StoreError
from talkingface.storage.errors import as_talkingface_error

log = logging.getLogger(__name__)


_MAGIC = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))
_STREAM_BUFFER = 1 << 20


@contextlib.contextmanager
def _tar_stream(archive: Path) -> Iterator[tarfile.TarFile]:
    """The tar (plain, .gz, .bz2 or .xz) as a forward-only stream, decompressed in bounded
    pieces (tarfile's own `r|*` re-slices a growing buffer: minutes for a few GiB)."""
    with archive.open("rb") as raw:
        head = raw.read(6)
    opener = next((o for magic, o in _MAGIC if head.startswith(magic)), None)
    with (
        (opener or open)(archive, "rb") as plain,
        tarfile.open(fileobj=plain, mode="r|", bufsize=_STREAM_BUFFER) as tar,
    ):
        yield tar


def check_tar(archive: Path, max_bytes: int, max_members: int) -> None:
    """INVALID_REQUEST unless the tar's members sum to at most `max_bytes` unpacked and are at
    most `max_members`; reads the stream (headers, skipping the data), writes nothing."""
    total = members = 0
    with _tar_stream(archive) as tar:
        for member in tar:
            members += 1
            if members > max_members:
                raise TalkingFaceError(
                    "INVALID_REQUEST",
                    f"the tar holds over {max_members} entries "
                    f"({env_name('train_tar_max_members')})",
                )
            if member.issparse():
                raise TalkingFaceError("INVALID_REQUEST", "the tar holds a sparse file")
            total += max(member.size, 0)
            if total > max_bytes:
                raise TalkingFaceError(
                    "INVALID_REQUEST",
                    f"the tar unpacks to over {max_bytes // (1024 * 1024)} MiB "
                    f"({env_name('train_tar_max_mb')})",
                )


def unpack_tar(archive: Path, target: Path, max_bytes: int, max_members: int) -> None:
    """Check the tar (check_tar), then unpack it under `target` with tarfile's `data` filter;
    INVALID_REQUEST for a tar over the caps or not readable."""
    try:
        check_tar(archive, max_bytes, max_members)
        with _tar_stream(archive) as tar:
            for member in tar:
                tar.extract(member, target, filter="data")
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise TalkingFaceError(
            "INVALID_REQUEST", f"the upload is not a usable tar archive: {exc}"
        ) from None


class TrainAvatarHandler:
    """Handler of `train_avatar` jobs (see the module docstring)."""

    def __init__(self, store: ObjectStore, settings: Settings, registry: AvatarRegistry) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry
        self.beat_s = min(max(settings.queue_lease_seconds / 4, 0.05), 5.0)

    def __call__(self, job: Job, delivery: Delivery, heartbeat: Heartbeat) -> dict[str, Any]:
        from talkingface.render.commands import train_avatar

        request = job.request
        avatar_id = request["avatar_id"]
        # Idempotent: the broker claimed it already unless it died right after queueing.
        self.registry.claim(job.tenant, request.get("display_name", ""), job.job_id, avatar_id)
        heartbeat(stage="PREPROCESS", progress=0.0)
        source = request.get("source", "synthtalk")
        if source == "bundle":
            return self._import(request, heartbeat)
        start = 0.3 if source == "video" else 0.05  # training's share of the progress
        last = [0.0, ""]

        def beat(stage: str, progress: float) -> None:  # at most every beat_s within a stage
            now = time.monotonic()
            if stage != last[1] or now - last[0] >= self.beat_s:
                last[0], last[1] = now, stage
                heartbeat(stage=stage, progress=round(progress, 4))

        def on_progress(stage: str, fraction: float) -> None:  # training
            beat(stage, start + (1 - start) * fraction)

        def on_ingest(step: str, fraction: float) -> None:  # a video's preprocessing
            beat("PREPROCESS", start * fraction)

        with tempfile.TemporaryDirectory(prefix="talkingface-train-") as tmp:
            if source == "video":
                root = self._ingest(request["data_key"], Path(tmp), on_ingest)
            else:
                root = self._unpack(request["data_key"], Path(tmp) / "data")
            heartbeat(stage="TRAIN", progress=start)
            args = argparse.Namespace(
                data=root, out=Path(tmp) / "bundle", preset=request.get("preset") or "cpu",
                steps=request.get("steps"), seed=int(request.get("seed", 0)), quiet=True,
                ckpt=self._motion_ckpt(), publish=avatar_id, no_pitch=False,
            )  # fmt: skip
            try:
                report = train_avatar(args, self.settings, self.settings.device, on_progress)
            except (ValueError, FileNotFoundError) as exc:
                raise TalkingFaceError(
                    "INVALID_REQUEST", f"cannot train this avatar: {exc}"
                ) from None
        published = report["published"]
        metrics = dict(report["renderer"])
        metrics.pop("backend", None)
        if "postnet" in report:
            metrics["postnet"] = 1.0
        return {"avatar_id": avatar_id, "version": published["version"], "metrics": metrics}

    def _import(self, request: dict[str, Any], heartbeat: Heartbeat) -> dict[str, Any]:
        """A bundle trained elsewhere: unpack, check that its renderer loads here, publish."""
        from talkingface.bundle import avatar_prefix
        from talkingface.render import checkpoint as rck
        from talkingface.render.bundle import check_track
        from talkingface.render.commands import bundle_files

        avatar_id = request["avatar_id"]
        with tempfile.TemporaryDirectory(prefix="talkingface-import-") as tmp:
            root = self._extract(request["data_key"], Path(tmp) / "data", rck.RENDERER_DIR,
                                 "avatar bundle")  # fmt: skip
            try:
                files = bundle_files(root)
                renderer, track = rck.load_renderer(root / rck.RENDERER_DIR, "cpu")
                check_track(renderer, track)
            except Exception as exc:  # missing files, safetensors, shapes, json
                raise TalkingFaceError(
                    "AVATAR_BUNDLE_CORRUPT", f"the bundle does not load: {type(exc).__name__}"
                ) from None
            heartbeat(stage="PUBLISH", progress=0.9)
            try:
                published = self.store.publish_version(
                    avatar_prefix(avatar_id), files, metadata={"imported": True}
                )
            except StoreError as exc:
                raise as_talkingface_error(exc) from None
        return {"avatar_id": avatar_id, "version": published.version, "metrics": {}}

    def _ingest(self, key: str, tmp: Path, progress) -> Path:
        """The uploaded video ingested into an avatar directory under `tmp`."""
        from talkingface.face.ingest import ingest

        video = tmp / "upload.video"
        try:
            self.store.download(key, video)
        except StoreError as exc:
            raise as_talkingface_error(exc) from None
        root = tmp / "data"
        ingest(video, root, min_seconds=self.settings.video_min_seconds,
               max_seconds=self.settings.video_max_seconds, progress=progress)  # fmt: skip
        video.unlink()
        return root

    def _unpack(self, key: str, target: Path) -> Path:
        """The SynthTalk avatar directory inside the uploaded tar, unpacked under `target`."""
        from talkingface.data.synthtalk import fileformat as ff

        root = self._extract(key, target, ff.MANIFEST, "SynthTalk avatar")
        try:
            ff.read_manifest(root, ff.AVATAR)
        except (ValueError, OSError) as exc:
            raise TalkingFaceError("INVALID_REQUEST", f"not a SynthTalk avatar: {exc}") from None
        return root

    def _extract(self, key: str, target: Path, marker: str, what: str) -> Path:
        """The uploaded tar, fetched and unpacked safely under `target`; the folder holding
        `marker` (the top or one folder in it), INVALID_REQUEST when none does."""
        target.mkdir(parents=True)
        archive = target.parent / "upload.tar"
        try:
            self.store.download(key, archive)
        except StoreError as exc:
            raise as_talkingface_error(exc) from None
        try:
            unpack_tar(archive, target, self.settings.train_tar_max_mb * 1024 * 1024,
                       self.settings.train_tar_max_members)  # fmt: skip
        finally:
            archive.unlink()
        for root in [target, *(p for p in target.iterdir() if p.is_dir())]:
            if (root / marker).exists():
                return root
        raise TalkingFaceError(
            "INVALID_REQUEST", f"the tar holds no {what} ({marker} at its top or in one folder)"
        )

    def _motion_ckpt(self) -> Path | None:
        """CKPT_DIR for the postnet when the fleet's motion checkpoint is a local
        CKPT_DIR/motion beside its sync expert; None (no postnet) otherwise."""
        setting = self.settings.motion_checkpoint
        if not setting or setting.startswith("store:"):
            return None
        motion = Path(setting)
        if motion.name == "motion" and (motion.parent / "syncnet").is_dir():
            return motion.parent
        log.info("no postnet for new avatars: %s is not CKPT_DIR/motion", setting)
        return None
