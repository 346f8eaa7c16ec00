"""The demo's cached steps: one `talkingface …` command each, run as a child process.

A step owns `<root>/<name>/` (its outputs go in `data/` below it, or where its command says)
and writes `<root>/<name>/.done` (the command's `--json` report, its time and its arguments)
last, so an interrupted step runs again and a finished one is skipped, unless something it
depends on ran again (`force`) or its arguments changed. Its stderr goes to
`<root>/logs/<name>.log`; while it runs, a line every TICK_S seconds says how far its progress
bar has come.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

DONE = ".done"
TICK_S = 30.0


class DemoError(RuntimeError):
    """A demo step failed; the message says which and where its log is."""


def run_step(
    root: Path,
    name: str,
    argv: list[str],
    *,
    say: Callable[[str], None] = print,
    fresh_dir: Path | None = None,
    threads: str | None = None,
    force: bool = False,
) -> tuple[bool, float]:
    """Run `talkingface ARGV` as the cached step `name` unless it is done and not `force`d;
    (ran, seconds). `fresh_dir` is removed first (an interrupted earlier attempt's output);
    `threads` caps the child's OpenMP/MKL threads."""
    folder, log = root / name, root / "logs" / f"{name}.log"
    if (folder / DONE).is_file() and not force and _same_argv(folder / DONE, argv):
        say(f"demo: {name}: cached")
        return False, 0.0
    (folder / DONE).unlink(missing_ok=True)
    if fresh_dir is not None:
        shutil.rmtree(fresh_dir, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    # Training commands keep their progress bars (in the log, read back by the ticker).
    quiet = [] if argv[0] == "train" else ["--quiet"]
    command = [sys.executable, "-m", "talkingface.cli", *argv, "--json", *quiet]
    env = dict(os.environ, TALKINGFACE_LOG_FORMAT="text")
    if threads:
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    say(f"demo: {name}: `talkingface {' '.join(argv[:2])}` (log: {log})")
    started = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=handle, text=True, env=env)
        ticker = threading.Thread(target=_tick, args=(name, proc, started, log, say), daemon=True)
        ticker.start()
        stdout, _ = proc.communicate()
    seconds = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise DemoError(f"step {name} failed (exit {proc.returncode}); {log} ends:\n{tail}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    report = {"seconds": seconds, "argv": argv,
              "report": json.loads(lines[-1]) if lines else {}}  # fmt: skip
    (folder / DONE).write_text(json.dumps(report, sort_keys=True) + "\n")
    say(f"demo: {name}: done in {seconds:.0f} s")
    return True, seconds


def _same_argv(done: Path, argv: list[str]) -> bool:
    """Whether the finished step ran with these arguments (a marker from before arguments
    were recorded does not say, so its step runs again, once)."""
    try:
        return json.loads(done.read_text()).get("argv") == argv
    except (OSError, ValueError):
        return False


def run_parallel(*chains: Callable[[], None]) -> None:
    """Run the chains in threads side by side; the first error is raised here after all end."""
    errors: list[BaseException] = []

    def run(chain: Callable[[], None]) -> None:
        try:
            chain()
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in chains]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _tick(name: str, proc: subprocess.Popen, started: float, log: Path, say) -> None:
    next_at = TICK_S
    while proc.poll() is None:
        time.sleep(0.5)
        elapsed = time.perf_counter() - started
        if elapsed >= next_at and proc.poll() is None:
            done = bar_position(log)
            where = f"step {done[0]}/{done[1]}, " if done else ""
            say(f"demo: {name}: {where}{elapsed / 60:.1f} min")
            next_at += TICK_S


def bar_position(log: Path) -> tuple[int, int] | None:
    """(done, total) of the last tqdm bar update in a step's log, if there is one."""
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - 4096))
            tail = handle.read().decode(errors="replace")
    except OSError:
        return None
    found = re.findall(r"\| *(\d+)/(\d+) \[", tail)
    return (int(found[-1][0]), int(found[-1][1])) if found else None
