"""The AudioFeatures gRPC servicer: any uploaded audio -> 25 fps features, pitch, loudness.

Hosted by the standalone server (`talkingface serve audio_features`) and by Ray Serve
(`app()`), the same class either way. Audio arrives inline (at most 4 MiB), by object-store
reference, or streamed in ByteChunks; results go back as TensorChunk streams or, with
OUTPUT_MODE_STORE, as .npy objects in the store.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator

import numpy as np

from talkingface.config import Settings
from talkingface.errors import TalkingFaceError, abort
from talkingface.serving.capability import StageGuard
from talkingface.serving.payloads import store_tensors
from talkingface.storage import ObjectStore, StoreError
from talkingface.storage.errors import as_talkingface_error
from talkingface.storage.factory import LazyStore
from talkingface.tensors import to_chunks
from talkingface.v1 import audio_features_pb2 as pb
from talkingface.v1 import common_pb2

log = logging.getLogger(__name__)
MAX_INLINE_AUDIO = 4 * 1024 * 1024
STORE_PREFIX = "features"


def load_front_end(settings: Settings, store: ObjectStore | None = None):
    """HuBERT from the configured checkpoint (a directory or `store:PREFIX`), else log-mel."""
    from talkingface.audio.hubert import HubertFrontEnd
    from talkingface.audio.logmel import LogMelFrontEnd
    from talkingface.storage.fetch import local_checkpoint

    if not settings.hubert_checkpoint:
        return LogMelFrontEnd()
    source = local_checkpoint(settings.hubert_checkpoint, settings, store)
    device = "cuda" if settings.device == "auto" and _cuda() else settings.device
    return HubertFrontEnd(source, device="cpu" if device == "auto" else device)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class AudioFeaturesServicer:
    """talkingface.v1.AudioFeatures (methods named as the RPCs).

    Uploaded bytes are decoded in the sandbox (`talkingface.sandbox`): a codec that crashes
    or hangs on one file fails that request with AUDIO_CORRUPT and the replica goes on.
    """

    decode_task = "talkingface.audio.decode:decode_task"  # the sandbox task that decodes

    def __init__(self, settings: Settings | None = None, lazy: bool = False) -> None:
        """With lazy=True the front end loads in warm_up() (the standalone server calls it
        after binding its port, while health reports NOT_SERVING)."""
        self.settings = settings or Settings.from_env()
        self._store = LazyStore(self.settings)
        self.front_end = None
        self.max_upload = self.settings.audio_max_upload_mb * 1024 * 1024
        self.guard = StageGuard.from_settings(self.settings, "audio_features", STORE_PREFIX)
        if not lazy:
            self.warm_up()

    def warm_up(self) -> None:
        from talkingface.audio import decode
        from talkingface.sandbox import Limits

        self.front_end = load_front_end(self.settings)
        self.limits = Limits.from_settings(self.settings)
        decode.warm_up(self.limits, self.decode_task)  # the sandbox server, started now
        log.info("audio features ready", extra={"front_end": self.front_end.name})

    @property
    def store(self) -> ObjectStore:
        return self._store.get()

    # --- RPCs ----------------------------------------------------------------------------

    def Extract(self, request: pb.ExtractFeaturesRequest, context) -> Iterator:
        try:
            self.guard.check(context, request)
            data = self._audio_bytes(request.audio)
            yield from self._respond(data, request.options, request.audio.filename_hint)
        except TalkingFaceError as error:
            abort(context, error)

    def ExtractUpload(self, requests: Iterable[pb.ExtractFeaturesUpload], context) -> Iterator:
        try:
            capability = self.guard.check(context)
            header, data = self._receive_upload(requests)
            self.guard.check_message(capability, header)
            yield from self._respond(data, header.options, header.filename_hint)
        except TalkingFaceError as error:
            abort(context, error)

    # --- helpers -------------------------------------------------------------------------

    def _audio_bytes(self, audio: pb.AudioInput) -> bytes:
        source = audio.WhichOneof("source")
        if source == "data":
            if len(audio.data) > MAX_INLINE_AUDIO:
                raise TalkingFaceError(
                    "PAYLOAD_TOO_LARGE", "inline audio over 4 MiB: use ExtractUpload or a store ref"
                )
            return audio.data
        if source == "ref":
            try:
                size = self.store.stat(audio.ref.key).size
                if size > self.max_upload:
                    raise TalkingFaceError("PAYLOAD_TOO_LARGE", f"audio object of {size} bytes")
                return self.store.get(audio.ref.key)
            except StoreError as exc:
                raise as_talkingface_error(exc) from None
        raise TalkingFaceError("AUDIO_EMPTY", "the request carries no audio")

    def _receive_upload(self, requests: Iterable[pb.ExtractFeaturesUpload]):
        header = None
        buffer = io.BytesIO()
        for message in requests:
            item = message.WhichOneof("item")
            if item == "header":
                if header is not None:
                    raise TalkingFaceError("INVALID_REQUEST", "a second upload header")
                header = message.header
                continue
            if item != "chunk" or header is None:
                raise TalkingFaceError("INVALID_REQUEST", "the upload must start with its header")
            chunk = message.chunk
            if chunk.offset != buffer.tell():
                raise TalkingFaceError(
                    "INVALID_REQUEST", f"chunk at offset {chunk.offset}, expected {buffer.tell()}"
                )
            if buffer.tell() + len(chunk.data) > self.max_upload:
                raise TalkingFaceError(
                    "PAYLOAD_TOO_LARGE", f"upload over {self.settings.audio_max_upload_mb} MiB"
                )
            buffer.write(chunk.data)
        if header is None:
            raise TalkingFaceError("AUDIO_EMPTY", "the upload carried nothing")
        return header, buffer.getvalue()

    def _respond(self, data: bytes, options: pb.FeatureOptions, hint: str) -> Iterator:
        from talkingface.audio.decode import decode_audio
        from talkingface.audio.features import extract

        if options.kind == pb.FEATURE_KIND_HUBERT and self.front_end.name != "hubert":
            raise TalkingFaceError(
                "INVALID_REQUEST",
                "no HuBERT checkpoint is configured (TALKINGFACE_HUBERT_CHECKPOINT)",
            )
        if options.kind == pb.FEATURE_KIND_LOGMEL and self.front_end.name != "logmel":
            from talkingface.audio.logmel import LogMelFrontEnd

            front_end = LogMelFrontEnd()
        else:
            front_end = self.front_end
        method = {pb.PITCH_METHOD_HARVEST: "harvest", pb.PITCH_METHOD_DIO: "dio"}.get(
            options.pitch_method, self.settings.pitch_method
        )
        audio = decode_audio(
            data, self.settings.audio_max_seconds, hint, limits=self.limits, task=self.decode_task
        )
        result = extract(audio, front_end=front_end, pitch_method=method)
        yield pb.ExtractFeaturesResponse(
            summary=pb.FeaturesSummary(
                frames=result.frames(),
                fps=25.0,
                feature_dim=int(result.features.shape[1]),
                feature_kind=pb.FEATURE_KIND_HUBERT
                if result.kind == "hubert"
                else pb.FEATURE_KIND_LOGMEL,
                duration_seconds=result.duration,
                silent=result.silent,
                voiced_fraction=result.voiced_fraction,
            )
        )
        arrays = result.arrays()
        if options.output == common_pb2.OUTPUT_MODE_STORE:
            yield pb.ExtractFeaturesResponse(stored=self._store_arrays(arrays))
            return
        for name, array in arrays.items():
            for chunk in to_chunks(name, array):
                yield pb.ExtractFeaturesResponse(chunk=chunk)

    def _store_arrays(self, arrays: dict[str, np.ndarray]) -> pb.StoredTensors:
        return store_tensors(self.store, STORE_PREFIX, arrays)


def app(settings: Settings | dict | None = None):
    """The Ray Serve application for this stage."""
    from talkingface.serving.ray_app import app_settings, build_app

    settings = app_settings(settings)  # Ray Serve passes the serve config's args dict
    return build_app(AudioFeaturesServicer, pb, "AudioFeatures", settings)


def standalone(settings: Settings):
    """A ServiceServer hosting this stage; the front end loads during warm-up."""
    from talkingface.serving.server import ServiceServer, binding_for
    from talkingface.v1 import audio_features_pb2_grpc

    servicer = AudioFeaturesServicer(settings, lazy=True)
    binding = binding_for(
        servicer, audio_features_pb2_grpc.add_AudioFeaturesServicer_to_server, pb, "AudioFeatures"
    )
    return ServiceServer("audio_features", [binding], settings, warmup=servicer.warm_up)
