"""`talkingface demo` (what `make demo` runs): the product end to end on this machine.

1. SynthTalk data: a corpus of many synthetic speakers (Italian held out entirely), one
   synthetic person's video (the demo avatar), and a clip of that person saying sentences in
   Italian with a voice neither the motion model nor the avatar ever heard (the input, and
   the ground truth the result is compared with).
2. Training, with the `cpu` presets and shorter step counts sized for a 2-core machine: the
   sync expert and the motion model in one chain, the avatar's renderer in another, side by
   side (each process on half the cores), then the avatar's postnet.
3. The fleet (`talkingface.localfleet`: a private Redis, the four stages on local Ray Serve,
   the broker with its workers), the avatar published to its store and registered.
4. The clip's audio submitted through the broker's API like any client would, with a
   progress bar; the mp4 downloaded to `out/demo.mp4`; `out/demo_side_by_side.mp4` shows the
   ground truth | the rendered video, with the audio.
5. Quality, printed and written to `out/demo_metrics.json`: rendering (PSNR, SSIM and lip-box
   PSNR against the ground-truth frames, which share the head poses) and lip sync (mouth
   landmark distance, mouth-opening correlation and sync-expert confidence of the landmarks
   that drove the renderer, against the clip's true landmarks).

Everything trained is cached in `<TALKINGFACE_CACHE_DIR>/demo/<plan>-<hash>/` (default
`~/.cache/talkingface/demo/cpu-…/`), one folder per step with a `.done` marker written last,
so a second run trains nothing and only renders; `--fresh` starts over. Each step's log is
in the folder's `logs/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from talkingface.config import ConfigError, Settings

AVATAR_ID = "demo"
TENANT = "default"
DONE = ".done"
TICK_S = 30.0


@dataclass(frozen=True)
class DemoPlan:
    """What the demo builds; the cache folder is keyed by all of it."""

    name: str = "cpu"
    preset: str = "cpu"
    corpus_minutes: float = 20.0
    corpus_seed: int = 7
    syncnet_steps: int = 600  # its held-out loss bottoms out near 400 (docs/motion.md)
    motion_steps: int = 1500
    avatar_seconds: float = 60.0
    avatar_size: int = 128
    avatar_seed: int = 11
    # The renderer trains beside the motion chain on half the cores and is given as many
    # steps as fit in that chain's time (measured: ~0.8 s a step at 128 px on one core).
    avatar_steps: int = 500
    clip_seconds: float = 5.0
    clip_seed: int = 3
    render_shard_frames: int = 32

    @property
    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"{self.name}-{digest[:10]}"


PLANS = {
    "cpu": DemoPlan(),
    # For tests and a quick look: seconds of training, a blurry but working avatar.
    "tiny": DemoPlan(
        name="tiny",
        preset="tiny",
        corpus_minutes=1.0,
        syncnet_steps=30,
        motion_steps=30,
        avatar_seconds=4.0,
        avatar_size=64,
        avatar_steps=30,
        clip_seconds=2.0,
        render_shard_frames=16,
    ),
}


class Step:
    """One cached step: a folder, its `.done` marker (the step's JSON report) and a log."""

    def __init__(self, root: Path, name: str) -> None:
        self.dir = root / name
        self.name = name
        self.log = root / "logs" / f"{name}.log"

    @property
    def done(self) -> bool:
        return (self.dir / DONE).is_file()

    def finish(self, report: dict[str, Any]) -> dict[str, Any]:
        (self.dir / DONE).write_text(json.dumps(report, sort_keys=True) + "\n")
        return report


class Demo:
    def __init__(
        self,
        settings: Settings,
        plan: DemoPlan,
        out: Path,
        *,
        fresh: bool = False,
        say=print,
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.out = Path(out)
        self.root = Path(settings.cache_dir) / "demo" / plan.key
        self.fresh = fresh
        self.say = say
        self.timings: dict[str, float] = {}
        self.cached: list[str] = []
        self.ran_corpus = self.ran_avatar = False

    # --- the whole run ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        import shutil

        started = time.perf_counter()
        if self.fresh and self.root.exists():
            shutil.rmtree(self.root)
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.say(f"demo: data and models cached in {self.root}")
        self._data()
        self._train()
        self.timings["prepare"] = round(time.perf_counter() - started, 1)
        rendered = self._render_through_the_fleet()
        metrics = self._metrics(rendered)
        self._side_by_side(rendered)
        report = {
            "out": str(self.out / "demo.mp4"),
            "side_by_side": str(self.out / "demo_side_by_side.mp4"),
            "cache": str(self.root),
            "cached_steps": self.cached,
            "plan": asdict(self.plan),
            "job": rendered["job"],
            "metrics": metrics,
            "seconds": {**self.timings, "total": round(time.perf_counter() - started, 1)},
        }
        (self.out / "demo_metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        return report

    # --- 1. data ---------------------------------------------------------------------------

    def _data(self) -> None:
        p = self.plan
        self.ran_corpus = self._cli_step(
            "corpus", ["synth", "corpus", "--minutes", str(p.corpus_minutes), "--seed",
                       str(p.corpus_seed), "--out", str(self._data_dir("corpus"))],
            fresh_dir=self._data_dir("corpus"),
        )  # fmt: skip
        self.ran_avatar = self._cli_step(
            "avatar", ["synth", "avatar", "--seconds", str(p.avatar_seconds), "--size",
                       str(p.avatar_size), "--seed", str(p.avatar_seed), "--out",
                       str(self._data_dir("avatar"))],
            fresh_dir=self._data_dir("avatar"),
        )  # fmt: skip
        self._cli_step(
            "clip", ["synth", "clip", "--avatar", str(self._data_dir("avatar")), "--seconds",
                     str(p.clip_seconds), "--seed", str(p.clip_seed), "--out",
                     str(self._data_dir("clip"))],
            fresh_dir=self._data_dir("clip"), force=self.ran_avatar,
        )  # fmt: skip

    def _data_dir(self, name: str) -> Path:
        return self.root / name / "data"

    # --- 2. training -----------------------------------------------------------------------

    def _train(self) -> None:
        p = self.plan
        ckpt, bundle = self._data_dir("ckpt"), self._data_dir("bundle")
        corpus, avatar = self._data_dir("corpus"), self._data_dir("avatar")
        threads = str(max(1, (os.cpu_count() or 2) // 2))
        ran: dict[str, bool] = {}

        def motion_chain() -> None:
            ran["syncnet"] = self._cli_step(
                "syncnet", ["train", "syncnet", "--data", str(corpus), "--out", str(ckpt),
                            "--preset", p.preset, "--steps", str(p.syncnet_steps)],
                threads=threads, force=self.ran_corpus,
            )  # fmt: skip
            ran["motion"] = self._cli_step(
                "motion", ["train", "motion", "--data", str(corpus), "--out", str(ckpt),
                           "--preset", p.preset, "--steps", str(p.motion_steps)],
                threads=threads, force=ran["syncnet"],
            )  # fmt: skip

        def avatar_chain() -> None:
            ran["renderer"] = self._cli_step(
                "renderer", ["train", "avatar", "--data", str(avatar), "--out", str(bundle),
                             "--preset", p.preset, "--steps", str(p.avatar_steps)],
                threads=threads, force=self.ran_avatar,
            )  # fmt: skip

        self._parallel(motion_chain, avatar_chain)
        self._cli_step(
            "postnet", ["train", "postnet", "--data", str(avatar), "--ckpt", str(ckpt),
                        "--out", str(bundle / "postnet")],
            force=ran["motion"] or ran["renderer"],
        )  # fmt: skip

    def _parallel(self, *chains) -> None:
        errors: list[BaseException] = []

        def run(chain) -> None:
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

    def _cli_step(
        self,
        name: str,
        argv: list[str],
        *,
        fresh_dir: Path | None = None,
        threads: str | None = None,
        force: bool = False,
    ) -> bool:
        """Run one `talkingface …` command as a cached step, unless it is done and nothing
        it depends on ran again (`force`); True when it ran."""
        import shutil

        step = Step(self.root, name)
        if step.done and not force:
            self.cached.append(name)
            self.say(f"demo: {name}: cached")
            return False
        (step.dir / DONE).unlink(missing_ok=True)
        if fresh_dir is not None:
            shutil.rmtree(fresh_dir, ignore_errors=True)  # an interrupted earlier attempt
        step.dir.mkdir(parents=True, exist_ok=True)
        # Training commands keep their progress bars (in the log, read back by the ticker).
        quiet = [] if argv[0] == "train" else ["--quiet"]
        command = [sys.executable, "-m", "talkingface.cli", *argv, "--json", *quiet]
        env = dict(os.environ, TALKINGFACE_LOG_FORMAT="text")
        if threads:
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        self.say(f"demo: {name}: `talkingface {' '.join(argv[:2])}` (log: {step.log})")
        started = time.perf_counter()
        with step.log.open("w") as log:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
            ticker = threading.Thread(
                target=self._tick, args=(name, proc, started, step.log), daemon=True
            )
            ticker.start()
            stdout, _ = proc.communicate()
        seconds = round(time.perf_counter() - started, 1)
        if proc.returncode != 0:
            tail = "\n".join(step.log.read_text(errors="replace").splitlines()[-15:])
            raise DemoError(f"step {name} failed (exit {proc.returncode}); {step.log} ends:\n"
                            f"{tail}")  # fmt: skip
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        self.timings[name] = seconds
        self.say(f"demo: {name}: done in {seconds:.0f} s")
        step.finish({"seconds": seconds, "report": json.loads(lines[-1]) if lines else {}})
        return True

    def _tick(self, name: str, proc: subprocess.Popen, started: float, log: Path) -> None:
        next_at = TICK_S
        while proc.poll() is None:
            time.sleep(0.5)
            elapsed = time.perf_counter() - started
            if elapsed >= next_at and proc.poll() is None:
                done = _bar_position(log)
                where = f"step {done[0]}/{done[1]}, " if done else ""
                self.say(f"demo: {name}: {where}{elapsed / 60:.1f} min")
                next_at += TICK_S

    # --- 3 + 4. the fleet ------------------------------------------------------------------

    def _render_through_the_fleet(self) -> dict[str, Any]:
        from talkingface.broker.avatars import AvatarRegistry
        from talkingface.broker.client import BrokerClient
        from talkingface.broker.commands import submit_and_download
        from talkingface.broker.service import redis_client
        from talkingface.localfleet import LocalFleet, free_port
        from talkingface.render.commands import bundle_files
        from talkingface.storage import store_from_settings

        settings = replace(
            self.settings,
            store="local",
            store_dir=self.root / "store",
            motion_checkpoint=str(self._data_dir("ckpt") / "motion"),
            grpc_host="127.0.0.1",
            grpc_port=free_port(),
            metrics_port=0,
            broker_workers=1,
            broker_train_workers=0,
            render_shard_frames=self.plan.render_shard_frames,
            janitor_interval_seconds=0,
        )
        started = time.perf_counter()
        import logging

        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its per-app INFO lines
        self.say("demo: starting the fleet (Redis, Ray Serve with the 4 stages, the broker) ...")
        fleet = LocalFleet(settings, stages_port=free_port(), redis_dir=self.root / "redis")
        with fleet:
            self.timings["fleet_start"] = round(time.perf_counter() - started, 1)
            for name, value in fleet.endpoints().items():
                self.say(f"demo:   {name:15s} {value}")
            store = store_from_settings(fleet.settings)
            version = _publish(store, bundle_files(self._data_dir("bundle")))
            AvatarRegistry(redis_client(fleet.settings)).claim(
                TENANT, "SynthTalk demo avatar", avatar_id=AVATAR_ID
            )
            self.say(f"demo: avatar {AVATAR_ID!r} version {version} is in the fleet's store")
            self.say("demo: submitting the held-out clip's audio through the broker API")
            started = time.perf_counter()
            with BrokerClient(fleet.broker_address, TENANT) as client:
                job = submit_and_download(
                    client, AVATAR_ID, self._data_dir("clip") / "audio.wav", self.out / "demo.mp4"
                )
            self.timings["render_job"] = round(time.perf_counter() - started, 1)
        if job["state"] != "SUCCEEDED":
            raise DemoError(f"the render job ended {job['state']}: {job.get('error')}")
        return {"job": job, "version": version}

    # --- 5. quality ------------------------------------------------------------------------

    def _metrics(self, rendered: dict[str, Any]) -> dict[str, Any]:
        import torch

        from talkingface.data.synthtalk.fileformat import read_clip
        from talkingface.media import read_wav
        from talkingface.motion import checkpoint as ck
        from talkingface.motion.infer import SyncScorer
        from talkingface.motion.metrics import motion_metrics
        from talkingface.pipeline import predict_landmarks
        from talkingface.render.evaluate import _psnr_where, mouth_boxes
        from talkingface.render.train import psnr, ssim

        clip = read_clip(self._data_dir("clip"), mmap=False)
        video = _decode_video(self.out / "demo.mp4")
        truth = _resize_to(np.asarray(clip["frames"]), video.shape[1])
        n = min(len(video), len(truth))
        a = torch.from_numpy(video[:n].astype(np.float32) / 255.0)
        b = torch.from_numpy(truth[:n].astype(np.float32) / 255.0)
        scale = video.shape[1] / clip["frames"].shape[1]
        boxes = mouth_boxes(clip["lm2d"][:n] * scale, video.shape[1])
        render = {
            "frames": int(n),
            "size": int(video.shape[1]),
            "psnr": round(psnr(a, b), 2),
            "ssim": round(ssim(a, b), 4),
            "psnr_lip": round(_psnr_where(a.numpy(), b.numpy(), boxes), 2),
        }
        # Lip sync: the landmarks the fleet rendered, recomputed in-process (same models,
        # same seed and options: the stages are deterministic) against the clip's truth.
        audio, rate = read_wav(self._data_dir("clip") / "audio.wav")
        ckpt = self._data_dir("ckpt")
        predicted = predict_landmarks(self._data_dir("bundle"), audio, ckpt / "motion")
        projected = predicted["projection"].lm3d
        gt = np.asarray(clip["lm3d"], np.float32)
        m = min(len(projected), len(gt))
        lips = motion_metrics([projected[:m]], [gt[:m]])
        scorer = SyncScorer.load(ck.model_dir(ckpt, "syncnet"))
        face = gt.mean(axis=0)
        features = predicted["features"].features
        sync = scorer.score([(features, projected[:m], face)])
        sync_truth = scorer.score([(features, gt[:m], face)])
        return {
            "render": render,
            "lip_sync": {
                "mouth_lmd_mm": round(lips["mouth_lmd_mm"], 3),
                "mouth_open_r": round(lips["mouth_open_r"], 3),
                "l2_mm": round(lips["l2_mm"], 3),
                "sync_conf": round(sync["sync_conf"], 3),
                "sync_conf_truth": round(sync_truth["sync_conf"], 3),
                "bad_case_rate": round(float(predicted["projection"].bad_case_rate), 4),
            },
            "clip": {
                "language": clip["manifest"]["language"],
                "voice": clip["manifest"]["voice"]["voice_id"],
                "seconds": round(len(audio) / rate, 2),
            },
            "render_fps": rendered["job"].get("metrics", {}).get("render_fps"),
        }

    def _side_by_side(self, rendered: dict[str, Any]) -> None:
        from talkingface.data.synthtalk.fileformat import read_clip
        from talkingface.media import read_wav, write_mp4

        clip = read_clip(self._data_dir("clip"), mmap=True)
        video = _decode_video(self.out / "demo.mp4")
        truth = _resize_to(np.asarray(clip["frames"]), video.shape[1])
        n = min(len(video), len(truth))
        audio, rate = read_wav(self._data_dir("clip") / "audio.wav")
        pairs = (np.concatenate([truth[i], video[i]], axis=1) for i in range(n))
        write_mp4(self.out / "demo_side_by_side.mp4", pairs, 25, audio, rate)


def _bar_position(log: Path) -> tuple[int, int] | None:
    """(done, total) of the last tqdm bar update in a step's log, if there is one."""
    import re

    try:
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - 4096))
            tail = handle.read().decode(errors="replace")
    except OSError:
        return None
    found = re.findall(r"\| *(\d+)/(\d+) \[", tail)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


class DemoError(RuntimeError):
    """A demo step failed; the message says which and where its log is."""


def _publish(store, files: dict[str, Path]) -> str:
    """The version of the demo avatar holding exactly these files (published if new)."""
    from talkingface.bundle import avatar_prefix, sha256_of

    prefix = avatar_prefix(AVATAR_ID)
    digests = {name: sha256_of(path) for name, path in files.items()}
    for version in reversed(store.list_versions(prefix)):
        listed = store.read_manifest(prefix, version)["files"]
        if {n: e["sha256"] for n, e in listed.items()} == digests:
            return version
    return store.publish_version(prefix, files, metadata={"demo": True}).version


def _decode_video(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _resize_to(frames: np.ndarray, size: int) -> np.ndarray:
    """Frames [T, S, S, 3] box-filtered down to `size` (an integer factor of S)."""
    s = frames.shape[1]
    if s == size:
        return frames
    if s % size:
        raise ValueError(f"cannot box-filter {s} px frames to {size} px")
    f = s // size
    shrunk = frames.reshape(len(frames), size, f, size, f, 3).astype(np.float32).mean((2, 4))
    return np.clip(np.rint(shrunk), 0, 255).astype(np.uint8)


def print_report(report: dict[str, Any], say=print) -> None:
    m = report["metrics"]
    r, lips, clip = m["render"], m["lip_sync"], m["clip"]
    say("")
    say(f"demo: wrote {report['out']} and {report['side_by_side']} (ground truth | rendered)")
    say(f"demo: input: {clip['seconds']} s of {clip['language']} speech, voice {clip['voice']} "
        "(a language and voice never seen in training)")  # fmt: skip
    say(f"demo: rendering vs ground truth: PSNR {r['psnr']} dB, SSIM {r['ssim']}, "
        f"lip-box PSNR {r['psnr_lip']} dB at {r['size']}x{r['size']}, "
        f"{m['render_fps']} fps")  # fmt: skip
    say(f"demo: lip sync: mouth LMD {lips['mouth_lmd_mm']} mm, mouth-opening r "
        f"{lips['mouth_open_r']}, sync confidence {lips['sync_conf']} (ground truth "
        f"{lips['sync_conf_truth']}), bad cases {lips['bad_case_rate']:.1%}")  # fmt: skip
    times = report["seconds"]
    say(f"demo: {times['total'] / 60:.1f} min in all ({times['prepare'] / 60:.1f} preparing; "
        f"cached steps: {', '.join(report['cached_steps']) or 'none'})")  # fmt: skip


def cmd_demo(args) -> int:
    from talkingface.errors import TalkingFaceError

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"talkingface demo: {exc}", file=sys.stderr)
        return 2
    plan = PLANS[args.plan]
    demo = Demo(settings, plan, args.out, fresh=args.fresh,
                say=lambda text: print(text, file=sys.stderr, flush=True))  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        report = demo.run()
    except (DemoError, ConfigError, TalkingFaceError) as exc:
        print(f"talkingface demo: {exc}", file=sys.stderr)
        return 1
    print_report(report, say=lambda text: print(text, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(report, sort_keys=True))
    return 0


def add_demo(sub) -> None:
    demo = sub.add_parser(
        "demo", help="the end-to-end demo `make demo` runs: train (cached), serve, render",
        description=__doc__.split("\n\n")[0],
    )  # fmt: skip
    demo.add_argument(
        "--plan", choices=sorted(PLANS), default="cpu",
        help="cpu (the demo, about 15 min the first time on 2 cores) or tiny (seconds)",
    )  # fmt: skip
    demo.add_argument("--out", type=Path, default=Path("out"), help="output folder (out/)")
    demo.add_argument("--fresh", action="store_true", help="ignore the cache, train again")
    demo.add_argument("--json", action="store_true", help="the report as one JSON line")
    demo.set_defaults(func=cmd_demo)
