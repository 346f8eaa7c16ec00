"""A client of the broker's public API, for `talkingface submit`, the demo and scripts.

`BrokerClient(address, tenant)` uploads files in chunks, submits render and avatar-training
jobs, follows a job to its end (`wait`, with a callback per update) and downloads a finished
render's mp4 from its download URL (file:// for the local store, http(s) for MinIO's
presigned URLs). Failed RPCs raise the TalkingFaceError the broker sent.

With an API key (`api_key`, else TALKINGFACE_API_KEY) every call carries `authorization:
Bearer <key>`; with a CA file (`ca_file`, else TALKINGFACE_TLS_CA_FILE) the channel is TLS,
trusting that CA.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from talkingface.errors import TalkingFaceError, error_from_rpc
from talkingface.serving.server import grpc_message_options
from talkingface.v1 import broker_pb2 as pb
from talkingface.v1 import broker_pb2_grpc, common_pb2

CHUNK = 1024 * 1024
TENANT_METADATA = "x-talkingface-tenant"
FINAL_STATES = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


def state_name(state: int) -> str:
    return pb.JobState.Name(state).removeprefix("JOB_STATE_")


def stage_name(stage: int) -> str:
    return pb.Stage.Name(stage).removeprefix("STAGE_") if stage else ""


class BrokerClient:
    """The broker API for one tenant (see the module docstring)."""

    def __init__(
        self,
        address: str,
        tenant: str = "default",
        timeout_s: float = 60.0,
        *,
        api_key: str | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        self.address = address
        self.tenant = tenant
        self.timeout_s = timeout_s
        self.api_key = os.environ.get("TALKINGFACE_API_KEY", "") if api_key is None else api_key
        if ca_file is None:
            ca_file = os.environ.get("TALKINGFACE_TLS_CA_FILE", "")
        options = grpc_message_options(8)
        if ca_file:
            try:
                roots = Path(ca_file).read_bytes()
            except OSError as exc:
                raise TalkingFaceError(
                    "INVALID_REQUEST", f"cannot read the TLS CA file {ca_file}: {exc}"
                ) from None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self.stub = broker_pb2_grpc.BrokerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.api_key:
            return ((TENANT_METADATA, self.tenant), ("authorization", f"Bearer {self.api_key}"))
        return ((TENANT_METADATA, self.tenant),)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the broker's channel is connected (TalkingFaceError UNAVAILABLE)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise TalkingFaceError(
                "UNAVAILABLE", f"no broker answers at {self.address} (is `talkingface up` running?)"
            ) from None

    # --- uploads and jobs ------------------------------------------------------------------

    def upload(self, source: Path | str | bytes, content_type: str = "") -> pb.UploadResponse:
        """Stream a file (or bytes) to the broker; its upload id, size and sha256."""
        data = source if isinstance(source, bytes) else None
        path = None if data is not None else Path(source)
        total = len(data) if data is not None else path.stat().st_size
        name = "" if path is None else path.name

        def requests() -> Iterator[pb.UploadRequest]:
            header = pb.UploadHeader(filename=name, content_type=content_type, total_bytes=total)
            yield pb.UploadRequest(header=header)
            offset = 0
            if data is not None:
                pieces: Iterator[bytes] = (data[i : i + CHUNK] for i in range(0, len(data), CHUNK))
            else:
                pieces = _file_chunks(path)
            for piece in pieces:
                yield pb.UploadRequest(chunk=common_pb2.ByteChunk(offset=offset, data=piece))
                offset += len(piece)

        return self._call(self.stub.Upload, requests(), timeout=max(self.timeout_s, 600))

    def submit_render(
        self,
        avatar_id: str,
        *,
        audio: Path | str | bytes | None = None,
        upload_id: str = "",
        options: pb.RenderOptions | None = None,
        idempotency_key: str = "",
        avatar_version: str = "",
    ) -> pb.Job:
        """Submit a render job; audio as a file (uploaded first), bytes (inline) or an
        upload id."""
        request = pb.SubmitRenderRequest(
            avatar_id=avatar_id, avatar_version=avatar_version, idempotency_key=idempotency_key
        )
        if options is not None:
            request.options.CopyFrom(options)
        if isinstance(audio, bytes):
            request.inline_audio = audio
        elif audio is not None:
            request.upload_id = self.upload(audio).upload_id
        else:
            request.upload_id = upload_id
        return self._call(self.stub.SubmitRender, request)

    def create_avatar(
        self, data_dir: Path | str, preset: str = "", display_name: str = "",
        idempotency_key: str = "",
    ) -> pb.Job:  # fmt: skip
        """Tar a SynthTalk avatar directory, upload it and queue its training job."""
        upload = self._upload_tar(data_dir, "avatar")
        return self._create_avatar(display_name, idempotency_key, preset,
                                   synthtalk_upload_id=upload.upload_id)  # fmt: skip

    def import_avatar(
        self, bundle_dir: Path | str, display_name: str = "", idempotency_key: str = ""
    ) -> pb.Job:
        """Tar a trained avatar bundle directory, upload it and queue its import (check,
        publish; no training)."""
        upload = self._upload_tar(bundle_dir, "bundle")
        return self._create_avatar(display_name, idempotency_key, "",
                                   bundle_upload_id=upload.upload_id)  # fmt: skip

    def create_avatar_from_video(
        self, video: Path | str, preset: str = "", display_name: str = "",
        idempotency_key: str = "",
    ) -> pb.Job:  # fmt: skip
        """Upload a person's talking video and queue its ingest and training job."""
        upload = self.upload(video, "video/mp4")
        return self._create_avatar(display_name, idempotency_key, preset,
                                   video_upload_id=upload.upload_id)  # fmt: skip

    def _upload_tar(self, directory: Path | str, name: str) -> pb.UploadResponse:
        with tempfile.TemporaryDirectory(prefix=f"talkingface-{name}-") as tmp:
            archive = Path(tmp) / f"{name}.tar"
            with tarfile.open(archive, "w") as tar:
                tar.add(Path(directory), arcname=name)
            return self.upload(archive, "application/x-tar")

    def _create_avatar(self, display_name: str, idempotency_key: str, preset: str,
                       **source: str) -> pb.Job:  # fmt: skip
        request = pb.CreateAvatarRequest(display_name=display_name, preset=preset,
                                         idempotency_key=idempotency_key, **source)  # fmt: skip
        return self._call(self.stub.CreateAvatar, request)

    def get_job(self, job_id: str) -> pb.Job:
        return self._call(self.stub.GetJob, pb.GetJobRequest(job_id=job_id))

    def cancel_job(self, job_id: str) -> pb.Job:
        return self._call(self.stub.CancelJob, pb.CancelJobRequest(job_id=job_id))

    def delete_job(self, job_id: str) -> pb.DeleteJobResponse:
        """Delete the job's record and result (a job still running is cancelled first)."""
        return self._call(self.stub.DeleteJob, pb.DeleteJobRequest(job_id=job_id))

    def list_jobs(self, state: int = 0, limit: int = 100) -> list[pb.Job]:
        """The tenant's jobs, newest first (filtered by `state`), at most `limit`, paging
        through ListJobs (100 a page)."""
        jobs: list[pb.Job] = []
        token = ""
        while len(jobs) < limit:
            request = pb.ListJobsRequest(page_size=min(100, limit - len(jobs)),
                                         page_token=token, state=state)  # fmt: skip
            reply = self._call(self.stub.ListJobs, request)
            jobs.extend(reply.jobs)
            token = reply.next_page_token
            if not token or not reply.jobs:
                break
        return jobs[:limit]

    def get_avatar(self, avatar_id: str) -> pb.Avatar:
        return self._call(self.stub.GetAvatar, pb.GetAvatarRequest(avatar_id=avatar_id))

    def watch(self, job_id: str, timeout_s: float | None = None) -> Iterator[pb.Job]:
        """The job now, then after every change, until it ends."""
        try:
            yield from self.stub.WatchJob(
                pb.WatchJobRequest(job_id=job_id), metadata=self.metadata, timeout=timeout_s
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def wait(
        self,
        job_id: str,
        on_update: Callable[[pb.Job], None] | None = None,
        timeout_s: float | None = None,
    ) -> pb.Job:
        """Follow the job to its end (re-watching when the stream drops or the broker ends it
        at its maximum time, polling while the broker refuses streams); the final job."""
        import time

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        job = self.get_job(job_id)
        while job.state not in FINAL_STATES:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TalkingFaceError("DEADLINE_EXCEEDED", f"job {job_id} did not end in time")
            try:
                for job in self.watch(job_id, timeout_s=left):
                    if on_update is not None:
                        on_update(job)
            except TalkingFaceError as exc:
                if exc.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "OVERLOADED"):
                    raise
                if exc.code == "OVERLOADED":  # every WatchJob slot is taken: poll a while
                    time.sleep(1.0)
            job = self.get_job(job_id)
        return job

    def download(self, job: pb.Job, out: Path | str) -> Path:
        """Write a succeeded render job's mp4 to `out`."""
        url = job.render.download_url
        if not url:
            raise TalkingFaceError("NOT_FOUND", f"job {job.job_id} has no download URL")
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        parsed = urllib.parse.urlparse(url)
        tmp = out.with_name(f".{out.name}.part")
        if parsed.scheme == "file":
            shutil.copyfile(urllib.request.url2pathname(parsed.path), tmp)
        else:
            with (
                urllib.request.urlopen(url, timeout=self.timeout_s) as response,
                tmp.open("wb") as handle,
            ):
                shutil.copyfileobj(response, handle, CHUNK)
        tmp.replace(out)
        return out

    def _call(self, method, request, timeout: float | None = None):
        try:
            return method(request, metadata=self.metadata, timeout=timeout or self.timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while piece := handle.read(CHUNK):
            yield piece
