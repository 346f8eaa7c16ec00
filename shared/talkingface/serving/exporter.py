"""One Prometheus /metrics endpoint per Ray node for the stage replicas under Ray Serve.

Ray Serve runs each stage replica in its own worker process, and our gRPC interceptor never
sees their calls (Ray's proxy receives them), so the replicas record their metrics themselves
(`talkingface.serving.ray_app`) in prometheus_client's multiprocess mode: every replica
process writes its samples to memory-mapped files in one directory per node, and one
exporter per node merges them on each scrape.

- The directory: PROMETHEUS_MULTIPROC_DIR when the environment sets it (before the process
  started), else `<tmp>/talkingface-metrics/node-<ray node id>` (one per node and Ray
  cluster, so two local clusters on one machine never mix; a node directory of a cluster that
  is gone — nobody holds its exporter lock and nothing in it changed for STALE_S — is removed
  when a replica of a new one starts). `start_replica_exporter` sets
  the variable in the replica and switches prometheus_client's value class before any
  labelled series exists: the serve config's per-deployment `ray_actor_options` replace a
  runtime_env set in code, so the process environment cannot be relied on.
- The exporter: every replica runs a thread that tries, every RETRY_S seconds, to take an
  exclusive lock on `<dir>/exporter.lock` and, holding it, to bind TALKINGFACE_METRICS_PORT
  (0 = a free port) with a MultiProcessCollector registry. The one that succeeds serves the
  node and writes `<dir>/exporter.json` (its port and pid); the others keep trying, so when
  the serving replica dies (its lock goes with it) another takes over within RETRY_S.
- Gauges merge by their multiprocess_mode (livesum / livemax): files of replicas that died
  are dropped at each scrape, so in-flight counts and cache bytes of dead replicas vanish,
  while counters and histograms keep their totals.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
RETRY_S = 3.0
STALE_S = 3600.0
LOCK_FILE = "exporter.lock"
ADDRESS_FILE = "exporter.json"
_LIVE_GAUGE = re.compile(r"gauge_live\w*?_(\d+)\.db$")


def node_directory(node_id: str | None = None) -> Path:
    """This node's metrics directory (see the module docstring); `node_id` defaults to the Ray
    node this process runs on."""
    explicit = os.environ.get(ENV) or os.environ.get(ENV.lower())
    if explicit:
        return Path(explicit)
    if node_id is None:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    return Path(tempfile.gettempdir()) / "talkingface-metrics" / f"node-{node_id}"


def enable_multiprocess(directory: Path) -> None:
    """Record this process's series in `directory` from now on (multiprocess mode)."""
    from prometheus_client import values

    directory.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(directory)
    # prometheus_client picks its value class when imported; series created from now on use
    # the module attribute, so switching it is enough while no labelled series exists yet.
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NodeCollector:
    """MultiProcessCollector over `directory` that first forgets the live gauges of
    processes that have exited (prometheus_client leaves that to the application)."""

    def __init__(self, directory: Path) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.directory = Path(directory)
        self._inner = MultiProcessCollector(None, path=str(directory))

    def collect(self):
        from prometheus_client import multiprocess

        for path in glob.glob(str(self.directory / "gauge_live*_*.db")):
            match = _LIVE_GAUGE.search(os.path.basename(path))
            if match and not _alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    multiprocess.mark_process_dead(int(match.group(1)), str(self.directory))
        return self._inner.collect()


class NodeExporter:
    """Serve the node's merged metrics on `port` once this process holds the node's lock
    (see the module docstring); `start()` returns at once, the trying goes on in a thread."""

    def __init__(
        self, directory: Path, port: int, host: str = "0.0.0.0", retry_s: float = RETRY_S
    ) -> None:
        self.directory = Path(directory)
        self.port = int(port)
        self.host = host
        self.retry_s = retry_s
        self.server: Any = None
        self._lock_fd: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-exporter", daemon=True)
        self._complained = False

    @property
    def serving(self) -> bool:
        return self.server is not None

    def start(self) -> NodeExporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.try_serve():
                    return
            except Exception:
                log.exception("metrics exporter attempt failed")
            self._stop.wait(self.retry_s)

    def try_serve(self) -> bool:
        """One attempt: True when this process now serves the node's metrics."""
        from prometheus_client import CollectorRegistry, start_http_server

        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        registry = CollectorRegistry()
        registry.register(NodeCollector(self.directory))
        try:
            server, _ = start_http_server(self.port, addr=self.host, registry=registry)
        except OSError as exc:
            os.close(fd)  # let another replica try
            if not self._complained:
                log.warning("cannot serve the node's metrics on %s:%s: %s; retrying",
                            self.host, self.port, exc)  # fmt: skip
                self._complained = True
            return False
        self.server, self._lock_fd = server, fd
        address = {"port": server.server_port, "pid": os.getpid(), "host": self.host}
        tmp = self.directory / f".{ADDRESS_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(address))
        tmp.replace(self.directory / ADDRESS_FILE)
        log.info("serving the node's stage metrics", extra={"metrics_port": server.server_port})
        return True


_exporter: NodeExporter | None = None
_exporter_lock = threading.Lock()


def start_replica_exporter(port: int, host: str = "0.0.0.0") -> NodeExporter | None:
    """In a Ray Serve replica: switch to multiprocess mode in the node's directory and start
    trying to serve the node's metrics (once per process). None when this process is not a
    Ray worker (the metrics are then only recorded in-process)."""
    global _exporter
    with _exporter_lock:
        if _exporter is None:
            try:
                directory = node_directory()
            except Exception as exc:  # not in a Ray worker: nothing to export through
                log.warning("no Ray node for the metrics exporter: %s", exc)
                return None
            if not (os.environ.get(ENV) or os.environ.get(ENV.lower())):
                sweep_stale_nodes(directory.parent, keep=directory)
            enable_multiprocess(directory)
            _exporter = NodeExporter(directory, port, host).start()
        return _exporter


def sweep_stale_nodes(parent: Path, keep: Path, stale_s: float = STALE_S) -> list[Path]:
    """Remove the `node-*` directories under `parent` (other than `keep`) of clusters that are
    gone: no process holds their exporter lock and none of their files changed for `stale_s`.
    Returns those removed."""
    import shutil

    removed = []
    now = time.time()
    for node in Path(parent).glob("node-*"):
        if node == keep or not node.is_dir():
            continue
        try:
            newest = max((f.stat().st_mtime for f in node.iterdir()), default=node.stat().st_mtime)
            if now - newest < stale_s or _locked(node / LOCK_FILE):
                continue
        except OSError:
            continue  # another replica is removing it
        shutil.rmtree(node, ignore_errors=True)
        removed.append(node)
    return removed


def _locked(lock_file: Path) -> bool:
    """Whether a live process holds `lock_file` (False when it does not exist)."""
    try:
        fd = os.open(lock_file, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def exporter_address(directory: Path, timeout_s: float = 30.0) -> dict[str, Any]:
    """{"port", "pid", "host"} of the process serving `directory`'s metrics, waiting up to
    `timeout_s` for one (TimeoutError)."""
    path = Path(directory) / ADDRESS_FILE
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            address = json.loads(path.read_text())
            if _alive(int(address["pid"])):
                return address
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no process serves the metrics of {directory}")
        time.sleep(0.1)


def node_metrics_url(node_id: str | None = None, timeout_s: float = 30.0) -> str:
    """The /metrics URL of the stage replicas' exporter on this node (loopback)."""
    address = exporter_address(node_directory(node_id), timeout_s)
    return f"http://127.0.0.1:{address['port']}/metrics"
