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
5. Quality, printed and written to `out/demo_metrics.json`: rendering (head-region and lip-box
   PSNR against the ground-truth frames, which share the head poses; whole-frame PSNR and SSIM
   labelled as such) and lip sync (mouth landmark distance, mouth-opening correlation and the
   sync scores of the landmarks that drove the renderer, against the clip's true landmarks:
   the independent judge's, trained here on a corpus of its own, and the sync expert's, which
   the motion model was trained against).

`talkingface demo --video F` does the same with a person's own video instead of the SynthTalk
avatar: `avatar ingest` (docs/ingest.md) makes the avatar directory; the held-out sentence is
the video's own held-out stretch (its `val` split, the last 1/11, which no model trains on):
its sound goes through the fleet, and the lip sync is measured against the landmarks tracked
there. In both, the fleet replays the avatar's pose track from the first frame of its
held-out stretch (`RenderOptions.pose_start`): the clip is rendered on head poses the renderer
never trained on, the ones the clip was posed on (SynthTalk) or estimated at (a video).

Everything trained is cached in `<TALKINGFACE_CACHE_DIR>/demo/<plan>-<hash>/` (default
`~/.cache/talkingface/demo/cpu-…/`), one folder per step with a `.done` marker written last,
so a second run trains nothing and only renders; `--fresh` starts over. Each step's log is
in the folder's `logs/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from talkingface.config import ConfigError, Settings
from talkingface.demo.quality import measure, print_report, side_by_side
from talkingface.demo.steps import DemoError, run_parallel, run_step

AVATAR_ID = "demo"
TENANT = "default"
# Steps (and data) any avatar shares.
SHARED_STEPS = ("corpus", "syncnet", "motion", "ckpt", "judge-corpus", "judge")
JUDGE_FIELDS = ("judge_corpus_minutes", "judge_corpus_seed", "judge_steps")


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
    # steps as fit in that chain's time: the `cpu` preset's own 1600 (measured: ~0.25 s a
    # step of 2048 rays at 128 px on one core with the compiled hash-grid kernel).
    avatar_steps: int = 1600
    clip_seconds: float = 5.0
    clip_seed: int = 3
    render_shard_frames: int = 32
    video_sha256: str = ""  # `--video`: the person's own video instead of the SynthTalk avatar
    video_fov: float = 40.0
    # The independent lip-sync judge (docs/judge.md): its own corpus, another seed, so its
    # speakers are not the motion model's. Not part of the key (nothing else depends on it):
    # its steps run again when their arguments change, as every step does.
    judge_corpus_minutes: float = 10.0
    judge_corpus_seed: int = 1007
    judge_steps: int = 3000

    @property
    def key(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k not in JUDGE_FIELDS}
        if not self.video_sha256:  # the SynthTalk plans' keys as before the video fields
            fields = {k: v for k, v in fields.items() if not k.startswith("video_")}
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
        return f"{self.name}{'-video' if self.video_sha256 else ''}-{digest[:10]}"


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
        judge_corpus_minutes=1.0,
        judge_steps=60,
    ),
}


