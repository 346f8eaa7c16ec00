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
version under `avatars/<avatar_id>/`, manifest last, its metadata naming the tenant, display
name and job). Every step runs in a thread while the worker's thread beats every quarter of
the lease (`talkingface.broker.beating`), so no step, however slow or silent, lets the lease
run out; a cancel or a lost lease stops the job within one beat (training at its next step).

A job publishes exactly one version, whatever runs it twice: the version id is the job's own
(`job_version`), a Redis claim (`tf:published:<job_id>`) lets one run publish while the others
wait and return that version without writing anything, and a run that finds its job's version
already published returns it at once, without training again (see `_publish`).

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
import threading
import uuid
import zlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from talkingface.broker.avatars import AvatarRegistry
from talkingface.broker.beating import Beating
from talkingface.broker.jobs import Job
from talkingface.broker.queue import Delivery
from talkingface.broker.worker import Cancelled, Heartbeat, LeaseLost
from talkingface.config import Settings, env_name
from talkingface.errors import TalkingFaceError
from talkingface.storage import ObjectStore, StoreError
from talkingface.storage.errors import StoreObjectNotFound, VersionExists, as_talkingface_error

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


def published_key(job_id: str) -> str:
    """The Redis claim on publishing job `job_id`'s avatar version (see `TrainAvatarHandler`)."""
    return f"tf:published:{job_id}"


def job_version(job: Job) -> str:
    """The version id a job publishes: one per job, the same on every run of it, sortable like
    `versions.new_version_id` (the job's creation time, then its id)."""
    created = datetime.fromtimestamp(job.created_at / 1000, UTC)
    return f"v{created:%Y%m%dT%H%M%SZ}-{job.job_id[:16]}"


