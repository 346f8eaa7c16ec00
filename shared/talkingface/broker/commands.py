"""The broker's commands: `talkingface up`, `submit`, `worker` and `avatar create|show`.

- `up` starts the whole fleet on this machine (`talkingface.localfleet`), prints the
  endpoints and runs until SIGINT/SIGTERM.
- `submit` uploads an audio file, submits a render job, shows its progress and downloads the
  mp4 (exit 0 when it succeeded, 1 when the job failed or was cancelled, 2 for bad usage or
  a refused request).
- `worker` runs broker workers alone (no API), for fleets that scale them apart.
- `avatar create` trains a new avatar from a SynthTalk avatar directory through the broker;
  `avatar show` prints one avatar.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from talkingface.config import ConfigError, Settings
from talkingface.serving.server import wait_for_stop_signal

EXIT_FAILED_JOB = 1
EXIT_USAGE = 2


def client_api_key(settings: Settings) -> str:
    from talkingface.localfleet import client_api_key as key

    return key(settings)


def _settings(command: str) -> Settings | None:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"talkingface {command}: {exc}", file=sys.stderr)
        return None


# --- up --------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    import dataclasses

    from talkingface.localfleet import LocalFleet, fleet_key_path, local_auth
    from talkingface.logs import configure_logging

    settings = _settings("up")
    if settings is None:
        return EXIT_USAGE
    settings = local_auth(settings)  # API keys on unless TALKINGFACE_BROKER_AUTH says
    if args.ckpt is not None:
        settings = dataclasses.replace(settings, motion_checkpoint=str(args.ckpt / "motion"))
    configure_logging("up", settings.log_level, settings.log_format)
    try:
        fleet = LocalFleet(settings, config_path=args.config, broker_port=args.port)
        print("talkingface up: starting Redis, Ray Serve (4 stages) and the broker ...",
              file=sys.stderr, flush=True)  # fmt: skip
        fleet.start()
    except ConfigError as exc:
        print(f"talkingface up: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        endpoints = fleet.endpoints()
        if args.json:
            print(json.dumps(endpoints, sort_keys=True), flush=True)
        else:
            print("talkingface fleet is up:", flush=True)
            for name, value in endpoints.items():
                print(f"  {name:15s} {value}", flush=True)
            if fleet.api_key:
                print(f"the fleet's API key (client commands on this machine find it in "
                      f"{fleet_key_path(fleet.settings)}; elsewhere: export "
                      f"TALKINGFACE_API_KEY={fleet.api_key})", flush=True)  # fmt: skip
            print(f"submit with: talkingface submit --broker {fleet.broker_address} "
                  "--avatar ID --audio FILE --out FILE.mp4   (Ctrl-C stops the fleet)",
                  flush=True)  # fmt: skip
        wait_for_stop_signal()
    finally:
        fleet.stop()
    return 0


def add_up(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start the whole fleet on this machine (Ctrl-C stops it)")
    up.add_argument("--ckpt", type=Path, help="CKPT_DIR holding motion/ (default: settings)")
    up.add_argument("--config", type=Path, help="serve config (services/serve_config.yaml)")
    up.add_argument("--port", type=int, help="broker gRPC port (TALKINGFACE_GRPC_PORT)")
    up.add_argument("--json", action="store_true", help="print the endpoints as one JSON line")
    up.set_defaults(func=cmd_up)


# --- submit ----------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    from talkingface.broker.client import BrokerClient
    from talkingface.errors import TalkingFaceError

    settings = _settings("submit")
    if settings is None:
        return EXIT_USAGE
    if not args.audio.is_file():
        print(f"talkingface submit: no audio file {args.audio}", file=sys.stderr)
        return EXIT_USAGE
    address = args.broker or settings.broker_address
    with BrokerClient(address, args.tenant,
                      api_key=client_api_key(settings)) as client:  # fmt: skip
        try:
            client.wait_ready(args.connect_timeout)
            result = submit_and_download(
                client, args.avatar, args.audio, args.out, options=render_options(args),
                idempotency_key=args.idempotency_key or "", progress=not args.json,
            )  # fmt: skip
        except TalkingFaceError as exc:
            print(f"talkingface submit: {exc.code}: {exc.message}", file=sys.stderr)
            return EXIT_USAGE
    if result["state"] != "SUCCEEDED":
        error = result.get("error", {})
        print(f"talkingface submit: job {result['job_id']} {result['state']}: "
              f"{error.get('code', '')}: {error.get('message', '')}", file=sys.stderr)  # fmt: skip
    print(json.dumps(result, sort_keys=True) if args.json else json.dumps(result, indent=2))
    return 0 if result["state"] == "SUCCEEDED" else EXIT_FAILED_JOB


def render_options(args: argparse.Namespace):
    from talkingface.v1 import broker_pb2, renderer_pb2

    options = broker_pb2.RenderOptions(
        k=args.k or 0, seed=args.seed, temperature=args.temperature or 0.0,
        resolution=args.resolution or 0, pose_start=getattr(args, "pose_start", 0) or 0,
        pose_mode={"pingpong": renderer_pb2.POSE_MODE_PING_PONG,
                   "loop": renderer_pb2.POSE_MODE_LOOP}[args.pose_mode],
    )  # fmt: skip
    if args.alpha is not None:
        options.alpha = args.alpha
    return options


def submit_and_download(
    client,
    avatar_id: str,
    audio: Path,
    out: Path,
    *,
    options=None,
    idempotency_key: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Submit, follow with a progress bar, download on success; a summary of the job."""
    job = client.submit_render(
        avatar_id, audio=audio, options=options, idempotency_key=idempotency_key
    )
    job = follow(client, job, progress)
    summary = job_summary(job)
    if summary["state"] == "SUCCEEDED":
        summary["out"] = str(client.download(job, out))
    return summary


