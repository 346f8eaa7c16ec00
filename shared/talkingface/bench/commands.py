"""`talkingface bench STAGE [--json]`: the stage benchmarks of `talkingface.bench` (each a
module with `run()`), their options and dispatch (bench/README.md)."""

from __future__ import annotations

import argparse
import sys

BUILT_BENCHES = (
    "synth",
    "features",
    "motion",
    "projection",
    "render",
    "ingest",
    "api",
    "chaos",
)  # modules of talkingface.bench


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    from talkingface.cli import print_result

    module = importlib.import_module(f"talkingface.bench.{args.stage}")
    if args.stage == "api":  # the broker API's benchmark takes its broker and load
        result = module.run(broker=args.broker, clients=args.clients, avatar=args.avatar)
    elif args.stage == "chaos":  # a fleet broken on a schedule while it renders
        result = module.run(args.jobs, seed=args.seed, s3_outage_s=args.s3_outage_s,
                            workers=args.workers)  # fmt: skip
        print_result(result, args.json)
        return 0 if module.passed(result) else 1
    elif args.stage == "render":  # random weights, or a trained avatar (against another)
        options = {"frames": args.frames} if args.frames else {}
        try:
            result = module.run(bundle=args.bundle, data=args.data, against=args.against,
                                threads=args.threads, **options)  # fmt: skip
        except (ValueError, FileNotFoundError) as exc:
            print(f"talkingface bench render: {exc}", file=sys.stderr)
            return 2
    elif args.stage == "ingest":  # a 20 s video, or --seconds of it
        if args.seconds is not None and args.seconds < 20:
            print("talkingface bench ingest: --seconds must be at least 20", file=sys.stderr)
            return 2
        result = module.run(**({"seconds": args.seconds} if args.seconds else {}))
    else:
        result = module.run()
    print_result(result, args.json)
    return 0


def add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmark a stage (--json)")
    bench.add_argument("stage", choices=BUILT_BENCHES)
    bench.add_argument("--json", action="store_true", help="one JSON object as the last line")
    bench.add_argument(
        "--broker",
        metavar="ADDRESS",
        help="api: measure this broker (default: start a private one)",
    )
    bench.add_argument(
        "--clients", type=int, default=200, help="api: concurrent clients (coroutines; default 200)"
    )
    bench.add_argument(
        "--avatar", default="", help="api with --broker: a READY avatar of TALKINGFACE_TENANT"
    )
    bench.add_argument("--jobs", type=int, default=200, help="chaos: jobs to submit (200)")
    bench.add_argument("--seed", type=int, default=0, help="chaos: picks the victims (0)")
    bench.add_argument(
        "--s3-outage-s", type=float, default=60.0, help="chaos: S3 outage, seconds (60)"
    )
    bench.add_argument("--workers", type=int, default=2, help="chaos: worker processes (2)")
    bench.add_argument("--bundle", help="render: time this trained avatar bundle (with --data)")
    bench.add_argument("--data", help="render with --bundle: the bundle's avatar directory")
    bench.add_argument(
        "--against",
        help="render with --bundle: another bundle of that avatar (e.g. trained by an older "
        "version) timed on cff8805's path as the reference",
    )
    bench.add_argument("--frames", type=int, help="render: distinct frames timed (default 8)")
    bench.add_argument("--threads", type=int, help="render: torch CPU threads (default: torch's)")
    bench.add_argument(
        "--seconds",
        type=float,
        help="ingest: the video's length (default 20; 180 times a 3-minute ingest itself "
        "instead of projecting it)",
    )
    bench.set_defaults(func=cmd_bench)