# KEYS: the claim; ARGV: our token, ms. Renew our claim; 0 when it is no longer ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: the claim; ARGV: our token. Drop our claim (never another run's).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _Guarded(Mapping[str, Path]):
    """A version's files that stop being handed out once the job stops, so a publish left
    running by a stopped job writes at most one more file."""

    def __init__(self, files: Mapping[str, Path], stopping: threading.Event) -> None:
        self._files = files
        self._stopping = stopping

    def __getitem__(self, name: str) -> Path:
        if self._stopping.is_set():
            raise Cancelled("the job stopped while publishing")
        return self._files[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


class TrainAvatarHandler:
    """Handler of `train_avatar` jobs (see the module docstring)."""

    def __init__(self, store: ObjectStore, settings: Settings, registry: AvatarRegistry) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry
        self.beat_s = min(max(settings.queue_lease_seconds / 4, 0.05), 5.0)
        self.claim_ms = max(int(settings.queue_lease_seconds * 1000), 100)
        self._renew = registry.redis.register_script(_RENEW)
        self._release = registry.redis.register_script(_RELEASE)

    def __call__(self, job: Job, delivery: Delivery, heartbeat: Heartbeat) -> dict[str, Any]:
        from talkingface.bundle import avatar_prefix
        from talkingface.render.commands import bundle_files, train_avatar

        request = job.request
        avatar_id = request["avatar_id"]
        # Idempotent: the broker claimed it already unless it died right after queueing.
        self.registry.claim(job.tenant, request.get("display_name", ""), job.job_id, avatar_id)
        heartbeat(stage="PREPROCESS", progress=0.0)
        prefix = avatar_prefix(avatar_id)  # a bad id fails now, not after training
        done = self._published(job, prefix)
        if done is not None:  # an earlier run of this job published it: nothing to redo
            return done
        phase = Beating(heartbeat, self.beat_s)
        source = request.get("source", "synthtalk")
        if source == "bundle":
            return self._import(job, prefix, phase)
        start = 0.3 if source == "video" else 0.05  # training's share of the progress

        def on_progress(stage: str, fraction: float) -> None:  # training, in its thread
            phase.report(stage, start + (1 - start) * fraction)

        def on_ingest(step: str, fraction: float) -> None:  # a video's preprocessing
            phase.report("PREPROCESS", start * fraction)

        with tempfile.TemporaryDirectory(
            prefix="talkingface-train-", ignore_cleanup_errors=True
        ) as tmp:
            if source == "video":
                root = phase.run(
                    lambda: self._ingest(request["data_key"], Path(tmp), on_ingest), "PREPROCESS"
                )
            else:
                root = phase.run(
                    lambda: self._unpack(request["data_key"], Path(tmp) / "data"), "PREPROCESS"
                )
            args = argparse.Namespace(
                data=root, out=Path(tmp) / "bundle", preset=request.get("preset") or "cpu",
                steps=request.get("steps"), seed=int(request.get("seed", 0)), quiet=True,
                ckpt=self._motion_ckpt(), publish=None, no_pitch=False,
            )  # fmt: skip
            try:  # renderer, evaluation, index, postnet: some without progress of their own
                report = phase.run(
                    lambda: train_avatar(args, self.settings, self.settings.device, on_progress),
                    "TRAIN", start,
                )  # fmt: skip
                files = bundle_files(args.out)
            except (ValueError, FileNotFoundError) as exc:
                raise TalkingFaceError(
                    "INVALID_REQUEST", f"cannot train this avatar: {exc}"
                ) from None
            metadata = {"renderer": report["renderer"], **self._owner(job)}
            return self._publish(job, prefix, files, metadata, phase)

    def _import(self, job: Job, prefix: str, phase: Beating) -> dict[str, Any]:
        """A bundle trained elsewhere: unpack, check that its renderer loads here, publish."""
        from talkingface.render import checkpoint as rck
        from talkingface.render.bundle import check_track
        from talkingface.render.commands import bundle_files

        def check(root: Path) -> dict[str, Path]:
            try:
                files = bundle_files(root)
                renderer, track = rck.load_renderer(root / rck.RENDERER_DIR, "cpu")
                check_track(renderer, track)
            except Exception as exc:  # missing files, safetensors, shapes, json
                raise TalkingFaceError(
                    "AVATAR_BUNDLE_CORRUPT", f"the bundle does not load: {type(exc).__name__}"
                ) from None
            return files

        with tempfile.TemporaryDirectory(
            prefix="talkingface-import-", ignore_cleanup_errors=True
        ) as tmp:
            root = phase.run(
                lambda: self._extract(job.request["data_key"], Path(tmp) / "data",
                                      rck.RENDERER_DIR, "avatar bundle"),
                "PREPROCESS",
            )  # fmt: skip
            files = phase.run(lambda: check(root), "PREPROCESS", 0.5)
            metadata = {"imported": True, **self._owner(job)}
            return self._publish(job, prefix, files, metadata, phase, progress=0.9)

    # --- publishing: once per job ------------------------------------------------------------

    @staticmethod
    def _owner(job: Job) -> dict[str, Any]:
        """What the manifest says of the avatar's owner, so the registry can be rebuilt from
        the store (`AvatarRegistry.rebuild_from_store` reads `tenant` and `display_name`)."""
        return {
            "tenant": job.tenant,
            "display_name": job.request.get("display_name", ""),
            "job_id": job.job_id,
        }

    def _published(self, job: Job, prefix: str) -> dict[str, Any] | None:
        """The result of the version this job already published, or None when it has none:
        the claim's version once final, else the job's own version id if it is in the store."""
        claimed = self.registry.redis.get(published_key(job.job_id))
        claimed = claimed.decode() if isinstance(claimed, bytes) else claimed
        version = claimed if claimed and " " not in claimed else job_version(job)
        try:
            manifest = self.store.read_manifest(prefix, version)
        except StoreObjectNotFound:
            return None
        except StoreError as exc:
            raise as_talkingface_error(exc) from None
        return self._result(job, version, manifest)

    @staticmethod
    def _result(job: Job, version: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """The job's result for a published version (its metrics from the manifest)."""
        metadata = manifest.get("metadata") or {}
        metrics = {k: v for k, v in dict(metadata.get("renderer") or {}).items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
        trained = "renderer" in metadata  # an imported bundle's result has no metrics
        if trained and any(name.startswith("postnet/") for name in manifest.get("files", {})):
            metrics["postnet"] = 1.0
        return {"avatar_id": job.request["avatar_id"], "version": version, "metrics": metrics}

    def _publish(
        self,
        job: Job,
        prefix: str,
        files: Mapping[str, Path],
        metadata: dict[str, Any],
        phase: Beating,
        progress: float = 0.97,
    ) -> dict[str, Any]:
        """Publish the bundle as the job's one version; its result.

        Of the runs of one job (a redelivery, a worker that lost its lease and has not noticed
        yet) one publishes: it holds the claim `tf:published:<job_id>` ("<version> <token>",
        renewed at every beat, expiring after one lease when its holder stops) while it
        writes, then leaves the version there for the job's TTL. Another run waits while a
        claim is held and returns the version once it is final, writing nothing; one that
        finds the claim expired (its holder died) takes it over. The version id is the job's
        own (`job_version`), so even a run that got past the claim cannot add a second
        version: the store refuses it (VersionExists) and that run returns the version too.
        """
        key = published_key(job.job_id)
        version = job_version(job)
        token = f"{version} {uuid.uuid4().hex}"
        client = self.registry.redis
        phase.report("PUBLISH", progress)
        while not client.set(key, token, nx=True, px=self.claim_ms):
            current = client.get(key)
            current = current.decode() if isinstance(current, bytes) else current
            if current is None:  # ran out between the two calls
                continue
            if " " not in current:  # published by another run
                done = self._published(job, prefix)
                if done is not None:
                    return done
                client.delete(key)  # names a version that is not there: claim again
                continue
            phase.wait(self.beat_s)  # another run is publishing; its claim ends either way

        def renew() -> None:
            if not self._renew(keys=[key], args=[token, self.claim_ms]):
                raise LeaseLost(f"job {job.job_id}: the claim on publishing was taken over")

        guarded = _Guarded(files, phase.stopping)
        try:
            published = phase.run(
                lambda: self.store.publish_version(prefix, guarded, metadata, version),
                "PUBLISH", progress, on_beat=renew,
            )  # fmt: skip
            manifest = published.manifest
        except VersionExists:
            manifest = self.store.read_manifest(prefix, version)
        except StoreError as exc:
            self._release(keys=[key], args=[token])
            raise as_talkingface_error(exc) from None
        except (Cancelled, LeaseLost):
            raise  # the claim runs out by itself, after what this run left writing stopped
        except BaseException:
            self._release(keys=[key], args=[token])
            raise
        client.set(key, version, ex=max(int(self.settings.job_ttl_seconds), 1))
        return self._result(job, version, manifest)

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