class Demo:
    def __init__(
        self,
        settings: Settings,
        plan: DemoPlan,
        out: Path,
        *,
        fresh: bool = False,
        say=print,
        video: Path | None = None,
    ) -> None:
        self.settings = settings
        self.video = Path(video) if video else None
        self.plan = plan
        self.out = Path(out)
        self.root = Path(settings.cache_dir) / "demo" / plan.key
        # The corpus and the motion models do not depend on the avatar: a video's demo uses
        # (and fills) the SynthTalk demo's folder for them.
        base = replace(plan, video_sha256="", video_fov=DemoPlan.video_fov)
        self.shared_root = Path(settings.cache_dir) / "demo" / base.key
        self.fresh = fresh
        self.say = say
        self.timings: dict[str, float] = {}
        self.cached: list[str] = []
        self.ran_corpus = self.ran_avatar = False

    # --- the whole run ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        import shutil

        started = time.perf_counter()
        if self.fresh:
            for root in {self.root, self.shared_root}:
                shutil.rmtree(root, ignore_errors=True)
        for root in {self.root, self.shared_root}:
            (root / "logs").mkdir(parents=True, exist_ok=True)
        self.say(f"demo: data and models cached in {self.root}")
        self._data()
        self._train()
        self.timings["prepare"] = round(time.perf_counter() - started, 1)
        rendered = self._render_through_the_fleet()
        clip, video = self._data_dir("clip"), self.out / "demo.mp4"
        metrics = measure(clip, video, self._data_dir("bundle"), self._data_dir("ckpt"),
                          poses=(self.pose_start(), self.track_frames()),
                          judge_dir=self._data_dir("judge"))  # fmt: skip
        metrics["render_fps"] = rendered["job"].get("metrics", {}).get("render_fps")
        side_by_side(clip, video, self.out / "demo_side_by_side.mp4")
        report = {
            "out": str(self.out / "demo.mp4"),
            "side_by_side": str(self.out / "demo_side_by_side.mp4"),
            "cache": str(self.root),
            "cached_steps": self.cached,
            "plan": asdict(self.plan),
            "source": str(self.video) if self.video else "SynthTalk",
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
        if self.video is not None:
            self._data_from_video()
            return
        self.ran_avatar = self._cli_step(
            "avatar", ["synth", "avatar", "--seconds", str(p.avatar_seconds), "--size",
                       str(p.avatar_size), "--seed", str(p.avatar_seed), "--out",
                       str(self._data_dir("avatar"))],
            fresh_dir=self._data_dir("avatar"),
        )  # fmt: skip
        # The clip replays the avatar's pose track from its held-out stretch: head poses the
        # renderer never trained on.
        self._cli_step(
            "clip", ["synth", "clip", "--avatar", str(self._data_dir("avatar")), "--seconds",
                     str(p.clip_seconds), "--seed", str(p.clip_seed), "--pose-start",
                     str(self.pose_start()), "--out", str(self._data_dir("clip"))],
            fresh_dir=self._data_dir("clip"), force=self.ran_avatar,
        )  # fmt: skip

    def pose_start(self) -> int:
        """The first frame of the avatar's `val` split: where the fleet's pose replay starts,
        so the clip is rendered on head poses the renderer never trained on."""
        manifest = json.loads((self._data_dir("avatar") / "synthtalk.json").read_text())
        return int(manifest["splits"]["val"][0])

    def track_frames(self) -> int:
        manifest = json.loads((self._data_dir("avatar") / "synthtalk.json").read_text())
        return int(manifest["frames"])

    def _data_from_video(self) -> None:
        """The avatar ingested from the person's video; the clip is its held-out stretch."""
        avatar, clip = self._data_dir("avatar"), self._data_dir("clip")
        self.ran_avatar = self._cli_step(
            "avatar", ["avatar", "ingest", "--video", str(self.video), "--out", str(avatar),
                       "--size", str(self.plan.avatar_size), "--fov", str(self.plan.video_fov)],
            fresh_dir=avatar,
        )  # fmt: skip
        if self.ran_avatar or not (clip / "audio.wav").is_file():
            held_out_clip(avatar, clip)
            self.say(f"demo: clip: the video's held-out stretch ({clip})")

    def _data_dir(self, name: str) -> Path:
        return self._root_of(name) / name / "data"

    def _root_of(self, step: str) -> Path:
        return self.shared_root if step in SHARED_STEPS else self.root

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
            self._judge()

        run_parallel(motion_chain, avatar_chain)
        self._cli_step(
            "postnet", ["train", "postnet", "--data", str(avatar), "--ckpt", str(ckpt),
                        "--out", str(bundle / "postnet")],
            force=ran["motion"] or ran["renderer"],
        )  # fmt: skip

    def _judge(self) -> None:
        """The independent lip-sync judge, on a corpus of its own (another seed)."""
        p, corpus = self.plan, self._data_dir("judge-corpus")
        ran = self._cli_step(
            "judge-corpus", ["synth", "corpus", "--minutes", str(p.judge_corpus_minutes),
                             "--seed", str(p.judge_corpus_seed), "--out", str(corpus)],
            fresh_dir=corpus,
        )  # fmt: skip
        judge = self._data_dir("judge")
        self._cli_step(
            "judge", ["train", "judge", "--data", str(corpus), "--out", str(judge), "--preset",
                      p.preset, "--steps", str(p.judge_steps)],
            fresh_dir=judge, force=ran,
        )  # fmt: skip

    def _cli_step(self, name: str, argv: list[str], **options) -> bool:
        """One cached `talkingface …` step (talkingface.demo.steps.run_step); True when it ran."""
        ran, seconds = run_step(self._root_of(name), name, argv, say=self.say, **options)
        if ran:
            self.timings[name] = seconds
        else:
            self.cached.append(name)
        return ran

    # --- 3 + 4. the fleet ------------------------------------------------------------------

    def _render_through_the_fleet(self) -> dict[str, Any]:
        from talkingface.broker.avatars import AvatarRegistry
        from talkingface.broker.client import BrokerClient
        from talkingface.broker.commands import submit_and_download
        from talkingface.broker.service import redis_client
        from talkingface.localfleet import LocalFleet, free_port, local_auth
        from talkingface.render.commands import bundle_files
        from talkingface.storage import store_from_settings
        from talkingface.v1 import broker_pb2

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
        # API keys on, as in production: the fleet makes its own client a key of TENANT.
        settings = local_auth(settings)
        fleet = LocalFleet(settings, stages_port=free_port(), redis_dir=self.root / "redis",
                           tenant=TENANT, key_file=False)  # fmt: skip
        with fleet:
            self.timings["fleet_start"] = round(time.perf_counter() - started, 1)
            for name, value in fleet.endpoints().items():
                if name == "api_key":  # the fleet's own, revoked when the demo stops
                    value = f"{value[:20]}… (made for this run's client, revoked at its end)"
                self.say(f"demo:   {name:15s} {value}")
            store = store_from_settings(fleet.settings)
            version = _publish(store, bundle_files(self._data_dir("bundle")))
            AvatarRegistry(redis_client(fleet.settings)).claim(
                TENANT, "SynthTalk demo avatar", avatar_id=AVATAR_ID
            )
            self.say(f"demo: avatar {AVATAR_ID!r} version {version} is in the fleet's store")
            self.say("demo: submitting the held-out clip's audio through the broker API")
            started = time.perf_counter()
            options = broker_pb2.RenderOptions(pose_start=self.pose_start())
            with BrokerClient(fleet.broker_address, TENANT,
                              api_key=fleet.api_key or None) as client:  # fmt: skip
                job = submit_and_download(client, AVATAR_ID, self._data_dir("clip") / "audio.wav",
                                          self.out / "demo.mp4", options=options)  # fmt: skip
            self.timings["render_job"] = round(time.perf_counter() - started, 1)
        if job["state"] != "SUCCEEDED":
            raise DemoError(f"the render job ended {job['state']}: {job.get('error')}")
        return {"job": job, "version": version}


def held_out_clip(avatar_dir: Path, out: Path) -> None:
    """The val split of an ingested avatar as the demo's clip: its sound, frames and tracked
    landmarks (`read_held_out` reads it back)."""
    import shutil

    import numpy as np

    from talkingface.data.synthtalk.fileformat import read_avatar
    from talkingface.media import write_wav

    avatar = read_avatar(avatar_dir)
    lo, hi = avatar["manifest"]["splits"]["val"]
    rate = int(avatar["manifest"]["sample_rate"])
    per_frame = rate // int(avatar["manifest"]["fps"])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    np.save(out / "frames.npy", np.asarray(avatar["frames"][lo:hi]))
    np.save(out / "masks.npy", np.asarray(avatar["masks"][lo:hi]))
    np.savez_compressed(out / "landmarks.npz", lm3d=avatar["lm3d"][lo:hi],
                        lm2d=avatar["lm2d"][lo:hi])  # fmt: skip
    write_wav(out / "audio.wav", avatar["audio"][lo * per_frame : hi * per_frame], rate)
    manifest = {"format": "talkingface-held-out", "avatar": str(avatar_dir), "frames": [lo, hi]}
    (out / "held_out.json").write_text(json.dumps(manifest, indent=2) + "\n")


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


def cmd_demo(args) -> int:
    from talkingface.errors import TalkingFaceError

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"talkingface demo: {exc}", file=sys.stderr)
        return 2
    plan = PLANS[args.plan]
    if args.video is not None:
        try:
            digest = hashlib.sha256(args.video.read_bytes()).hexdigest()
        except OSError as exc:
            print(f"talkingface demo: cannot read {args.video}: {exc.strerror}", file=sys.stderr)
            return 2
        plan = replace(plan, video_sha256=digest, video_fov=args.fov)
    demo = Demo(settings, plan, args.out, fresh=args.fresh, video=args.video,
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
    demo.add_argument(
        "--video", type=Path,
        help="a person's own talking video (docs/ingest.md) instead of the SynthTalk avatar",
    )  # fmt: skip
    demo.add_argument(
        "--fov", type=float, default=40.0,
        help="--video: the camera's vertical field of view in degrees (40)",
    )  # fmt: skip
    demo.set_defaults(func=cmd_demo)
