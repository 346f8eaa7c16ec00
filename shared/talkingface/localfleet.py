"""The whole fleet on one machine (`talkingface up`, and the demo): Redis, local Ray Serve
with the four stage applications of the serve config, and the broker with its workers.

- Redis: TALKINGFACE_REDIS_URL when set; otherwise a private `redis-server` on a free
  loopback port, with its append-only file under `<cache_dir>/fleet/redis/` (appendfsync
  everysec), so jobs survive a restart of the fleet.
- Object store: the settings' (the local-directory store by default; MinIO when configured).
- Stages: `services/serve_config.yaml` (or `--config`) deployed on a local Ray: GPU fractions
  set to 0 where torch sees no GPU, and each application's max_replicas capped to the
  machine's cores (a replica that cannot get a core only slows the others down).
- Broker: the public API on TALKINGFACE_GRPC_PORT with TALKINGFACE_BROKER_WORKERS render
  workers and TALKINGFACE_BROKER_TRAIN_WORKERS training workers in its process.
- API key: with TALKINGFACE_BROKER_AUTH=keys (what `talkingface up` and the demo run with
  unless that variable says otherwise) the fleet registers its tenant (`default`) and makes
  itself a key (render, avatars) for its own client (`api_key`, printed by `up`), written to
  `<cache_dir>/fleet/api_key` (mode 0600) where the client commands find it when
  TALKINGFACE_API_KEY is unset; the key is revoked and the file removed when the fleet stops.
- Stage plane: closed. Without TALKINGFACE_STAGE_SECRET the fleet makes one for this run and
  gives it to the stages and its own workers, so every stage call carries a signed per-job
  capability (talkingface.serving.capability).

`LocalFleet` is a context manager: everything it started is stopped again on exit, children
first (broker, Serve and Ray, then Redis).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import random
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from talkingface.config import ConfigError, Settings

log = logging.getLogger(__name__)
REDIS_START_TIMEOUT_S = 30.0


def fleet_key_path(settings: Settings) -> Path:
    """Where a running local fleet keeps its API key for the client commands."""
    return Path(settings.cache_dir) / "fleet" / "api_key"


def client_api_key(settings: Settings) -> str:
    """The key client commands send: TALKINGFACE_API_KEY, else a running local fleet's."""
    key = os.environ.get("TALKINGFACE_API_KEY", "")
    if key:
        return key
    try:
        return fleet_key_path(settings).read_text().strip()
    except OSError:
        return ""


def local_auth(settings: Settings) -> Settings:
    """The settings a local fleet runs with: API keys on unless TALKINGFACE_BROKER_AUTH says."""
    if os.environ.get("TALKINGFACE_BROKER_AUTH"):
        return settings
    return dataclasses.replace(settings, broker_auth="keys")


