"""Draw the chart's two Grafana dashboards from real Prometheus data, for docs/dashboards/.

Usage: python scripts/render_dashboards.py [--seconds 180] [--out docs/dashboards]

No Grafana runs here, so the panels are drawn with matplotlib from the answers of a real
Prometheus (tests/charts/live.py, as the live test uses it): a private Redis and moto S3
server, the four stage applications on a local Ray Serve with tiny models (trained first, as
the test fixtures train them; cached under --work), the broker with workers, and
`prometheus` scraping the broker, the stages' node exporter and Ray every second. Render jobs
(some with corrupt audio, some cancelled) run for --seconds; each panel's queries are then
evaluated as range queries over that time and drawn in a grid, with titles, units and legends.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.charts.live and tests.fixtures.servers

from tests.charts.live import (  # noqa: E402
    AVATAR,
    DASHBOARDS,
    EXTERNAL_PANELS,
    Prometheus,
    broker_fleet,
    concrete,
    corrupt_audio,
    fleet_env,
    load_dashboard,
    panels,
    speech,
)

# Grafana's $__rate_interval for a few minutes shown at full width with a 1 s scrape would be
# 4 s: noisy at this size, so the drawings use a smoother window.
RATE_INTERVAL = "30s"
STEP_S = 2.0


def tiny_models(work: Path) -> tuple[Path, Path, Path]:
    """(ckpt, avatar, bundle): the test fixtures' tiny motion model, avatar and bundle
    (tests/fixtures/motion.py), built once under `work`."""
    import argparse as ap

    from talkingface.config import Settings
    from talkingface.data.synthtalk.avatar import build_avatar
    from talkingface.data.synthtalk.corpus import build_corpus
    from talkingface.motion import train as motion_train
    from talkingface.render.commands import train_avatar

    ckpt, avatar, bundle = work / "ckpt", work / "avatar", work / "bundle"
    if not (ckpt / "motion").exists():
        build_corpus(work / "corpus", minutes=1.0, seed=3, progress=False)
        _, corpus = motion_train.prepare_corpus(work / "corpus", work / "features", progress=False)
        config = motion_train.default_config("tiny", "full", 1, None)
        motion_train.train_syncnet(corpus, ckpt, config, progress=False, device="cpu")
        motion_train.train_motion(corpus, ckpt, config, progress=False, device="cpu")
    if not (avatar / "audio.wav").exists():
        build_avatar(avatar, seconds=4.0, seed=2, size=64, progress=False)
    if not bundle.exists():
        args = ap.Namespace(data=avatar, out=bundle, preset="tiny", steps=20, seed=1,
                            quiet=True, ckpt=None, publish=None)  # fmt: skip
        train_avatar(args, Settings.from_env({}), "cpu")
    return ckpt, avatar, bundle


def s3_server(stack: ExitStack, workdir: Path):
    """moto's S3 server as tests/fixtures/servers.py starts it."""
    import os
    from types import SimpleNamespace

    from tests.fixtures import servers

    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=servers.S3_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=servers.S3_SECRET_KEY,
        AWS_DEFAULT_REGION=servers.S3_REGION,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    proc, port = servers.start_process(
        "moto server", lambda p: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                  "-p", str(p)],
        servers._http_answers, workdir / "moto.log", env=env)  # fmt: skip
    stack.callback(servers.stop_process, proc)
    return SimpleNamespace(endpoint=f"127.0.0.1:{port}", access_key=servers.S3_ACCESS_KEY,
                           secret_key=servers.S3_SECRET_KEY, region=servers.S3_REGION)  # fmt: skip


def traffic(api, avatar_dir: Path, seconds: float, log) -> None:
    """Render jobs for `seconds`: bursts of three to six clips (so the queue backs up), one in
    five with corrupt audio, now and then one cancelled while it runs."""
    from talkingface.v1 import broker_pb2 as pb

    clips = [speech(avatar_dir, s) for s in (1.0, 1.6, 2.4)]
    deadline = time.monotonic() + seconds
    burst = 0
    while time.monotonic() < deadline:
        burst += 1
        audio = [clips[(burst + i) % 3] for i in range(3 + burst % 4)]
        if burst % 2 == 0:
            audio.append(corrupt_audio())
        jobs = [api.submit_render(AVATAR, audio=a) for a in audio]
        if burst % 3 == 0:
            time.sleep(1.0)
            api.cancel_job(jobs[-1].job_id)
        finals = [api.wait(j.job_id, timeout_s=300) for j in jobs]
        log(f"burst {burst}: " + ", ".join(pb.JobState.Name(f.state)[10:] for f in finals))
        time.sleep(2.0 + burst % 3)


def legend(template: str, labels: dict) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return text.strip() or ", ".join(f"{k}={v}" for k, v in labels.items()) or "value"


