"""Settings for every talkingface process, read from the environment in this one place.

Each setting is one environment variable with a type, a default and a line of help; the table
in docs/configuration.md is generated from these definitions (`talkingface config --markdown`)
and a test keeps it in sync. Problems are collected and raised together as one ConfigError
before anything starts, so a misconfigured pod fails at once with every mistake listed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PREFIX = "TALKINGFACE_"


class ConfigError(ValueError):
    """One or more settings are missing or malformed."""


def _setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] = (),
    secret: bool = False,
    aliases: tuple[str, ...] = (),
) -> Any:
    return field(
        default=default,
        metadata={"help": help, "choices": choices, "secret": secret, "aliases": aliases},
    )


def _default_store_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "talkingface" / "store"


@dataclass(frozen=True)
class Settings:
    """Process settings. The environment variable of field `x` is TALKINGFACE_X."""

    log_level: str = _setting("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _setting(
        "json",
        "`json` (one object per line, for collectors) or `text` (for people).",
        choices=("json", "text"),
    )
    grpc_host: str = _setting("0.0.0.0", "Address the gRPC server binds.")
    grpc_port: int = _setting(50051, "gRPC port (0 = pick a free port).")
    grpc_health_port: int = _setting(
        0,
        "A second, plaintext port serving only grpc.health.v1 (0 = none): for Kubernetes' gRPC "
        "probes, which cannot speak TLS, when the gRPC port has TLS (the chart sets it with "
        "`api.tls`).",
    )
    grpc_max_message_mb: int = _setting(
        8,
        "Largest gRPC message accepted or sent, MiB. Payloads over 4 MiB are chunked or "
        "passed as object-store references, so this only bounds a chunk plus its envelope.",
    )
    grpc_workers: int = _setting(8, "Threads serving RPCs concurrently in one process.")
    metrics_host: str = _setting("0.0.0.0", "Address the Prometheus /metrics endpoint binds.")
    metrics_port: int = _setting(9464, "Prometheus /metrics port (0 = pick a free port).")
    shutdown_grace_s: float = _setting(
        20.0,
        "Seconds in-flight RPCs get to finish after SIGTERM before being cancelled; "
        "keep it below the pod's terminationGracePeriodSeconds.",
    )
    device: str = _setting("auto", "Torch device: `auto` (CUDA when present), `cpu`, `cuda:N`.")
    store: str = _setting(
        "local",
        "Object store: `local` (a directory; the embedded default) or `minio`.",
        choices=("local", "minio"),
    )
    store_dir: Path = _setting(_default_store_dir(), "Root directory of the local store.")  # noqa: RUF009
    minio_endpoint: str = _setting("", "MinIO/S3 endpoint `host:port`; required when store=minio.")
    minio_access_key: str = _setting(
        "", "MinIO access key; required when store=minio.", secret=True
    )
    minio_secret_key: str = _setting(
        "", "MinIO secret key; required when store=minio.", secret=True
    )
    minio_bucket: str = _setting("talkingface", "Bucket holding uploads, avatars and results.")
    minio_secure: bool = _setting(False, "Use TLS to reach MinIO.")
    minio_region: str = _setting("", "Bucket region; empty lets the client discover it.")
    redis_url: str = _setting(
        "",
        "Redis for queues and job records, e.g. `redis://host:6379/0`; required by the "
        "broker (`talkingface up` starts a private one when empty).",
        secret=True,
        aliases=("REDIS_URL",),
    )
    redis_socket_timeout_seconds: float = _setting(
        10.0,
        "Longest wait for a Redis reply, seconds, after which the command fails (and is "
        "retried); keep it above every blocking read's wait (the queues block at most 1 s).",
    )
    redis_connect_timeout_seconds: float = _setting(
        5.0, "Longest wait to connect to Redis, seconds."
    )
    redis_retries: int = _setting(
        3,
        "Retries of a Redis command that failed on a lost connection or a timeout, with "
        "exponential backoff (50 ms doubling up to 2 s) between them; 0 = none.",
    )
    redis_allow_volatile: bool = _setting(
        False,
        "Let the broker start on a Redis without AOF (`appendonly yes`) or with an eviction "
        "policy other than `noeviction`, where a restart or memory pressure can lose jobs "
        "(a warning instead of a refusal).",
    )
    reconcile_interval_seconds: float = _setting(
        60.0,
        "How often the broker's janitor looks for QUEUED or RUNNING jobs whose work message "
        "is gone and re-queues those missing for over twice TALKINGFACE_QUEUE_LEASE_SECONDS, "
        "seconds (0 = never).",
    )
    ray_address: str = _setting("", "Ray cluster address; empty starts or joins a local Ray.")
    job_ttl_seconds: int = _setting(
        7 * 24 * 3600,
        "How long a job record (and its idempotency key) lives in Redis after its last "
        "update, seconds (per-tenant override `job_retention_seconds` can only shorten it).",
    )
    queue_lease_seconds: float = _setting(
        60.0,
        "Work-queue lease, seconds: a delivery whose worker has not renewed it for this long "
        "is taken over by another worker (workers renew while they work).",
    )
    queue_max_deliveries: int = _setting(
        5,
        "Deliveries of one job (retries and lease takeovers together) before it fails with "
        "JOB_RETRIES_EXHAUSTED and moves to the dead-letter stream.",
    )
    queue_retry_base_seconds: float = _setting(
        2.0, "Backoff before the first retry of a transiently failed job, seconds (x2 each time)."
    )
    queue_retry_max_seconds: float = _setting(
        300.0, "Longest backoff between retries of a job, seconds."
    )
    queue_outage_budget_seconds: float = _setting(
        600.0,
        "How long a job keeps retrying through an outage (the object store or a stage "
        "unreachable: STORE_UNAVAILABLE, UNAVAILABLE), counted from its submission; those "
        "retries do not count against TALKINGFACE_QUEUE_MAX_DELIVERIES meanwhile.",
    )
    render_deadline_seconds: float = _setting(
        1800.0,
        "Longest a render job may take from submission to its end, retries included; past it "
        "the job fails with DEADLINE_EXCEEDED (0 = none).",
    )
    train_deadline_seconds: float = _setting(
        6 * 3600.0,
        "Longest an avatar-training job may take from submission to its end, retries "
        "included; past it the job fails with DEADLINE_EXCEEDED (0 = none).",
    )
    broker_address: str = _setting(
        "127.0.0.1:50051",
        "`host:port` of the broker's public gRPC API, for clients (`talkingface submit`).",
    )
    stages_address: str = _setting(
        "127.0.0.1:9000",
        "`host:port` of the fleet's Ray Serve gRPC proxy, through which the broker's workers "
        "call the four stages (`application` metadata picks the stage).",
    )
    stage_timeout_seconds: float = _setting(
        900.0, "Deadline of one stage call from a broker worker (one render shard included)."
    )
    stage_secret: str = _setting(
        "",
        "Shared secret of the closed stage plane: set (the same value on the broker's workers "
        "and every stage), each stage call must carry a capability the worker signed with it "
        "(HMAC-SHA256; UNAUTHENTICATED without one, PERMISSION_DENIED for a key or avatar "
        "outside it); empty = the stages trust any caller (a warning at start).",
        secret=True,
    )
    stage_capability_seconds: float = _setting(
        900.0,
        "Lifetime of a stage capability, seconds: the worker signs a fresh one for each stage "
        "call, so this bounds one call (at least TALKINGFACE_STAGE_TIMEOUT_SECONDS is used).",
    )
    render_shard_frames: int = _setting(
        100,
        "Frames per render shard: long audio is rendered as shards of this many frames "
        "(rounded up to a multiple of TALKINGFACE_RENDERER_BATCH_FRAMES) in parallel.",
    )
    render_parallel_shards: int = _setting(
        4, "Render shards of one job in flight at once (spread over the renderer replicas)."
    )
    broker_workers: int = _setting(
        2,
        "Render-job worker threads inside `talkingface serve broker` (0 = the API only; run "
        "`talkingface worker` processes instead).",
    )
    broker_train_workers: int = _setting(
        1, "Avatar-training worker threads inside `talkingface serve broker` (0 = none)."
    )
    broker_require_tenant: bool = _setting(
        False,
        "Refuse broker calls without `x-talkingface-tenant` metadata (UNAUTHENTICATED); when "
        "false such calls act for the tenant `default`.",
    )
    broker_auth: str = _setting(
        "off",
        "Authentication of the broker API: `off` (the tenant is the `x-talkingface-tenant` "
        "metadata) or `keys` (every RPC needs `authorization: Bearer <API key>`; the key's "
        "tenant is used and the tenant metadata ignored; see docs/broker.md).",
        choices=("off", "keys"),
    )
    broker_max_watch_streams: int = _setting(
        64,
        "Most WatchJob streams the broker API serves at once; one more is refused with "
        "OVERLOADED (RESOURCE_EXHAUSTED). The server has a thread for each, on top of "
        "TALKINGFACE_GRPC_WORKERS for the other calls (docs/broker.md#streams).",
    )
    broker_max_upload_streams: int = _setting(
        16,
        "Most Upload streams the broker API serves at once; one more is refused with "
        "OVERLOADED (RESOURCE_EXHAUSTED). Each has its own thread (docs/broker.md#streams).",
    )
    broker_upload_idle_seconds: float = _setting(
        30.0,
        "An Upload stream that sends nothing for this long is ended with DEADLINE_EXCEEDED "
        "and what it sent is deleted, seconds.",
    )
    broker_watch_max_seconds: float = _setting(
        300.0,
        "Longest a WatchJob stream is served, seconds; it then ends normally (OK) and the "
        "client watches again (the Python client's wait does).",
    )
    broker_auth_cache_seconds: float = _setting(
        5.0,
        "How long the broker caches an API key lookup in memory, seconds (0 = no cache); a "
        "revoked or deleted key stops working within this time.",
    )
    tls_cert_file: str = _setting(
        "",
        "PEM certificate (chain) of the broker's public gRPC port; with "
        "TALKINGFACE_TLS_KEY_FILE it serves TLS instead of plaintext.",
    )
    tls_key_file: str = _setting("", "PEM private key of TALKINGFACE_TLS_CERT_FILE.")
    tls_ca_file: str = _setting(
        "",
        "PEM CA certificate(s) clients trust for the broker's TLS (`talkingface submit`, "
        "`avatar`); set = connect with TLS, empty = plaintext.",
    )
    api_key: str = _setting(
        "",
        "API key the client commands send (`authorization: Bearer`), from `talkingface "
        "key create`.",
        secret=True,
    )
    janitor_interval_seconds: float = _setting(
        300.0,
        "How often the broker deletes the scratch space (`work/<job_id>/`) left by ended jobs "
        "(a killed worker's, a cancelled render's late shard) and enforces retention (uploads, "
        "results, job records, dead letters: docs/broker.md#retention), seconds; 0 = never.",
    )
    retention_upload_seconds: int = _setting(
        7 * 24 * 3600,
        "How long an upload (`uploads/<tenant>/...`) is kept, seconds; the janitor deletes "
        "older ones unless a queued or running job uses them (0 = forever; per-tenant "
        "override `upload_retention_seconds`, docs/broker.md#retention).",
    )
    retention_result_seconds: int = _setting(
        7 * 24 * 3600,
        "How long a render result (`results/<tenant>/<job_id>/`) is kept, seconds; a result "
        "whose job record is gone is deleted at the next sweep whatever its age (0 = until "
        "its record goes; per-tenant override `result_retention_seconds`).",
    )
    dead_letter_max_entries: int = _setting(
        10000,
        "Most entries the janitor keeps in each dead-letter stream `tf:dead:<queue>` (the "
        "oldest are trimmed; 0 = no cap).",
    )
    dead_letter_retention_seconds: int = _setting(
        14 * 24 * 3600,
        "How long a dead-letter entry is kept, seconds (older ones are trimmed; 0 = forever).",
    )
    upload_max_mb: int = _setting(
        1024, "Largest file accepted by the broker's Upload, MiB (PAYLOAD_TOO_LARGE beyond)."
    )
    result_url_seconds: int = _setting(
        900,
        "Validity of the download URL in a finished render job's result, seconds (minted by "
        "GetJob, WatchJob's final message and the webhook; never by ListJobs).",
    )
    quota_active_jobs: int = _setting(
        100,
        "Jobs (render and training, queued + running) one tenant may have at once; "
        "SubmitRender and CreateAvatar beyond it answer QUOTA_EXCEEDED (0 = no limit; "
        "per-tenant override `active_jobs`, docs/broker.md#limits).",
    )
    quota_uploads_per_day: int = _setting(
        10000,
        "Uploads one tenant may store per UTC day (Upload calls; inline audio is not counted); "
        "QUOTA_EXCEEDED beyond (0 = no limit; per-tenant override `uploads_per_day`).",
    )
    quota_train_presets: str = _setting(
        "tiny,cpu",
        "Training presets (comma-separated: tiny, cpu, full) every tenant may use in "
        "CreateAvatar; others answer PERMISSION_DENIED (per-tenant override `train_presets`).",
    )
    rate_submit_per_second: float = _setting(
        10.0,
        "Sustained rate of SubmitRender and CreateAvatar calls per tenant (a token bucket in "
        "Redis); RATE_LIMITED with a retry-after beyond (0 = no limit; override "
        "`submit_per_second`).",
    )
    rate_submit_burst: int = _setting(
        50,
        "Calls of SubmitRender and CreateAvatar a tenant may make at once above the rate "
        "(the bucket's size; override `submit_burst`).",
    )
    rate_upload_per_second: float = _setting(
        5.0,
        "Sustained rate of Upload calls per tenant; RATE_LIMITED with a retry-after beyond "
        "(0 = no limit; override `upload_per_second`).",
    )
    rate_upload_burst: int = _setting(
        20, "Upload calls a tenant may make at once above the rate (override `upload_burst`)."
    )
    rate_key_submit_per_second: float = _setting(
        0.0,
        "Sustained rate of SubmitRender and CreateAvatar calls per API key, within its "
        "tenant's: a runaway or leaked key cannot spend the whole tenant's rate (0 = a key is "
        "held only to its tenant's; per key: `talkingface key limits KEY_ID "
        "--submit-per-second R`).",
    )
    rate_key_submit_burst: int = _setting(
        20, "Calls of SubmitRender and CreateAvatar one API key may make at once above its rate."
    )
    rate_key_upload_per_second: float = _setting(
        0.0,
        "Sustained rate of Upload calls per API key, within its tenant's (0 = a key is held only "
        "to its tenant's; per key: `talkingface key limits KEY_ID --upload-per-second R`).",
    )
    rate_key_upload_burst: int = _setting(
        10, "Upload calls one API key may make at once above its rate."
    )
    webhook_allow_http: bool = _setting(
        False,
        "Accept `http://` callback URLs (for loopback tests only); by default a job's "
        "`callback_url` must be https (INVALID_REQUEST otherwise).",
    )
    webhook_allowed_networks: str = _setting(
        "",
        "Networks (comma-separated CIDRs) a webhook may reach although they are not public "
        "internet addresses, e.g. `10.20.0.0/16` for a receiver inside the cluster, "
        "`127.0.0.0/8` for loopback tests. Every other private, loopback, link-local "
        "(cloud metadata), shared or reserved address is refused, at submission for a literal "
        "address and at each delivery after resolving the host.",
    )
    webhook_max_attempts: int = _setting(
        8, "POSTs of a job's webhook before its delivery is given up (recorded on the job)."
    )
    webhook_retry_base_seconds: float = _setting(
        2.0, "Wait before a webhook's second POST, seconds; doubled after each failed one."
    )
    webhook_retry_max_seconds: float = _setting(
        600.0, "Longest wait between two POSTs of a webhook, seconds."
    )
    webhook_timeout_seconds: float = _setting(
        10.0, "Timeout of one webhook POST (connect + response), seconds."
    )
    broker_reflection: bool = _setting(
        False,
        "Serve gRPC server reflection on the broker's public port (off by default: the API is "
        "described by protos/talkingface/v1/broker.proto).",
    )
    train_tar_max_mb: int = _setting(
        4096,
        "Largest unpacked size of a training or bundle tar, MiB: the worker sums the members' "
        "sizes while reading the stream and fails the job with INVALID_REQUEST before writing "
        "anything beyond it.",
    )
    train_tar_max_members: int = _setting(
        10000, "Most entries a training or bundle tar may hold (INVALID_REQUEST beyond)."
    )
    hubert_checkpoint: str = _setting(
        "",
        "HuBERT checkpoint for audio features: a local directory written by transformers' "
        "save_pretrained, or `store:PREFIX` for one kept in the object store. Empty = the "
        "built-in log-mel front end. Never downloaded from a hub.",
    )
    audio_max_seconds: float = _setting(
        900.0, "Longest audio the features stage accepts, seconds (AUDIO_TOO_LONG beyond)."
    )
    audio_max_upload_mb: int = _setting(
        256, "Largest encoded audio upload accepted, MiB (PAYLOAD_TOO_LARGE beyond)."
    )
    video_min_seconds: float = _setting(
        20.0, "Shortest avatar video accepted for ingest, seconds (VIDEO_TOO_SHORT below)."
    )
    video_max_seconds: float = _setting(
        1800.0, "Longest avatar video accepted for ingest, seconds (VIDEO_TOO_LONG beyond)."
    )
    sandbox_memory_mb: int = _setting(
        2048,
        "Memory one sandboxed decode of untrusted media may take on top of the sandbox "
        "server's own, MiB (its child is refused more: AUDIO_CORRUPT).",
    )
    sandbox_cpu_seconds: float = _setting(
        60.0, "CPU time one sandboxed decode may use, seconds (killed beyond: AUDIO_CORRUPT)."
    )
    sandbox_timeout_seconds: float = _setting(
        120.0, "Wall-clock time one sandboxed decode may take, seconds (killed beyond)."
    )
    pitch_method: str = _setting(
        "dio",
        "Default pitch tracker: `dio` (dio + stonemask) or `harvest`.",
        choices=("dio", "harvest"),
    )
    motion_checkpoint: str = _setting(
        "",
        "Motion model the motion service generates with: the `motion/` directory that "
        "`talkingface train motion --out CKPT_DIR` writes (CKPT_DIR/motion), or "
        "`store:PREFIX` for one kept in the object store (fetched into the cache directory). "
        "Required by `talkingface serve motion`.",
    )
    motion_postnet_cache_mb: int = _setting(
        256,
        "Memory the motion service may spend on loaded avatar postnets, MiB; the least "
        "recently used are dropped beyond it (0 = load every request).",
    )
    projection_cache_mb: int = _setting(
        1024,
        "Memory the landmark projection service may spend on loaded avatar indexes, MiB "
        "(about 1 MiB per 1,000 training frames); the least recently used are dropped beyond "
        "it (0 = load every request).",
    )
    renderer_cache_mb: int = _setting(
        2048,
        "Memory the renderer service may spend on loaded avatar renderers (weights, occupancy "
        "grid, pose track and background plate), MiB; the least recently used are dropped "
        "beyond it (0 = load every request).",
    )
    renderer_batch_frames: int = _setting(
        4,
        "Frames the renderer service renders per forward pass (1 or more): more is faster "
        "per frame on a GPU, and holds that many frames of rays in memory at once.",
    )
    cache_dir: Path = _setting(  # noqa: RUF009
        Path.home() / ".cache" / "talkingface",
        "Local cache (checkpoints fetched from the store, demo data).",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse the environment; raise ConfigError listing every bad or missing value."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
            name = env_name(f.name)
            raw = environ.get(name)
            for alias in f.metadata["aliases"]:
                if raw is None:
                    raw = environ.get(alias)
            if raw is None:
                continue
            try:
                values[f.name] = _parse(raw.strip(), f.type, f.metadata["choices"])
            except ValueError as exc:
                problems.append(f"{name}={raw!r}: {exc}")
        settings = cls(**values) if not problems else None
        if settings is not None and settings.motion_postnet_cache_mb < 0:
            problems.append(f"{env_name('motion_postnet_cache_mb')} must be 0 or more")
        if settings is not None and settings.projection_cache_mb < 0:
            problems.append(f"{env_name('projection_cache_mb')} must be 0 or more")
        if settings is not None and settings.renderer_cache_mb < 0:
            problems.append(f"{env_name('renderer_cache_mb')} must be 0 or more")
        if settings is not None and settings.renderer_batch_frames < 1:
            problems.append(f"{env_name('renderer_batch_frames')} must be 1 or more")
        if settings is not None and settings.job_ttl_seconds < 1:
            problems.append(f"{env_name('job_ttl_seconds')} must be 1 or more")
        if settings is not None and settings.queue_lease_seconds <= 0:
            problems.append(f"{env_name('queue_lease_seconds')} must be more than 0")
        for name in ("queue_outage_budget_seconds", "render_deadline_seconds",
                     "train_deadline_seconds"):  # fmt: skip
            if settings is not None and getattr(settings, name) < 0:
                problems.append(f"{env_name(name)} must be 0 or more")
        if settings is not None and settings.queue_max_deliveries < 1:
            problems.append(f"{env_name('queue_max_deliveries')} must be 1 or more")
        if settings is not None and not (
            0 <= settings.queue_retry_base_seconds <= settings.queue_retry_max_seconds
        ):
            problems.append(
                f"{env_name('queue_retry_base_seconds')} must be 0 or more and at most "
                f"{env_name('queue_retry_max_seconds')}"
            )
        for name, low in (("render_shard_frames", 1), ("render_parallel_shards", 1),
                          ("broker_workers", 0), ("broker_train_workers", 0),
                          ("upload_max_mb", 1), ("result_url_seconds", 1),
                          ("quota_active_jobs", 0), ("quota_uploads_per_day", 0),
                          ("rate_submit_burst", 1), ("rate_upload_burst", 1),
                          ("rate_key_submit_burst", 1), ("rate_key_upload_burst", 1),
                          ("train_tar_max_mb", 1), ("train_tar_max_members", 1),
                          ("broker_max_watch_streams", 1), ("broker_max_upload_streams", 1),
                          ("broker_upload_idle_seconds", 0.1),
                          ("broker_watch_max_seconds", 1)):  # fmt: skip
            if settings is not None and getattr(settings, name) < low:
                problems.append(f"{env_name(name)} must be {low} or more")
        if settings is not None and settings.result_url_seconds > 7 * 24 * 3600:
            problems.append(f"{env_name('result_url_seconds')} must be at most 7 days (S3's limit)")
        if settings is not None and settings.broker_auth_cache_seconds < 0:
            problems.append(f"{env_name('broker_auth_cache_seconds')} must be 0 or more")
        if settings is not None:
            import ipaddress

            networks = settings.webhook_allowed_networks.split(",")
            for cidr in filter(None, (c.strip() for c in networks)):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    problems.append(
                        f"{env_name('webhook_allowed_networks')}: {cidr!r} is not a network "
                        "(a CIDR such as 10.0.0.0/8)"
                    )
        if settings is not None and bool(settings.tls_cert_file) != bool(settings.tls_key_file):
            problems.append(
                f"{env_name('tls_cert_file')} and {env_name('tls_key_file')} go together: "
                "set both or neither"
            )
        for name in (
            "rate_submit_per_second",
            "rate_upload_per_second",
            "rate_key_submit_per_second",
            "rate_key_upload_per_second",
        ):
            if settings is not None and getattr(settings, name) < 0:
                problems.append(f"{env_name(name)} must be 0 or more")
        if settings is not None:
            named = {p.strip() for p in settings.quota_train_presets.split(",") if p.strip()}
            if named - {"tiny", "cpu", "full"}:
                problems.append(
                    f"{env_name('quota_train_presets')}: unknown presets "
                    f"{', '.join(sorted(named - {'tiny', 'cpu', 'full'}))} (tiny, cpu, full)"
                )
        if settings is not None and not (
            0 < settings.webhook_retry_base_seconds <= settings.webhook_retry_max_seconds
        ):
            problems.append(
                f"{env_name('webhook_retry_base_seconds')} must be more than 0 and at most "
                f"{env_name('webhook_retry_max_seconds')}"
            )
        if settings is not None and settings.webhook_max_attempts < 1:
            problems.append(f"{env_name('webhook_max_attempts')} must be 1 or more")
        if settings is not None and settings.webhook_timeout_seconds <= 0:
            problems.append(f"{env_name('webhook_timeout_seconds')} must be more than 0")
        if settings is not None and settings.janitor_interval_seconds < 0:
            problems.append(f"{env_name('janitor_interval_seconds')} must be 0 or more")
        for name in ("retention_upload_seconds", "retention_result_seconds",
                     "dead_letter_max_entries", "dead_letter_retention_seconds"):  # fmt: skip
            if settings is not None and getattr(settings, name) < 0:
                problems.append(f"{env_name(name)} must be 0 or more")
        for name, low in (("sandbox_memory_mb", 64), ("sandbox_cpu_seconds", 1),
                          ("sandbox_timeout_seconds", 1)):  # fmt: skip
            if settings is not None and getattr(settings, name) < low:
                problems.append(f"{env_name(name)} must be {low} or more")
        if settings is not None and settings.stage_timeout_seconds <= 0:
            problems.append(f"{env_name('stage_timeout_seconds')} must be more than 0")
        if settings is not None and settings.store == "minio":
            problems += settings.missing("minio_endpoint", "minio_access_key", "minio_secret_key")
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return settings  # type: ignore[return-value]

    def missing(self, *names: str) -> list[str]:
        return [f"{env_name(n)} is required" for n in names if getattr(self, n) in ("", None)]

    def require(self, *names: str, by: str) -> Settings:
        """Fail fast when a component needs settings that are empty."""
        problems = self.missing(*names)
        if problems:
            raise ConfigError(f"{by} cannot start:\n  " + "\n  ".join(problems))
        return self

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked, safe to log."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if f.metadata["secret"] and value else _plain(value)
        return out


def env_name(field_name: str) -> str:
    return PREFIX + field_name.upper()


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _parse(raw: str, type_name: Any, choices: Iterable[str]) -> Any:
    type_name = getattr(type_name, "__name__", type_name)
    if type_name == "bool":
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError("expected a boolean (true/false)")
    if type_name == "int":
        try:
            return int(raw)
        except ValueError:
            raise ValueError("expected an integer") from None
    if type_name == "float":
        try:
            return float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
    if type_name == "Path":
        return Path(raw).expanduser()
    choices = tuple(choices)
    if choices:
        value = raw.upper() if all(c.isupper() for c in choices) else raw.lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value
    return raw


def markdown_table() -> str:
    """The documentation table of every setting (docs/configuration.md is built from it)."""
    rows = ["| Variable | Default | Description |", "| --- | --- | --- |"]
    for f in fields(Settings):
        default = f.default
        if f.name == "store_dir":
            default = "$XDG_DATA_HOME/talkingface/store (~/.local/share/…)"
        elif f.name == "cache_dir":
            default = "~/.cache/talkingface"
        elif isinstance(default, bool):
            default = str(default).lower()
        text = f.metadata["help"]
        if f.metadata["choices"]:
            text += " One of: " + ", ".join(f"`{c}`" for c in f.metadata["choices"]) + "."
        if f.metadata["aliases"]:
            text += " Also read from " + ", ".join(f"`{a}`" for a in f.metadata["aliases"]) + "."
        shown = f"`{default}`" if default != "" else "(empty)"
        rows.append(f"| `{env_name(f.name)}` | {shown} | {text} |")
    return "\n".join(rows) + "\n"
