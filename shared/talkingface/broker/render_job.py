"""A render job, driven stage by stage: audio -> features -> motion -> projection -> frames
rendered in parallel shards -> one mp4 with the original audio, in the store.

`RenderHandler` is the worker handler (`talkingface.broker.worker.run_once`) of the `render`
queue. The job's request (written by the broker's SubmitRender) names the stored audio, the
avatar version pinned at submission and the options. Each stage is one gRPC call to the
fleet's Ray Serve proxy (`talkingface.broker.stages`); the heartbeat runs while a call is in
flight, so the lease stays renewed and a cancellation is seen within one beat.

Rendering: the frames are cut into shards of TALKINGFACE_RENDER_SHARD_FRAMES (a multiple of
the renderer's batch size, so the renderer's fixed batch boundaries cost no extra frames),
up to TALKINGFACE_RENDER_PARALLEL_SHARDS of them in flight at once; Ray Serve spreads them
over the renderer replicas. Each shard comes back as an H.264 segment in the store; the
segments are stitched in order by remuxing (`media.concat_mp4`: no re-encode) and muxed with
AAC of the original audio. A cancellation or failure cancels the shards in flight.

Each attempt (delivery) of a job has keys of its own: its result goes to
`results/<tenant>/<job_id>/<attempt>/video.mp4` and its intermediate objects (segments,
tensors too big for a message) to `work/<job_id>/<attempt>/`, so two attempts at once (a
lease taken over from a stalled worker) never overwrite or delete each other's objects. Only
the attempt whose outcome the worker records (fenced by its lease) has its result named by the
job; a refused outcome's result is deleted (`discard`).

Resuming: once the projection is done, the attempt stores the projected lm3d and records a
checkpoint on the job (fenced by its lease, like every write): the lm3d's key and sha256, the
frame count and the numbers the result reports; each finished shard adds its segment's key
and sha256. A later attempt of the job (a retry, a takeover after a crash, a hand-back at
shutdown) verifies what the checkpoint names by digest and goes on from there: a job killed
at 90 % resumes at 90 % (`metrics.resumed`, `metrics.reused_shards`). So an attempt leaves its
scratch space when it stops; once the job is final the worker that recorded it removes every
attempt's (`cleanup`), and the janitor sweeps what ended jobs left (`work/<job_id>/`).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from talkingface.broker.beating import Beating
from talkingface.broker.jobs import Job
from talkingface.broker.queue import Delivery
from talkingface.broker.retention import unnamed_results
from talkingface.broker.stages import Scratch, StageClients, job_issuer
from talkingface.broker.worker import Cancelled, HandBack, Heartbeat, LeaseLost
from talkingface.config import Settings
from talkingface.errors import TalkingFaceError
from talkingface.lm3d import FPS
from talkingface.storage import ObjectStore, StoreError
from talkingface.storage.errors import as_talkingface_error
from talkingface.v1 import common_pb2, renderer_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

SAMPLE_RATE = 16000
MP4 = "video/mp4"
POSE_MODES = {
    "pingpong": renderer_pb2.POSE_MODE_PING_PONG,
    "loop": renderer_pb2.POSE_MODE_LOOP,
}
# Share of the job's progress at the start of each stage (render fills 0.12 .. 0.92).
PROGRESS = {
    "AUDIO_FEATURES": 0.0,
    "MOTION": 0.05,
    "LANDMARK_PROJECTION": 0.10,
    "RENDER": 0.12,
    "MUX": 0.92,
}


def result_key(tenant: str, job_id: str, attempt: str) -> str:
    """Where one attempt (`Delivery.attempt_tag`, e.g. `a1`) of a render job stores its mp4."""
    return f"results/{tenant}/{job_id}/{attempt}/video.mp4"


def shard_ranges(frames: int, shard_frames: int, batch_frames: int) -> list[tuple[int, int]]:
    """[start, end) ranges covering `frames`, each a multiple of `batch_frames` long (but the
    last), about `shard_frames` long."""
    if frames <= 0:
        raise ValueError("frames must be positive")
    batch = max(1, batch_frames)
    size = max(batch, -(-max(1, shard_frames) // batch) * batch)
    return [(lo, min(lo + size, frames)) for lo in range(0, frames, size)]


class RenderHandler:
    """Handler of `render` jobs (see the module docstring)."""

    def __init__(self, stages: StageClients, store: ObjectStore, settings: Settings) -> None:
        self.stages = stages
        self.store = store
        self.settings = settings
        self.beat_s = min(max(settings.queue_lease_seconds / 4, 0.05), 5.0)

    def __call__(self, job: Job, delivery: Delivery, heartbeat: Heartbeat) -> dict[str, Any]:
        started = time.perf_counter()
        request = job.request
        options = request.get("options", {})
        avatar = common_pb2.AvatarRef(
            avatar_id=request["avatar_id"], version=request.get("avatar_version", "")
        )
        scratch = Scratch(job.job_id, delivery.attempt_tag)
        video_key = result_key(job.tenant, job.job_id, delivery.attempt_tag)
        stages = self.stages.with_capability(
            job_issuer(
                self.settings,
                tenant=job.tenant,
                job_id=job.job_id,
                audio_key=request["audio_key"],
                avatar_id=avatar.avatar_id,
                writes=(f"results/{job.tenant}/{job.job_id}/",),
            )
        )
        # Scratch space is not cleared here: a retried or taken-over job's next attempt
        # resumes from it; the worker calls `cleanup` once the job is final (and the janitor
        # sweeps what ended jobs left).
        resumed = self._resumable(job)
        if resumed is None:
            lm3d, checkpoint = self._motion(stages, job, avatar, options, scratch, heartbeat)
        else:
            lm3d, checkpoint = resumed
            log.info("resuming the job from its checkpoint", extra={
                "job_id": job.job_id, "shards_done": len(checkpoint["segments"])})  # fmt: skip
        frames = int(checkpoint["frames"])
        reused = len(checkpoint["segments"])
        render_started = time.perf_counter()
        try:
            segments = self._render(
                stages, job, avatar, lm3d, options, scratch, heartbeat, checkpoint
            )
        except (Cancelled, LeaseLost, HandBack):  # the job stopped, not the stage
            raise
        except Exception:
            _observe("render", time.perf_counter() - render_started, "error")
            raise
        render_seconds = time.perf_counter() - render_started
        _observe("render", render_seconds, "ok")
        heartbeat(stage="MUX", progress=PROGRESS["MUX"])
        try:
            video, muxed = self._await(
                lambda: self._mux(video_key, request["audio_key"], segments), heartbeat,
                "MUX", settle=True,
            )  # fmt: skip
            heartbeat(stage="MUX")  # a cancel that came while the result was written
        except (Cancelled, LeaseLost, HandBack):
            with contextlib.suppress(StoreError):
                self.store.delete(video_key)
            raise
        if muxed["frames"] != frames:
            raise TalkingFaceError(
                "INTERNAL", f"the stitched video has {muxed['frames']} of {frames} frames"
            )
        rendered_frames = frames - checkpoint.get("reused_frames", 0)
        metrics = {
            "audio_seconds": round(float(checkpoint["audio_seconds"]), 3),
            "bad_case_rate": round(float(checkpoint["bad_case_rate"]), 4),
            "bad_case_rate_before": round(float(checkpoint["bad_case_rate_before"]), 4),
            "render_seconds": round(render_seconds, 2),
            "render_fps": round(rendered_frames / max(render_seconds, 1e-9), 2),
            "shards": float(len(segments)),
            "resumed": 1.0 if resumed is not None else 0.0,
            "reused_shards": float(reused),
            "remuxed": 1.0 if muxed["remuxed"] else 0.0,
            "seconds": round(time.perf_counter() - started, 2),
        }
        return {
            "video": video,
            "frames": frames,
            "duration_seconds": round(frames / FPS, 3),
            "avatar_version": checkpoint["avatar_version"] or avatar.version,
            "metrics": metrics,
        }

    # --- features, motion, projection; the checkpoint ----------------------------------------

    def _motion(self, stages, job, avatar, options, scratch, heartbeat):
        """The projected lm3d of the job's audio (three stage calls), stored with the
        checkpoint that lets a later attempt skip them: (lm3d, checkpoint)."""
        request = job.request
        heartbeat(stage="AUDIO_FEATURES", progress=PROGRESS["AUDIO_FEATURES"])
        features = self._await(
            lambda: stages.extract_features(request["audio_key"]), heartbeat, "AUDIO_FEATURES"
        )
        frames = int(features.features.shape[0])
        heartbeat(stage="MOTION", progress=PROGRESS["MOTION"])
        lm3d = self._await(
            lambda: stages.generate_motion(
                features.features, features.f0_bins, avatar,
                seed=int(options.get("seed", 0)),
                temperature=float(options.get("temperature", 0.0)),
                store=self.store, scratch=scratch,
            ),
            heartbeat, "MOTION",
        )  # fmt: skip
        heartbeat(stage="LANDMARK_PROJECTION", progress=PROGRESS["LANDMARK_PROJECTION"])
        projection = self._await(
            lambda: stages.project(
                lm3d, avatar, k=options.get("k"), alpha=options.get("alpha"),
                store=self.store, scratch=scratch,
            ),
            heartbeat, "LANDMARK_PROJECTION",
        )  # fmt: skip
        if len(projection.lm3d) != frames:
            raise TalkingFaceError(
                "INTERNAL", f"projection returned {len(projection.lm3d)} of {frames} frames"
            )
        from talkingface.serving.payloads import store_tensors

        ref = store_tensors(self.store, f"{scratch.prefix}/resume", {"lm3d": projection.lm3d})
        ref = ref.tensors["lm3d"]
        checkpoint = {
            "lm3d": {"key": ref.key, "sha256": ref.sha256},
            "frames": frames,
            "audio_seconds": float(features.summary.duration_seconds),
            "bad_case_rate": float(projection.summary.bad_case_rate),
            "bad_case_rate_before": float(projection.summary.bad_case_rate_before),
            "avatar_version": projection.summary.avatar_version or avatar.version,
            "segments": {},
        }
        heartbeat(checkpoint=checkpoint)  # fenced: only the lease holder records it
        return projection.lm3d, checkpoint

    def _resumable(self, job: Job):
        """(lm3d, checkpoint) from an earlier attempt's checkpoint, every object verified by
        its sha256 (a segment that fails is dropped and rendered again), or None."""
        import hashlib
        import io

        import numpy as np

        checkpoint = dict(job.resume or {})
        ref = checkpoint.get("lm3d") or {}
        if not ref.get("key") or not ref.get("sha256"):
            return None
        try:
            data = self.store.get(ref["key"])
        except StoreError:
            return None
        if hashlib.sha256(data).hexdigest() != ref["sha256"]:
            log.warning("the checkpoint's lm3d does not match its digest; starting over",
                        extra={"job_id": job.job_id})  # fmt: skip
            return None
        lm3d = np.load(io.BytesIO(data), allow_pickle=False)
        if len(lm3d) != int(checkpoint.get("frames", -1)):
            return None
        kept = {}
        for span, segment in (checkpoint.get("segments") or {}).items():
            try:
                info = self.store.stat(segment["key"])
            except (StoreError, KeyError):
                continue
            if segment.get("sha256") and info.sha256 == segment["sha256"]:
                kept[span] = segment
        checkpoint["segments"] = kept
        return lm3d, checkpoint

    def cleanup(self, job: Job) -> None:
        """The job is final (recorded by the lease holder): remove every attempt's scratch, and
        every result object under `results/<tenant>/<job_id>/` but the one its record names
        (none for a job that did not succeed): an attempt killed after storing its mp4 and
        before recording it leaves one that its own `discard` never reached."""
        Scratch(job.job_id).clear(self.store)
        left = (info.key for info in self.store.list(f"results/{job.tenant}/{job.job_id}"))
        for key in unnamed_results(job.result, left):
            with contextlib.suppress(StoreError):
                self.store.delete(key)

    # --- render shards ---------------------------------------------------------------------

    def _render(
        self,
        stages: StageClients,
        job: Job,
        avatar: common_pb2.AvatarRef,
        lm3d,
        options: dict[str, Any],
        scratch: Scratch,
        heartbeat: Heartbeat,
        checkpoint: dict[str, Any],
    ) -> list[str]:
        """Keys of the stored segments, in frame order: those of the checkpoint (an earlier
        attempt's, verified) reused, the others rendered and added to it as they come."""
        frames = len(lm3d)
        ranges = shard_ranges(
            frames, self.settings.render_shard_frames, self.settings.renderer_batch_frames
        )
        done = checkpoint["segments"]
        payload = scratch.payload(self.store, "lm3d", lm3d)
        base = renderer_pb2.RenderRequest(
            avatar=avatar,
            lm3d=payload,
            pose_mode=POSE_MODES[options.get("pose_mode", "pingpong")],
            pose_start=int(options.get("pose_start", 0)),
            resolution=int(options.get("resolution", 0)),
            segment_prefix=f"{scratch.prefix}/segments",
        )
        parallel = max(1, self.settings.render_parallel_shards)
        keys: list[str | None] = [None] * len(ranges)
        calls: dict[int, Any] = {}
        pending: dict[Future, int] = {}
        done_frames = 0
        todo = []
        for index, (lo, hi) in enumerate(ranges):
            segment = done.get(f"{lo}-{hi}")
            if segment is not None:
                keys[index] = segment["key"]
                done_frames += hi - lo
            else:
                todo.append(index)
        checkpoint["reused_frames"] = done_frames
        span = PROGRESS["MUX"] - PROGRESS["RENDER"]
        next_shard = 0
        pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="render-shard")
        try:
            heartbeat(stage="RENDER", progress=round(PROGRESS["RENDER"] + span * done_frames
                                                     / frames, 4))  # fmt: skip
            while next_shard < len(todo) or pending:
                while next_shard < len(todo) and len(pending) < parallel:
                    lo, hi = ranges[todo[next_shard]]
                    request = renderer_pb2.RenderRequest()
                    request.CopyFrom(base)
                    request.start_frame, request.end_frame = lo, hi
                    call, result = stages.render_segment(request)
                    calls[todo[next_shard]] = call
                    pending[pool.submit(result)] = todo[next_shard]
                    next_shard += 1
                finished, _ = wait(pending, timeout=self.beat_s, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = pending.pop(future)
                    calls.pop(index, None)
                    segment = future.result()  # a failed shard fails the job
                    keys[index] = segment.key
                    lo, hi = ranges[index]
                    done_frames += hi - lo
                    done[f"{lo}-{hi}"] = {"key": segment.key, "sha256": segment.sha256}
                progress = round(PROGRESS["RENDER"] + span * done_frames / frames, 4)
                # The checkpoint grows with each finished shard (fenced with the beat).
                heartbeat(stage="RENDER", progress=progress,
                          checkpoint=checkpoint if finished else None)  # fmt: skip
        except BaseException:  # the segments stored so far go with the job's scratch space
            for call in calls.values():
                call.cancel()
            for future in pending:
                future.cancel()
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        log.info(
            "rendered",
            extra={"job_id": job.job_id, "frames": frames, "shards": len(ranges)},
        )
        return [k for k in keys if k]

    # --- mux -------------------------------------------------------------------------------

    def discard(self, result: dict[str, Any]) -> None:
        """Delete the result of an outcome the worker could not record (a lost lease, or the
        job ended meanwhile): only the recorded attempt's result object stays."""
        key = (result.get("video") or {}).get("key")
        if key:
            with contextlib.suppress(StoreError):
                self.store.delete(key)

    def _mux(self, video_key: str, audio_key: str, segments: list[str]) -> tuple[dict, dict]:
        """Stitch the segments with the original audio and store the mp4 (its ObjectRef as a
        dict, and concat_mp4's report)."""
        from talkingface.audio.decode import decode_audio
        from talkingface.media import concat_mp4

        try:
            with tempfile.TemporaryDirectory(prefix="talkingface-mux-") as tmp:
                paths = []
                for i, segment in enumerate(segments):
                    path = Path(tmp) / f"segment_{i:05d}.mp4"
                    self.store.download(segment, path)
                    paths.append(path)
                audio = decode_audio(
                    self._get(audio_key), max_seconds=self.settings.audio_max_seconds
                )
                out = Path(tmp) / "video.mp4"
                report = concat_mp4(out, paths, FPS, audio, SAMPLE_RATE)
                with out.open("rb") as handle:
                    info = self.store.put(video_key, handle, content_type=MP4)
        except StoreError as exc:
            raise as_talkingface_error(exc) from None
        video = {"key": info.key, "size": info.size, "sha256": info.sha256 or "",
                 "content_type": MP4}  # fmt: skip
        return video, report

    def _get(self, key: str) -> bytes:
        try:
            return self.store.get(key)
        except StoreError as exc:
            raise as_talkingface_error(exc) from None

    # --- waiting with a heartbeat ----------------------------------------------------------

    def _await(
        self, fn: Callable[[], T], heartbeat: Heartbeat, stage: str, settle: bool = False
    ) -> T:
        """Run `fn` in a thread, beating every `beat_s` until it returns (broker.beating). When
        a beat raises (cancelled, lease lost) the call is abandoned to finish on its own, or,
        with `settle`, waited for first (so what it writes is there to clean up). The call's
        time goes to talkingface_stage_seconds with outcome ok or error (an abandoned call:
        none)."""
        started = time.perf_counter()
        beating = Beating(heartbeat, self.beat_s)
        try:
            result = beating.run(fn, stage, settle=settle, beat_first=False)
        except Exception:
            if not beating.stopping.is_set():  # the call failed (not a beat)
                _observe(stage.lower(), time.perf_counter() - started, "error")
            raise
        _observe(stage.lower(), time.perf_counter() - started, "ok")
        return result


def _observe(stage: str, seconds: float, outcome: str) -> None:
    from talkingface.serving.metrics import STAGE_SECONDS

    STAGE_SECONDS.labels(stage, outcome).observe(seconds)
