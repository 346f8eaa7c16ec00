"""The `talkingface` command line: one console script for every journey (BRIEF §4).

Commands that a later release builds are listed so that scripts and docs can rely on their
names, but they exit with status 3 and say "not available yet" — never a fake success.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from talkingface import __version__

EXIT_NOT_AVAILABLE = 3

# command -> (one-line help, issue that builds it)
PLANNED: dict[str, tuple[str, int]] = {}
SERVICES = ("audio_features", "motion", "landmark_projection", "renderer", "broker")
SERVICE_ISSUES = {
    "audio_features": 4,
    "motion": 5,
    "landmark_projection": 6,
    "renderer": 7,
    "broker": 8,
}


def _not_available(what: str, issue: int) -> int:
    print(
        f"talkingface: {what} is not available yet (it lands with issue #{issue}).",
        file=sys.stderr,
    )
    return EXIT_NOT_AVAILABLE


def _cmd_config(args: argparse.Namespace) -> int:
    from talkingface.config import ConfigError, Settings, markdown_table

    if args.markdown:
        print(markdown_table(), end="")
        return 0
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"talkingface: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(settings.redacted(), indent=None if args.json else 2))
    return 0


def print_result(result: dict, as_json: bool) -> None:
    """Human summary, or with --json one JSON object as the last line."""
    if as_json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(json.dumps(result, indent=2, sort_keys=True))


def _cmd_synth(args: argparse.Namespace) -> int:
    from talkingface.data.synthtalk import preview
    from talkingface.data.synthtalk.avatar import build_avatar
    from talkingface.data.synthtalk.clip import build_clip
    from talkingface.data.synthtalk.corpus import build_corpus

    progress = not args.json and not args.quiet
    try:
        if args.product == "corpus":
            result = build_corpus(args.out, args.minutes, args.seed, progress=progress)
            if args.preview:
                result["preview"] = str(preview.corpus_preview(args.out))
        elif args.product == "clip":
            result = build_clip(
                args.avatar,
                args.out,
                args.seed,
                language=args.language,
                seconds=args.seconds,
                pose_start=args.pose_start,
                progress=progress,
            )
        else:
            result = build_avatar(
                args.out,
                args.seconds,
                args.seed,
                size=args.size,
                language=args.language,
                progress=progress,
            )
            if args.preview:
                result["preview"] = str(preview.avatar_preview(args.out))
    except (ValueError, FileExistsError) as exc:
        print(f"talkingface synth: {exc}", file=sys.stderr)
        return 2
    result["out"] = str(args.out)
    print_result(result, args.json)
    return 0


def _add_synth(sub: argparse._SubParsersAction) -> None:
    synth = sub.add_parser("synth", help="generate SynthTalk data (docs/synthtalk.md)")
    products = synth.add_subparsers(dest="product", metavar="PRODUCT", required=True)
    corpus = products.add_parser("corpus", help="many speakers: audio + landmarks")
    corpus.add_argument("--minutes", type=float, required=True, help="minutes of speech")
    avatar = products.add_parser("avatar", help="one person: video + audio + ground truth")
    avatar.add_argument("--seconds", type=float, required=True, help="seconds of video")
    avatar.add_argument("--size", type=int, default=256, help="frame side in pixels (256)")
    avatar.add_argument("--language", help="espeak language of the speech (default: by seed)")
    for p in (corpus, avatar):
        p.add_argument("--out", type=Path, required=True, help="new output directory")
        p.add_argument("--seed", type=int, default=0, help="same seed, same data (0)")
        p.add_argument("--preview", action="store_true", help="also write preview.mp4")
        p.add_argument("--json", action="store_true", help="print the manifest as JSON")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    clip = products.add_parser("clip", help="an avatar's person saying new sentences, new voice")
    clip.add_argument("--avatar", type=Path, required=True, help="the avatar's directory")
    clip.add_argument("--out", type=Path, required=True, help="new output directory")
    clip.add_argument("--seed", type=int, default=0, help="same seed, same clip (0)")
    clip.add_argument("--language", help="espeak language (default: the held-out one)")
    clip.add_argument("--seconds", type=float, default=5.0, help="seconds of speech (5)")
    clip.add_argument("--pose-start", type=int, default=0,
                      help="replay the avatar's pose track from this frame (0)")  # fmt: skip
    clip.add_argument("--json", action="store_true", help="print the manifest as JSON")
    clip.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_cmd_synth)


def _cmd_render(args: argparse.Namespace) -> int:
    from talkingface.config import ConfigError, Settings
    from talkingface.errors import TalkingFaceError
    from talkingface.pipeline import render_file

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"talkingface render: {exc}", file=sys.stderr)
        return 2
    motion = args.ckpt / "motion" if args.ckpt else settings.motion_checkpoint
    if not motion:
        print(
            "talkingface render: --ckpt CKPT_DIR (or TALKINGFACE_MOTION_CHECKPOINT) is required",
            file=sys.stderr,
        )
        return 2
    device = settings.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        bundle = args.avatar
        if not Path(bundle).is_dir():  # an avatar id: its latest published version
            from talkingface.pipeline import fetch_bundle
            from talkingface.storage import store_from_settings

            bundle = fetch_bundle(
                store_from_settings(settings), str(args.avatar), settings.cache_dir
            )
        result = render_file(
            bundle, args.audio, args.out, motion, k=args.k, alpha=args.alpha,
            seed=args.seed, temperature=args.temperature, pose_mode=args.pose_mode,
            pose_start=args.pose_start, hubert=settings.hubert_checkpoint or None,
            pitch_method=settings.pitch_method,
            device=device, max_seconds=settings.audio_max_seconds,
        )  # fmt: skip
    except TalkingFaceError as exc:
        print(f"talkingface render: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"talkingface render: {exc}", file=sys.stderr)
        return 2
    print_result(result, args.json)
    return 0


def _add_render(sub: argparse._SubParsersAction) -> None:
    render = sub.add_parser(
        "render", help="render one audio file with an avatar (bundle or id) to mp4, in-process"
    )
    render.add_argument(
        "--avatar",
        required=True,
        help="BUNDLE_DIR of `train avatar`, or the id of an avatar published in the store",
    )
    render.add_argument("--audio", type=Path, required=True, help="any audio or video file")
    render.add_argument("--out", type=Path, required=True, help="output .mp4")
    render.add_argument("--ckpt", type=Path, help="CKPT_DIR holding motion/ (default: settings)")
    render.add_argument("-k", type=int, default=20, help="projection neighbours (20)")
    render.add_argument("--alpha", type=float, default=0.5, help="projection blend (0.5)")
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--temperature", type=float, help="motion sampling temperature")
    render.add_argument("--pose-mode", choices=("pingpong", "loop"), default="pingpong")
    render.add_argument(
        "--pose-start",
        type=int,
        default=0,
        help="the pose replay's first frame in the avatar's track (0)",
    )
    render.add_argument("--json", action="store_true", help="one JSON object as the last line")
    render.set_defaults(func=_cmd_render)


# Built services: name -> (module with `standalone(settings)` and `app(settings)`, pb2_grpc
# module, gRPC service name).
BUILT_SERVICES = {
    "audio_features": (
        "talkingface.audio.servicer",
        "talkingface.v1.audio_features_pb2_grpc",
        "AudioFeatures",
    ),
    "motion": ("talkingface.motion.servicer", "talkingface.v1.motion_pb2_grpc", "Motion"),
    "landmark_projection": (
        "talkingface.landmarks.servicer",
        "talkingface.v1.landmark_projection_pb2_grpc",
        "LandmarkProjection",
    ),
    "renderer": ("talkingface.render.servicer", "talkingface.v1.renderer_pb2_grpc", "Renderer"),
    "broker": ("talkingface.broker.servicer", "talkingface.v1.broker_pb2_grpc", "Broker"),
}


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.service not in BUILT_SERVICES:
        return _not_available(f"the {args.service} service", SERVICE_ISSUES[args.service])
    import importlib

    from talkingface.config import ConfigError, Settings
    from talkingface.logs import configure_logging

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"talkingface serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.service, settings.log_level, settings.log_format)
    module_name, grpc_module, service = BUILT_SERVICES[args.service]
    module = importlib.import_module(module_name)
    if args.ray and args.service == "broker":
        print(
            "talkingface serve: the broker is not a Ray Serve application (it drives them); "
            "run it without --ray",
            file=sys.stderr,
        )
        return 2
    if not args.ray:
        try:
            server = module.standalone(settings)
        except ConfigError as exc:
            print(f"talkingface serve: {exc}", file=sys.stderr)
            return 2
        server.serve_forever()
        return 0
    from talkingface.serving.ray_app import deploy, servicer_function, start_local_serve
    from talkingface.serving.server import wait_for_stop_signal

    try:
        application = module.app(settings)
    except ConfigError as exc:
        print(f"talkingface serve: {exc}", file=sys.stderr)
        return 2
    start_local_serve(
        settings.grpc_port,
        [servicer_function(importlib.import_module(grpc_module), service)],
        ray_address=settings.ray_address,
    )
    deploy(application, args.service)
    print(
        f"{args.service}: Ray Serve gRPC on port {settings.grpc_port} "
        f"(metadata application={args.service})",
        flush=True,
    )
    wait_for_stop_signal()
    from ray import serve

    serve.shutdown()
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    import numpy as np

    from talkingface.audio.decode import decode_audio
    from talkingface.audio.features import extract
    from talkingface.audio.servicer import load_front_end
    from talkingface.config import ConfigError, Settings
    from talkingface.errors import TalkingFaceError

    try:
        settings = Settings.from_env()
        audio = decode_audio(args.audio.read_bytes(), settings.audio_max_seconds, args.audio.name)
        result = extract(audio, load_front_end(settings), args.pitch or settings.pitch_method)
    except (ConfigError, OSError) as exc:
        print(f"talkingface features: {exc}", file=sys.stderr)
        return 2
    except TalkingFaceError as exc:
        print(f"talkingface features: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    np.savez_compressed(args.out, **result.arrays())
    print_result(
        {
            "frames": result.frames(),
            "fps": 25,
            "feature_dim": int(result.features.shape[1]),
            "kind": result.kind,
            "duration_seconds": round(result.duration, 4),
            "silent": result.silent,
            "voiced_fraction": round(result.voiced_fraction, 4),
            "out": str(args.out),
        },
        args.json,
    )
    return 0


def _add_train_eval(sub: argparse._SubParsersAction) -> None:
    from talkingface.judge.commands import add_eval_arguments as add_judge_arguments
    from talkingface.judge.commands import judge_or
    from talkingface.motion.commands import (
        add_eval_arguments,
        add_train_arguments,
        cmd_eval,
        cmd_train,
    )

    train = sub.add_parser(
        "train",
        help="train syncnet|motion|postnet|avatar|judge",
        description=(
            "Train the sync expert or the motion model on a SynthTalk corpus "
            "(--data CORPUS --out CKPT_DIR), or one avatar's postnet (--data AVATAR_DIR "
            "--ckpt CKPT_DIR --out POSTNET_DIR), or an avatar's renderer, projection index and "
            "postnet (--data AVATAR_DIR --out BUNDLE_DIR [--ckpt CKPT_DIR] [--publish ID]). "
            "Or the independent lip-sync judge (--data CORPUS --out JUDGE_DIR). "
            "See docs/motion.md, docs/renderer.md and docs/judge.md."
        ),
    )
    train.add_argument("what", choices=("syncnet", "motion", "postnet", "avatar", "judge"))
    add_train_arguments(train)
    train.set_defaults(func=judge_or(cmd_train, "train"))
    evaluate = sub.add_parser(
        "eval",
        help="evaluate motion, projection, avatar, judge or an ingest against its truth, or "
        "all of them (--json)",
    )
    evaluate.add_argument(
        "what", choices=("motion", "projection", "avatar", "ingest", "judge", "all")
    )
    add_eval_arguments(evaluate)
    add_judge_arguments(evaluate)
    evaluate.set_defaults(func=judge_or(cmd_eval, "eval"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="talkingface",
        description="Audio-driven 3-D talking-face generation (GeneFace++) as a service fleet.",
    )
    parser.add_argument("--version", action="version", version=f"talkingface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    config = sub.add_parser("config", help="print the effective settings (secrets masked)")
    config.add_argument("--json", action="store_true", help="one JSON object on one line")
    config.add_argument(
        "--markdown", action="store_true", help="print the settings reference table"
    )
    config.set_defaults(func=_cmd_config)

    _add_synth(sub)
    from talkingface.bench.commands import add_bench

    add_bench(sub)

    serve = sub.add_parser("serve", help="run one fleet service as a standalone gRPC server")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument(
        "--ray", action="store_true", help="serve under Ray Serve's gRPC ingress (local Ray)"
    )
    serve.set_defaults(func=_cmd_serve)

    features = sub.add_parser("features", help="audio file -> 25 fps features, pitch, loudness")
    features.add_argument("--audio", type=Path, required=True, help="any audio or video file")
    features.add_argument("--out", type=Path, required=True, help="output .npz")
    features.add_argument("--pitch", choices=("dio", "harvest"), help="pitch tracker")
    features.add_argument("--json", action="store_true", help="one JSON object as the last line")
    features.set_defaults(func=_cmd_features)

    _add_train_eval(sub)
    _add_render(sub)

    from talkingface.broker.commands import add_avatar, add_job, add_submit, add_up, add_worker

    add_up(sub)
    add_submit(sub)
    add_job(sub)
    add_worker(sub)
    add_avatar(sub)

    from talkingface.broker.auth_commands import add_key, add_tenant

    add_tenant(sub)
    add_key(sub)

    from talkingface.demo import add_demo

    add_demo(sub)

    for name, (text, issue) in PLANNED.items():
        planned = sub.add_parser(name, help=f"{text} [not available yet]", add_help=False)
        planned.set_defaults(
            func=lambda _args, name=name, issue=issue: _not_available(
                f"`talkingface {name}`", issue
            )
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in PLANNED:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