def follow(client, job, progress: bool = True):
    """Wait for the job to end, with a progress bar (stage, percent, elapsed) on stderr."""
    from tqdm import tqdm

    from talkingface.broker.client import stage_name, state_name

    bar = tqdm(total=100, desc="queued", unit="%", disable=not progress, dynamic_ncols=True,
               bar_format="{desc:>22s} {percentage:3.0f}%|{bar}| {elapsed}")  # fmt: skip

    def on_update(update) -> None:
        name = stage_name(update.stage) or state_name(update.state)
        bar.set_description_str(name.lower())
        bar.n = round(update.progress * 100, 1)
        bar.refresh()

    try:
        return client.wait(job.job_id, on_update)
    finally:
        bar.close()


def job_summary(job) -> dict[str, Any]:
    from talkingface.broker.client import state_name
    from talkingface.v1 import common_pb2

    summary: dict[str, Any] = {"job_id": job.job_id, "state": state_name(job.state),
                               "attempt": job.attempt}  # fmt: skip
    if job.HasField("error"):
        summary["error"] = {"code": common_pb2.ErrorCode.Name(job.error.code),
                            "message": job.error.message}  # fmt: skip
    if job.HasField("render"):
        render = job.render
        summary.update(frames=render.frames, duration_seconds=render.duration_seconds,
                       video_key=render.video.key, metrics=dict(render.metrics))  # fmt: skip
    if job.HasField("avatar"):
        summary.update(avatar_id=job.avatar.avatar_id, version=job.avatar.version,
                       metrics=dict(job.avatar.metrics))  # fmt: skip
    return summary


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", help="broker host:port (TALKINGFACE_BROKER_ADDRESS)")
    parser.add_argument("--tenant", default="default",
                        help="tenant (x-talkingface-tenant; ignored when the broker checks "
                        "API keys: TALKINGFACE_API_KEY's key names it)")  # fmt: skip
    parser.add_argument("--connect-timeout", type=float, default=30.0,
                        help="seconds to wait for the broker (30)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")


