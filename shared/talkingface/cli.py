"""The `talkingface` command line: one console script for every journey (BRIEF §4).

Commands that a later release builds are listed so that scripts and docs can rely on their
names, but they exit with status 3 and say "not available yet" — never a fake success.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from talkingface import __version__

EXIT_NOT_AVAILABLE = 3

# command -> (one-line help, issue that builds it)
PLANNED: dict[str, tuple[str, int]] = {
    "synth": ("generate SynthTalk corpora and avatars (synth corpus|avatar)", 3),
    "features": ("audio file -> 25 fps features, pitch and loudness (.npz)", 4),
    "train": ("train syncnet|motion|postnet|avatar", 5),
    "eval": ("evaluate motion|projection|avatar (--json)", 5),
    "bench": ("benchmark synth|features|motion|projection|render (--json)", 3),
    "render": ("render one audio file with an avatar bundle to mp4, in-process", 8),
    "up": ("start the whole fleet on this machine", 8),
    "submit": ("submit a render job to a running fleet and download the mp4", 8),
    "demo": ("the end-to-end demo that `make demo` runs", 8),
}
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


def _cmd_serve(args: argparse.Namespace) -> int:
    return _not_available(f"the {args.service} service", SERVICE_ISSUES[args.service])


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

    serve = sub.add_parser("serve", help="run one fleet service as a standalone gRPC server")
    serve.add_argument("service", choices=SERVICES)
    serve.set_defaults(func=_cmd_serve)

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