def stop_child(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM a child process and wait `timeout_s` for it; SIGKILL it past that."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# Ports handed out here come from below the kernel's ephemeral range and above Ray's worker
# ports (10002-19999 by default). A port the kernel picked (bind to 0) is free only until
# the next outgoing connection or port-0 listener takes it: starting Ray opens hundreds of
# those, and CI once saw the Serve gRPC proxy fail to bind a port picked a moment before.
_PORT_FLOOR = 20000
_RESERVED_PORTS = {6379}  # never the default Redis port: a system Redis may listen there
_handed_out: set[int] = set()
_port_random = random.Random()  # seeded from the OS, so forked processes differ too


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(port: int) -> bool:
    """Whether `port` is free on every interface, IPv4 and (where there is one) IPv6: what
    a server binding 0.0.0.0 or [::] needs."""
    families = [(socket.AF_INET, "")]
    if socket.has_ipv6:
        families.append((socket.AF_INET6, "::"))
    for family, host in families:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((host, port))
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                continue  # IPv6 compiled in but not configured on this machine
            return False
    return True


def free_port() -> int:
    """A TCP port free on all interfaces right now, outside the kernel's ephemeral range
    (so no outgoing connection or port-0 listener can take it before its server binds),
    never 6379, and not handed out before by this process."""
    low, high = _ephemeral_range()
    candidates = range(_PORT_FLOOR, low) if low - _PORT_FLOOR >= 1000 else range(high + 1, 65536)
    if len(candidates) >= 1000:
        for _ in range(200):
            port = _port_random.choice(candidates)
            if port in _RESERVED_PORTS or port in _handed_out or not _bindable(port):
                continue
            _handed_out.add(port)
            return port
    while True:  # an unusual port layout: whatever the kernel picks
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _RESERVED_PORTS and port not in _handed_out:
            _handed_out.add(port)
            return port


class PrivateRedis:
    """A redis-server child process on loopback, persisting to an AOF in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError(
                "no TALKINGFACE_REDIS_URL and no redis-server binary to start a private one "
                "(run `make setup`, or point TALKINGFACE_REDIS_URL at a Redis)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log_path = self.directory / "redis-server.log"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--dir",
                str(self.directory), "--daemonize", "no", "--logfile", str(log_path)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"redis-server exited at start-up; see {log_path}")
            try:
                if client.ping():
                    return self.url
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                time.sleep(0.05)
        self.stop()
        raise ConfigError(f"redis-server did not answer within {REDIS_START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, 10)


def local_serve_config(
    config_path: Path | str | None = None, cpus: int | None = None, port: int | None = None
):
    """The serve config for this machine: no GPU fractions without a GPU, every
    application's max_replicas capped to the cores, and the gRPC proxy on `port` if given."""
    import torch

    from talkingface.serving.fleet import load_serve_config

    config = load_serve_config(config_path).with_max_replicas(cpus or os.cpu_count() or 1)
    if not torch.cuda.is_available():
        config = config.without_gpus()
    return config if port is None else config.with_grpc_port(port)


class LocalFleet:
    """Start the fleet on this machine (see the module docstring); a context manager."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | str | None = None,
        broker_port: int | None = None,
        stages_port: int | None = None,
        num_cpus: int | None = None,
        redis_dir: Path | None = None,
        tenant: str = "default",
        key_file: bool = True,
    ) -> None:
        if not settings.motion_checkpoint:
            raise ConfigError(
                "the motion stage needs a trained model: set TALKINGFACE_MOTION_CHECKPOINT "
                "to CKPT_DIR/motion (or pass --ckpt CKPT_DIR)"
            )
        self.settings = settings
        self.config_path = config_path
        self.broker_port = settings.grpc_port if broker_port is None else broker_port
        self.stages_port = stages_port
        self.redis_dir = redis_dir or Path(settings.cache_dir) / "fleet" / "redis"
        self.num_cpus = num_cpus
        self.redis: PrivateRedis | None = None
        self.broker: Any = None
        self.serve_config: Any = None
        self.tenant = tenant  # whose key the fleet makes for its own client
        self.key_file = key_file  # write it to fleet_key_path for the client commands
        self.api_key = ""  # the fleet's own key when TALKINGFACE_BROKER_AUTH=keys
        self._api_key_id = ""
        self._ray_started = False

    @property
    def broker_address(self) -> str:
        return f"127.0.0.1:{self.broker.port}"

    @property
    def stages_address(self) -> str:
        return self.settings.stages_address

    def start(self) -> LocalFleet:
        from talkingface.broker.service import broker_server
        from talkingface.serving.fleet import deploy_fleet

        try:
            updates: dict[str, Any] = {}
            if not self.settings.redis_url:
                self.redis = PrivateRedis(self.redis_dir)
                updates["redis_url"] = self.redis.start()
            self.serve_config = local_serve_config(self.config_path, port=self.stages_port)
            updates["stages_address"] = f"127.0.0.1:{self.serve_config.grpc_port}"
            if not self.settings.stage_secret:  # a closed stage plane, its secret this run's
                updates["stage_secret"] = secrets.token_urlsafe(32)
            self.settings = dataclasses.replace(self.settings, **updates)
            log.info("starting the stage applications on local Ray Serve")
            # Logical CPUs for Ray: replicas mostly wait for requests, so four applications
            # fit on any machine; real parallelism is bounded by max_replicas above.
            cpus = self.num_cpus or max(os.cpu_count() or 1, 8)
            # The stages' node exporter on a free port: TALKINGFACE_METRICS_PORT is the broker's.
            stage_settings = dataclasses.replace(self.settings, metrics_port=0)
            deploy_fleet(self.serve_config, stage_settings, num_cpus=cpus)
            self._ray_started = True
            broker_settings = dataclasses.replace(self.settings, grpc_port=self.broker_port)
            self.broker = broker_server(broker_settings)
            self.broker.start()
            self.broker.warm_up()
            if self.settings.broker_auth == "keys":
                self._make_api_key()
        except BaseException:
            self.stop()
            raise
        return self

    def _make_api_key(self) -> None:
        from talkingface.broker.keys import KeyStore
        from talkingface.broker.service import redis_client

        keys = KeyStore(redis_client(self.settings))
        keys.create_tenant(self.tenant, exist_ok=True)
        self.api_key, info = keys.create_key(self.tenant, "render,avatars", name="local fleet")
        self._api_key_id = info.key_id
        if not self.key_file:
            return
        path = fleet_key_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.api_key + "\n")

    def _revoke_api_key(self) -> None:
        from talkingface.broker.keys import KeyStore
        from talkingface.broker.service import redis_client

        try:
            KeyStore(redis_client(self.settings)).revoke_key(self._api_key_id)
        except Exception:  # Redis down or the key gone: log it, do not fail the stop
            log.warning("could not revoke the fleet's API key %s", self._api_key_id)
        path = fleet_key_path(self.settings)
        try:
            if self.key_file and path.read_text().strip() == self.api_key:  # not another's
                path.unlink()
        except OSError:
            pass
        self.api_key = self._api_key_id = ""

    def endpoints(self) -> dict[str, str]:
        return {
            "broker": self.broker_address,
            **({"api_key": self.api_key} if self.api_key else {}),
            "broker_metrics": f"http://127.0.0.1:{self.broker.metrics_port}/metrics",
            "stages": self.stages_address,
            "redis": self.settings.redis_url if self.redis else "(TALKINGFACE_REDIS_URL)",
            "store": (str(self.settings.store_dir) if self.settings.store == "local"
                      else f"minio {self.settings.minio_endpoint}/{self.settings.minio_bucket}"),
            **self._metrics_endpoints(),
        }  # fmt: skip

    def _metrics_endpoints(self) -> dict[str, str]:
        """The stage replicas' /metrics (one exporter for the node, talkingface.serving.exporter)
        and Ray's own metrics export, when this fleet started Ray."""
        from talkingface.serving import ray_app
        from talkingface.serving.exporter import node_metrics_url

        try:
            urls = {"stage_metrics": node_metrics_url(timeout_s=15.0)}
        except TimeoutError:  # Ray joined elsewhere: no stage replica on this node
            urls = {"stage_metrics": "(no stage replica on this node)"}
        if ray_app.ray_metrics_port:
            urls["ray_metrics"] = f"http://127.0.0.1:{ray_app.ray_metrics_port}/metrics"
        return urls

    def stop(self) -> None:
        if self._api_key_id:
            self._revoke_api_key()
        if self.broker is not None:
            self.broker.stop(grace=5.0)
            self.broker = None
        if self._ray_started:
            import ray
            from ray import serve

            try:
                serve.shutdown()
            finally:
                ray.shutdown()
            self._ray_started = False
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> LocalFleet:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