def add_submit(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser(
        "submit", help="submit a render job to a running fleet, show progress, download the mp4"
    )
    submit.add_argument("--avatar", required=True, help="avatar id (see `talkingface avatar`)")
    submit.add_argument("--audio", type=Path, required=True, help="any audio or video file")
    submit.add_argument("--out", type=Path, required=True, help="output .mp4")
    submit.add_argument("-k", type=int, help="projection neighbours (default 20)")
    submit.add_argument("--alpha", type=float, help="projection blend in [0, 1] (default 0.5)")
    submit.add_argument("--seed", type=int, default=0)
    submit.add_argument("--temperature", type=float, help="motion sampling temperature")
    submit.add_argument("--pose-mode", choices=("pingpong", "loop"), default="pingpong")
    submit.add_argument(
        "--pose-start",
        type=int,
        default=0,
        help="the pose replay's first frame in the avatar's track (0)",
    )
    submit.add_argument("--resolution", type=int, help="output side in pixels (the avatar's)")
    submit.add_argument("--idempotency-key", help="the same key returns the same job")
    _add_client_options(submit)
    submit.set_defaults(func=cmd_submit)


# --- job -------------------------------------------------------------------------------------


def cmd_job(args: argparse.Namespace) -> int:
    """`talkingface job get|watch|cancel|delete JOB_ID` and `job list [--state S]`."""
    from talkingface.broker.client import BrokerClient, state_name
    from talkingface.errors import TalkingFaceError
    from talkingface.v1 import broker_pb2 as pb

    settings = _settings("job")
    if settings is None:
        return EXIT_USAGE
    if args.action != "list" and not args.job_id:
        print(f"talkingface job {args.action}: a JOB_ID is required", file=sys.stderr)
        return EXIT_USAGE
    with BrokerClient(args.broker or settings.broker_address, args.tenant,
                      api_key=client_api_key(settings)) as client:  # fmt: skip
        try:
            client.wait_ready(args.connect_timeout)
            if args.action == "list":
                state = pb.JobState.Value(f"JOB_STATE_{args.state}") if args.state else 0
                jobs = client.list_jobs(state, args.limit)
                rows = [job_summary(job) for job in jobs]
                if args.json:
                    print(json.dumps(rows, sort_keys=True))
                else:
                    print(f"{'JOB ID':32s}  {'STATE':10s} ATTEMPT")
                    for row in rows:
                        print(f"{row['job_id']:32s}  {row['state']:10s} {row['attempt']}")
                return 0
            if args.action == "delete":
                reply = client.delete_job(args.job_id)
                result: dict[str, Any] = {
                    "job_id": reply.job_id, "state": state_name(reply.state),
                    "cancelled": reply.cancelled, "objects_deleted": reply.objects_deleted,
                }  # fmt: skip
                text = (f"job {reply.job_id} deleted ({result['state'].lower()}"
                        f"{', cancelled first' if reply.cancelled else ''}; "
                        f"{reply.objects_deleted} objects removed)")  # fmt: skip
                print(json.dumps(result, sort_keys=True) if args.json else text)
                return 0
            if args.action == "cancel":
                job = client.cancel_job(args.job_id)
            elif args.action == "watch":
                job = follow(client, client.get_job(args.job_id), progress=not args.json)
            else:
                job = client.get_job(args.job_id)
        except TalkingFaceError as exc:
            print(f"talkingface job {args.action}: {exc.code}: {exc.message}", file=sys.stderr)
            return EXIT_USAGE
    result = job_summary(job)
    print(json.dumps(result, sort_keys=True) if args.json else json.dumps(result, indent=2))
    return 0


def add_job(sub: argparse._SubParsersAction) -> None:
    job = sub.add_parser(
        "job", help="look at, follow, cancel or delete jobs of a running fleet, or list them"
    )
    job.add_argument("action", choices=("get", "watch", "cancel", "delete", "list"),
                     help="delete removes the record and the result (cancelling a job that "
                          "has not ended); list shows the tenant's jobs, newest first")  # fmt: skip
    job.add_argument("job_id", nargs="?", default="", help="the job (all but list)")
    job.add_argument("--state", choices=("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"),
                     help="list: only jobs in this state")  # fmt: skip
    job.add_argument("--limit", type=int, default=50, help="list: at most this many (50)")
    _add_client_options(job)
    job.set_defaults(func=cmd_job)


# --- avatar ----------------------------------------------------------------------------------


def cmd_avatar(args: argparse.Namespace) -> int:
    from talkingface.broker.client import BrokerClient
    from talkingface.errors import TalkingFaceError

    settings = _settings("avatar")
    if settings is None:
        return EXIT_USAGE
    if args.action == "ingest":
        return _ingest(args, settings)
    with BrokerClient(args.broker or settings.broker_address, args.tenant,
                      api_key=client_api_key(settings)) as client:  # fmt: skip
        try:
            client.wait_ready(args.connect_timeout)
            if args.action == "show":
                result = avatar_summary(client.get_avatar(args.avatar_id))
                print(json.dumps(result, sort_keys=True) if args.json
                      else json.dumps(result, indent=2))  # fmt: skip
                return 0
            if args.action == "import":
                if not args.bundle or not args.bundle.is_dir():
                    print("talkingface avatar import: --bundle BUNDLE_DIR is required",
                          file=sys.stderr)  # fmt: skip
                    return EXIT_USAGE
                job = client.import_avatar(args.bundle, args.name or "")
            elif args.video is not None:
                if not args.video.is_file():
                    print(f"talkingface avatar create: no file {args.video}", file=sys.stderr)
                    return EXIT_USAGE
                job = client.create_avatar_from_video(args.video, args.preset or "",
                                                      args.name or "")  # fmt: skip
            elif not args.data or not args.data.is_dir():
                print("talkingface avatar create: --video FILE or --data AVATAR_DIR is required",
                      file=sys.stderr)  # fmt: skip
                return EXIT_USAGE
            else:
                job = client.create_avatar(args.data, args.preset or "", args.name or "")
            doing = "importing" if args.action == "import" else "training"
            print(f"avatar {job.avatar_id}: {doing} (job {job.job_id})", file=sys.stderr)
            job = follow(client, job, progress=not args.json)
        except TalkingFaceError as exc:
            print(f"talkingface avatar: {exc.code}: {exc.message}", file=sys.stderr)
            return EXIT_USAGE
    result = job_summary(job)
    print(json.dumps(result, sort_keys=True) if args.json else json.dumps(result, indent=2))
    return 0 if result["state"] == "SUCCEEDED" else EXIT_FAILED_JOB


def _ingest(args: argparse.Namespace, settings) -> int:
    """`talkingface avatar ingest`: a video file -> an avatar directory, on this machine."""
    from talkingface.errors import TalkingFaceError
    from talkingface.face.ingest import ingest

    if not args.video or not args.out:
        print("talkingface avatar ingest: --video FILE and --out DIR are required",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    last = [""]

    def progress(stage: str, fraction: float) -> None:
        if not (args.json or args.quiet) and stage != last[0]:
            print(f"ingest: {stage} ({100 * fraction:.0f} %)", file=sys.stderr, flush=True)
            last[0] = stage

    try:
        report = ingest(
            args.video, args.out, size=args.size, fov_deg=args.fov,
            min_seconds=settings.video_min_seconds, max_seconds=settings.video_max_seconds,
            progress=progress, preview=args.preview,
        )  # fmt: skip
    except TalkingFaceError as exc:
        print(f"talkingface avatar ingest: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"out": str(args.out), **report}, sort_keys=True))
    else:
        print(f"avatar directory {args.out}: {report['frames']['in']} frames; train it with "
              f"`talkingface train avatar --data {args.out} --out BUNDLE`")  # fmt: skip
        for warning in report["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def avatar_summary(avatar) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(avatar, preserving_proto_field_name=True)


def add_avatar(sub: argparse._SubParsersAction) -> None:
    avatar = sub.add_parser(
        "avatar",
        help="ingest a video into an avatar directory (here), or create (train), import (a "
        "bundle trained elsewhere) or show an avatar in a running fleet",
    )
    avatar.add_argument("action", choices=("ingest", "create", "import", "show"))
    avatar.add_argument("avatar_id", nargs="?", default="", help="the avatar to show")
    avatar.add_argument("--data", type=Path, help="create: a SynthTalk avatar directory")
    avatar.add_argument("--preset", choices=("tiny", "cpu", "full"), help="create: (cpu)")
    avatar.add_argument("--name", help="create, import: display name")
    avatar.add_argument("--bundle", type=Path, help="import: a trained avatar bundle directory")
    avatar.add_argument("--video", type=Path, help="ingest, create: the person's talking video")
    avatar.add_argument("--out", type=Path, help="ingest: the avatar directory to write")
    avatar.add_argument("--size", type=int, default=256, help="ingest: frame size (256)")
    avatar.add_argument(
        "--preview", action="store_true", help="ingest: also preview.mp4 (crop | marks | plate)"
    )
    avatar.add_argument(
        "--fov", type=float, default=40.0, help="ingest: the camera's vertical field of view (40)"
    )
    avatar.add_argument("--quiet", action="store_true", help="ingest: no progress lines")
    _add_client_options(avatar)
    avatar.set_defaults(func=cmd_avatar)


# --- worker ----------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from talkingface.broker.service import check_redis_persistence, redis_client, worker_pool
    from talkingface.logs import configure_logging

    settings = _settings("worker")
    if settings is None:
        return EXIT_USAGE
    configure_logging("worker", settings.log_level, settings.log_format)
    try:
        client = redis_client(settings)
    except ConfigError as exc:
        print(f"talkingface worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    check_redis_persistence(client, settings, strict=False)  # the broker refuses; we warn
    queues = set(args.queues.split(","))
    unknown = queues - {"render", "train"}
    if unknown:
        print(f"talkingface worker: unknown queues {sorted(unknown)}", file=sys.stderr)
        return EXIT_USAGE
    pool = worker_pool(
        settings, client,
        render_threads=args.threads if "render" in queues else 0,
        train_threads=args.threads if "train" in queues else 0,
    )  # fmt: skip
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    pool.start()
    print(f"talkingface worker: {pool.size} worker(s) on {', '.join(sorted(queues))}",
          file=sys.stderr, flush=True)  # fmt: skip
    wait_for_stop_signal()
    pool.stop(settings.shutdown_grace_s)
    return 0


def add_worker(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser("worker", help="run broker workers (no API) until SIGTERM")
    worker.add_argument("--queues", default="render,train", help="render,train (both)")
    worker.add_argument("--threads", type=int, default=1, help="workers per queue (1)")
    worker.set_defaults(func=cmd_worker)
