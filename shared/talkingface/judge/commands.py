"""`talkingface train judge` and `talkingface eval judge` (docs/judge.md).

The `train` and `eval` parsers belong to `talkingface.cli` (their other arguments come from
`talkingface.motion.commands`); `judge_or` routes `what == "judge"` here and everything else
to the motion commands, and `add_eval_arguments` adds the one option only the judge needs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Command = Callable[[argparse.Namespace], int]


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge", type=Path, help="judge: the JUDGE_DIR of `train judge`")


def judge_or(fallback: Command, verb: str) -> Command:
    """A command function: `train judge` / `eval judge` here, any other `what` to fallback."""

    def run(args: argparse.Namespace) -> int:
        if args.what != "judge":
            return fallback(args)
        return cmd_train(args) if verb == "train" else cmd_eval(args)

    return run


def _emit(result: dict[str, Any], as_json: bool) -> None:
    print(json.dumps(result, sort_keys=True, indent=None if as_json else 2))


def _fail(command: str, exc: BaseException | str) -> int:
    print(f"talkingface {command}: {exc}", file=sys.stderr)
    return 2


def _setup(command: str):
    from talkingface.config import Settings
    from talkingface.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(command, settings.log_level, settings.log_format, stderr=True)
    return settings


def _utterances(data: Path, settings, progress: bool):
    from talkingface.motion.data import load_corpus

    hubert = settings.hubert_checkpoint or None
    utts = load_corpus(data, settings.cache_dir, hubert, settings.pitch_method, progress=progress)
    return utts, ("hubert" if hubert else "logmel")


def cmd_train(args: argparse.Namespace) -> int:
    """`talkingface train judge --data CORPUS --out DIR [--preset] [--steps] [--seed]`."""
    from talkingface.config import ConfigError
    from talkingface.data.synthtalk.fileformat import FormatError
    from talkingface.judge.config import preset
    from talkingface.judge.train import train_judge

    try:
        settings = _setup("train")
        config = preset(args.preset or "cpu", args.steps)
        started = time.perf_counter()
        utts, front_end = _utterances(args.data, settings, not args.quiet)
        extracted = time.perf_counter() - started
        result = train_judge(
            utts, args.data, args.out, config, args.seed, front_end, progress=not args.quiet
        )
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, FormatError) as exc:
        return _fail("train judge", exc)
    result["preset"] = args.preset or "cpu"
    result["feature_seconds"] = round(extracted, 1)
    result["seconds"] = round(time.perf_counter() - started, 1)
    _emit(result, args.json)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """`talkingface eval judge --judge DIR --data CORPUS`: the truth report on the corpus's
    `test` utterances, after checking that the corpus is disjoint from the judge's."""
    from talkingface.config import ConfigError
    from talkingface.data.synthtalk.fileformat import FormatError
    from talkingface.judge.model import Judge
    from talkingface.judge.provenance import check_disjoint

    if args.judge is None or args.data is None:
        return _fail("eval judge", "--judge JUDGE_DIR and --data CORPUS are required")
    try:
        settings = _setup("eval")
        started = time.perf_counter()
        disjoint = check_disjoint(args.judge, args.data)
        judge = Judge.load(args.judge)
        utts, front_end = _utterances(args.data, settings, not args.quiet)
        if front_end != judge.meta.get("front_end"):
            raise ValueError(
                f"the judge reads {judge.meta.get('front_end')} features but this machine's "
                f"settings give {front_end} (TALKINGFACE_HUBERT_CHECKPOINT)"
            )
        test = [u for u in utts if u.split == "test"]
        if not test:
            raise ValueError(f"{args.data}: the corpus has no 'test' utterances")
        items = [(u.features, u.lm3d) for u in test]
        result: dict[str, Any] = {
            "judge": str(args.judge),
            "version": judge.version,
            "data": str(args.data),
            "disjoint": disjoint,
            "split": "test",
            "utterances": len(test),
            "truth_score": judge.score(items),
            **judge.truth_report(items),
        }
    except (ConfigError, ValueError, FileNotFoundError, FormatError) as exc:
        return _fail("eval judge", exc)
    result["seconds"] = round(time.perf_counter() - started, 1)
    _emit(result, args.json)
    return 0
