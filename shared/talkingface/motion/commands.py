"""`talkingface train syncnet|motion|postnet` and `talkingface eval motion|projection`
(docs/motion.md, docs/landmark_projection.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from talkingface.motion.config import PRESETS, VARIANTS


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="SynthTalk corpus (syncnet, motion) or avatar directory (postnet, avatar)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="checkpoint directory (syncnet, motion), postnet directory, or avatar bundle "
        "directory (avatar)",
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        help="sizes and step counts (default: cpu; postnet: the motion model's)",
    )
    parser.add_argument(
        "--variant",
        choices=(*VARIANTS, "all"),
        default="full",
        help="motion: the table-3 training variant, or all three",
    )
    parser.add_argument(
        "--ckpt",
        type=Path,
        help="postnet (required), avatar (optional: also train the avatar's postnet): the "
        "CKPT_DIR holding motion/ and syncnet/",
    )
    parser.add_argument("--no-pitch", action="store_true", help="postnet: without pitch input")
    parser.add_argument(
        "--no-torso",
        action="store_true",
        help="avatar: no torso layer (the head-rigid model: head and torso masks drawn by the "
        "head field)",
    )
    parser.add_argument(
        "--publish",
        metavar="AVATAR_ID",
        help="postnet, avatar: also publish the result as a new version of this avatar in "
        "the object store",
    )
    parser.add_argument("--steps", type=int, help="override the preset's step count")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--resume", action="store_true", help="continue from train_state.pt")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: settings)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        help="SynthTalk corpus (motion) or avatar directory (projection, avatar, ingest: the "
        "ingested one); required but for `eval all`",
    )
    parser.add_argument(
        "--truth",
        type=Path,
        help="ingest: the SynthTalk avatar directory whose frames made the ingested video",
    )
    parser.add_argument(
        "--plan",
        default="cpu",
        help="all: the `talkingface demo --plan` whose cached models to evaluate (cpu)",
    )
    parser.add_argument("--root", type=Path, help="all: a demo cache folder instead of --plan's")
    parser.add_argument("--table3", action="store_true", help="all: the postnet rows too (slow)")
    parser.add_argument("--markdown", type=Path, help="all: also write the table as Markdown")
    parser.add_argument("--ckpt", type=Path, help="CKPT_DIR of `train motion` (required)")
    parser.add_argument(
        "--corpus",
        type=Path,
        help="projection: a SynthTalk corpus whose held-out-language audio is the OOD set",
    )
    parser.add_argument(
        "--postnet", type=Path, help="projection: the avatar's POSTNET_DIR (default: none)"
    )
    parser.add_argument(
        "-k", "--neighbours", dest="k", type=int, default=20, help="projection: K (default 20)"
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        help="avatar (required), projection (optional: count rendering failures): the "
        "BUNDLE_DIR `train avatar --out` wrote",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        help="avatar: evaluate this many val frames (default: all); projection: render this "
        "many frames per row (100)",
    )
    parser.add_argument(
        "--align-poses",
        action="store_true",
        help="avatar: also score each frame with its pose fitted to its pixels, the field "
        "frozen (avatars made from video: docs/renderer.md)",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="avatar: also train and evaluate N = 2, 3, 4 renderers (table 5; slow)",
    )
    parser.add_argument(
        "--preset", choices=PRESETS, default="cpu", help="avatar --ablation: preset (cpu)"
    )
    parser.add_argument("--steps", type=int, help="avatar --ablation: steps per renderer")
    parser.add_argument(
        "--postnet-steps",
        type=int,
        help="steps of each per-speaker postnet (default: the model's preset)",
    )
    parser.add_argument("--no-postnet", action="store_true", help="skip the postnet rows")
    parser.add_argument(
        "--postnet-speakers", type=int, default=4,
        help="test speakers that get per-speaker postnets for table 3 (0 = all; default 4)",
    )  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="one JSON object as the last line")


def _settings():
    from talkingface.config import Settings

    return Settings.from_env()


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(json.dumps(result, indent=2, sort_keys=True))


def _fail(command: str, exc: BaseException | str) -> int:
    print(f"talkingface {command}: {exc}", file=sys.stderr)
    return 2


def cmd_train(args: argparse.Namespace) -> int:
    from talkingface.config import ConfigError
    from talkingface.data.synthtalk.fileformat import FormatError
    from talkingface.errors import TalkingFaceError
    from talkingface.logs import configure_logging

    try:
        settings = _settings()
    except ConfigError as exc:
        return _fail("train", exc)
    configure_logging("train", settings.log_level, settings.log_format, stderr=True)
    device = args.device or settings.device
    try:
        if args.what == "postnet":
            result = _train_postnet(args, settings, device)
        elif args.what == "avatar":
            from talkingface.render.commands import train_avatar

            result = train_avatar(args, settings, device)
        else:
            result = _train_generic(args, settings, device)
    except (ValueError, FileNotFoundError, FileExistsError, FormatError) as exc:
        return _fail(f"train {args.what}", exc)
    except TalkingFaceError as exc:
        return _fail(f"train {args.what}", f"{exc.code}: {exc.message}")
    _emit(result, args.json)
    return 0


def _train_generic(args, settings, device: str) -> dict[str, Any]:
    from talkingface.motion import checkpoint as ck
    from talkingface.motion.train import default_config, prepare_corpus, train_motion, train_syncnet

    started = time.perf_counter()
    args.preset = args.preset or "cpu"
    hubert = settings.hubert_checkpoint or None
    _, corpus = prepare_corpus(
        args.data, settings.cache_dir, hubert, settings.pitch_method, progress=not args.quiet
    )
    result: dict[str, Any] = {
        "out": str(args.out),
        "preset": args.preset,
        "train_utterances": len(corpus.train),
        "train_seconds_of_audio": round(sum(u.frames for u in corpus.train) / 25, 1),
    }
    if args.what == "syncnet":
        config = default_config(args.preset, "full", args.seed, args.steps)
        result["validation"] = train_syncnet(
            corpus, args.out, config, args.resume, not args.quiet, device
        )
        result["model_dir"] = str(ck.model_dir(args.out, "syncnet"))
    else:
        variants = VARIANTS if args.variant == "all" else (args.variant,)
        result["variants"] = {}
        for variant in variants:
            config = default_config(args.preset, variant, args.seed, args.steps)
            t0 = time.perf_counter()
            validation = train_motion(corpus, args.out, config, args.resume, not args.quiet, device)
            result["variants"][variant] = {
                "model_dir": str(ck.model_dir(args.out, "motion", variant)),
                "validation": validation,
                "seconds": round(time.perf_counter() - t0, 1),
            }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _train_postnet(args, settings, device: str) -> dict[str, Any]:
    from talkingface.motion import checkpoint as ck
    from talkingface.motion.adapt import avatar_target, postnet_config, train_postnet
    from talkingface.motion.infer import MotionModel
    from talkingface.motion.metrics import motion_metrics
    from talkingface.motion.train import load_syncnet

    if args.ckpt is None:
        raise ValueError("train postnet needs --ckpt CKPT_DIR (the trained motion model)")
    if args.publish:
        from talkingface.bundle import avatar_prefix

        avatar_prefix(args.publish)  # a bad id fails now, not after training
    started = time.perf_counter()
    model = MotionModel.load(ck.model_dir(args.ckpt, "motion"), device=device)
    hubert = settings.hubert_checkpoint or None
    train_part, val_part, mean_face = avatar_target(args.data, hubert, settings.pitch_method)
    if not train_part:
        raise ValueError(f"{args.data}: the avatar has too few training frames")
    if train_part[0].features.shape[1] != model.feature_dim:
        raise ValueError(
            f"the avatar's features are {train_part[0].features.shape[1]}-wide but the motion "
            f"model expects {model.feature_dim} ({model.front_end})"
        )
    config = postnet_config(model.config, args.preset, args.steps, args.seed)
    sync = load_syncnet(args.ckpt, model.device)
    pm, validation = train_postnet(
        model,
        train_part,
        val_part,
        mean_face,
        args.out,
        config,
        sync,
        use_pitch=not args.no_pitch,
        progress=not args.quiet,
    )
    result: dict[str, Any] = {
        "out": str(args.out),
        "validation": validation,
        "postnet_version": pm.version,
        "motion_version": model.version,
    }
    if val_part:
        without = [
            model.generate(u.features, u.f0_bins, seed=0, mean_face=mean_face) for u in val_part
        ]
        result["validation_without_postnet"] = motion_metrics(without, [u.lm3d for u in val_part])
    if args.publish:
        from talkingface.landmarks.bundle import avatar_index, projection_files
        from talkingface.motion.bundle import publish_postnet
        from talkingface.storage import store_from_settings

        # The version also carries the avatar's projection index (the renderer's part of
        # the bundle lands with `train avatar`).
        projection = projection_files(avatar_index(args.data))
        version = publish_postnet(store_from_settings(settings), args.publish, args.out, projection)
        result["published"] = {
            "avatar_id": args.publish,
            "version": version,
            "files": sorted([*projection, "postnet/model.safetensors", "postnet/config.json"]),
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def cmd_eval(args: argparse.Namespace) -> int:
    from talkingface.config import ConfigError
    from talkingface.data.synthtalk.fileformat import FormatError
    from talkingface.logs import configure_logging

    if args.what == "all":
        return _eval_all(args)
    if args.data is None:
        return _fail(f"eval {args.what}", ValueError("--data is required"))
    if args.what == "avatar":
        return _eval_avatar(args)
    if args.what == "ingest":
        return _eval_ingest(args)
    if args.ckpt is None:
        return _fail(f"eval {args.what}", ValueError("--ckpt CKPT_DIR is required"))
    try:
        settings = _settings()
    except ConfigError as exc:
        return _fail("eval", exc)
    configure_logging("eval", settings.log_level, settings.log_format, stderr=True)
    if args.what == "projection":
        return _eval_projection(args, settings)
    from talkingface.motion.evaluate import evaluate

    try:
        result = evaluate(
            args.data,
            args.ckpt,
            settings.cache_dir,
            settings.hubert_checkpoint or None,
            args.postnet_steps,
            not args.no_postnet,
            not args.quiet,
            args.postnet_speakers,
            judge_dir=getattr(args, "judge", None),
        )
    except (ValueError, FileNotFoundError, FormatError) as exc:
        return _fail("eval motion", exc)
    _emit(result, args.json)
    return 0


def _eval_projection(args: argparse.Namespace, settings) -> int:
    from talkingface.data.synthtalk.fileformat import FormatError
    from talkingface.landmarks.evaluate import RENDER_FRAMES, evaluate

    if args.k <= 0:
        return _fail("eval projection", ValueError(f"-k must be 1 or more, got {args.k}"))
    try:
        result = evaluate(
            args.data,
            args.ckpt,
            settings.hubert_checkpoint or None,
            settings.pitch_method,
            corpus=args.corpus,
            postnet_dir=args.postnet,
            k=args.k,
            device=settings.device,
            judge_dir=getattr(args, "judge", None),
            bundle_dir=args.bundle,
            render_frames=args.max_frames or RENDER_FRAMES,
        )
    except (ValueError, FileNotFoundError, FormatError) as exc:
        return _fail("eval projection", exc)
    _emit(result, args.json)
    return 0


def _eval_all(args: argparse.Namespace) -> int:
    """`talkingface eval all [--plan cpu | --root DIR] [--table3] [--markdown F] [--json]`."""
    from talkingface.config import ConfigError
    from talkingface.data.synthtalk.fileformat import FormatError
    from talkingface.demo import PLANS
    from talkingface.eval_all import demo_root, evaluate_all, markdown
    from talkingface.logs import configure_logging

    try:
        settings = _settings()
    except ConfigError as exc:
        return _fail("eval all", exc)
    configure_logging("eval", settings.log_level, settings.log_format, stderr=True)
    if args.root is None and args.plan not in PLANS:
        return _fail("eval all", f"--plan must be one of {', '.join(PLANS)}")
    root = args.root or demo_root(settings, args.plan)
    say = (lambda _: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    try:
        result = evaluate_all(root, settings, table3=args.table3,
                              max_frames=args.max_frames, say=say)  # fmt: skip
    except (ValueError, FileNotFoundError, FormatError) as exc:
        return _fail("eval all", exc)
    if args.markdown:
        args.markdown.write_text(markdown(result))
    if args.json:
        _emit(result, True)
    else:
        print(markdown(result))
    return 0


def _eval_ingest(args: argparse.Namespace) -> int:
    from talkingface.data.synthtalk.fileformat import FormatError
    from talkingface.face.evaluate import evaluate_ingest

    if args.truth is None:
        return _fail("eval ingest", ValueError("--truth SYNTHTALK_AVATAR_DIR is required"))
    try:
        result = evaluate_ingest(args.data, args.truth)
    except (ValueError, KeyError, OSError, FormatError) as exc:
        return _fail("eval ingest", exc)
    _emit(result, args.json)
    return 0


def _eval_avatar(args: argparse.Namespace) -> int:
    from talkingface.config import ConfigError
    from talkingface.data.synthtalk.fileformat import FormatError
    from talkingface.logs import configure_logging
    from talkingface.render.evaluate import ablation, evaluate

    if args.bundle is None:
        return _fail("eval avatar", ValueError("--bundle BUNDLE_DIR is required"))
    try:
        settings = _settings()
    except ConfigError as exc:
        return _fail("eval", exc)
    configure_logging("eval", settings.log_level, settings.log_format, stderr=True)
    device = settings.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        result = evaluate(args.data, args.bundle, args.max_frames, device,
                          align=args.align_poses)  # fmt: skip
        if args.ablation:
            result["table5"] = ablation(
                args.data, args.preset, args.steps, max_frames=args.max_frames,
                device=device, progress=not args.quiet,
            )  # fmt: skip
    except (ValueError, FileNotFoundError, FormatError) as exc:
        return _fail("eval avatar", exc)
    _emit(result, args.json)
    return 0