UNITS = {  # Grafana unit -> (axis label, scale)
    "s": ("seconds", 1.0), "ops": ("per second", 1.0), "reqps": ("requests / s", 1.0),
    "percentunit": ("%", 100.0), "percent": ("%", 1.0), "bytes": ("MiB", 1 / 2**20),
    "short": ("", 1.0),
}  # fmt: skip


def draw(name: str, results: dict, start: float, end: float, out: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = load_dashboard(name)
    drawn = list(panels(dashboard))
    cols = 2
    rows = math.ceil(len(drawn) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13, 2.7 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, drawn, strict=False):
        unit = panel["fieldConfig"]["defaults"]["unit"]
        axis_label, scale = UNITS.get(unit, (unit, 1.0))
        lines = 0
        for target in panel["targets"]:
            for series in results[(panel["title"], target["refId"])]:
                xs = [(float(t) - start) / 60 for t, _ in series["values"]]
                ys = [float(v) * scale for _, v in series["values"]]
                if all(math.isnan(y) for y in ys):
                    continue
                style = "--" if "objective" in target.get("legendFormat", "") else "-"
                ax.plot(xs, ys, style, linewidth=1.2,
                        label=legend(target.get("legendFormat", ""), series["metric"]))  # fmt: skip
                lines += 1
        ax.set_title(f"{panel['title']}  [{unit}]", fontsize=9, loc="left")
        ax.set_xlim(0, (end - start) / 60)
        ax.set_ylabel(axis_label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=6, loc="upper left", ncol=2 if lines > 4 else 1, framealpha=0.6)
        else:
            why = EXTERNAL_PANELS.get((name, panel["title"]), "")
            ax.text(0.5, 0.5, f"no data\n{why}".strip(), ha="center", va="center",
                    transform=ax.transAxes, color="grey", fontsize=9)  # fmt: skip
        if panel["fieldConfig"]["defaults"].get("min") == 0:
            ax.set_ylim(bottom=0)  # as Grafana draws it (min: 0)
    for ax in axes.flat[len(drawn) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("minutes since the first job", fontsize=8)
    fig.suptitle(f"{dashboard['title']}\n{subtitle}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))  # room for the title
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=70)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="how long jobs run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboards")
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "talkingface-render-dashboards",
                        help="where the tiny models are built once")  # fmt: skip
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    from tests.fixtures.servers import free_port, start_redis

    args.work.mkdir(parents=True, exist_ok=True)
    log("tiny models (built once)")
    ckpt, avatar_dir, bundle = tiny_models(args.work)
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        redis_server = stack.enter_context(start_redis(tmp / "redis"))
        s3 = s3_server(stack, tmp / "s3")
        log("Ray Serve")
        from talkingface.serving import ray_app
        from talkingface.serving.exporter import node_metrics_url
        from talkingface.serving.fleet import load_serve_config

        port = free_port()
        ray_app.start_local_serve(port, load_serve_config().servicer_functions, num_cpus=16)
        stack.callback(_stop_ray)
        env = fleet_env(redis_url=redis_server.url, s3=s3, stages_port=port, ckpt=ckpt,
                        cache=tmp / "cache")  # fmt: skip
        fleet = stack.enter_context(broker_fleet(env, bundle))
        scrapes = {"broker": fleet.metrics_url, "stages": node_metrics_url(timeout_s=60)}
        if ray_app.ray_metrics_port:
            scrapes["ray"] = f"http://127.0.0.1:{ray_app.ray_metrics_port}/metrics"
        prom = stack.enter_context(Prometheus(tmp / "prometheus", scrapes))
        log(f"prometheus on {prom.url}, scraping {scrapes}")
        prom.wait_for(f"count(up == 1) == {len(scrapes)}", 30)
        start = time.time()
        worker = threading.Thread(target=traffic, args=(fleet.api, avatar_dir, args.seconds, log))
        worker.start()
        worker.join()
        time.sleep(5.0)
        end = time.time()
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(start))
        subtitle = (
            f"rendered from a real Prometheus scraping the local fleet (tiny models, CPU), "
            f"{when} UTC, {(end - start) / 60:.1f} min; $__rate_interval = {RATE_INTERVAL}"
        )
        for name in DASHBOARDS:
            results = {}
            for panel in panels(load_dashboard(name)):
                for target in panel["targets"]:
                    expr = concrete(target["expr"], RATE_INTERVAL)
                    results[(panel["title"], target["refId"])] = prom.query_range(
                        expr, start, end, STEP_S
                    )
            out = args.out / f"{name}.png"
            draw(name, results, start, end, out, subtitle)
            log(f"{out} ({out.stat().st_size // 1024} KiB)")
    return 0


def _stop_ray() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
