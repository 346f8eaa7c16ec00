"""Signed webhooks (broker/webhooks.py), reflection off by default and INTERNAL with a
correlation id for unexpected exceptions: real brokers over loopback on the session Redis with
a local store, and real HTTP receivers (http.server) on loopback.

Jobs end here without workers: CancelJob for CANCELLED, and the JobStore writes a worker makes
(RUNNING, then SUCCEEDED or FAILED) for the others: the same Lua script that schedules the
webhook in production."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
import redis
from google.protobuf import json_format
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from talkingface.broker.jobs import WEBHOOKS_DUE_KEY, JobStore
from talkingface.broker.service import broker_server
from talkingface.broker.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    address_allowed,
    check_callback_url,
    parse_networks,
    sign,
    tenant_secret,
    verify,
)
from talkingface.config import Settings
from talkingface.errors import TalkingFaceError
from talkingface.storage import LocalStore
from talkingface.v1 import broker_pb2 as pb
from talkingface.v1 import broker_pb2_grpc
from tests.broker.test_limits import AUDIO, md, ready_avatar
from tests.fixtures.servers import start_redis

RETRY_BASE_S = 0.4
MAX_ATTEMPTS = 4


def _env(redis_url: str, store_dir: str, **extra: str) -> dict[str, str]:
    return {
        "TALKINGFACE_STORE": "local",
        "TALKINGFACE_STORE_DIR": store_dir,
        "TALKINGFACE_REDIS_URL": redis_url,
        "TALKINGFACE_GRPC_HOST": "127.0.0.1",
        "TALKINGFACE_GRPC_PORT": "0",
        "TALKINGFACE_METRICS_PORT": "0",
        "TALKINGFACE_BROKER_WORKERS": "0",
        "TALKINGFACE_BROKER_TRAIN_WORKERS": "0",
        "TALKINGFACE_JANITOR_INTERVAL_SECONDS": "0",
        "TALKINGFACE_LOG_FORMAT": "text",
        **extra,
    }


class _Broker:
    def __init__(self, env: dict[str, str]) -> None:
        self.settings = Settings.from_env(env)
        self.store = LocalStore(self.settings.store_dir)
        self.server = broker_server(self.settings, store=self.store)
        self.server.start()
        self.server.warm_up()
        self.redis = redis.Redis.from_url(self.settings.redis_url)
        self.jobs = JobStore.from_settings(self.redis, self.settings)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = broker_pb2_grpc.BrokerStub(self.channel)
        self.servicer = self.server.bindings[-1].servicer

    def close(self) -> None:
        self.channel.close()
        self.server.stop(grace=1.0)
        self.redis.close()


@pytest.fixture(scope="module")
def broker(redis_server, tmp_path_factory):
    """http allowed, short backoff, reflection turned on."""
    env = _env(redis_server.url, str(tmp_path_factory.mktemp("webhooks") / "store"),
               TALKINGFACE_WEBHOOK_ALLOW_HTTP="true",
               TALKINGFACE_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",  # the loopback receiver
               TALKINGFACE_WEBHOOK_RETRY_BASE_SECONDS=str(RETRY_BASE_S),
               TALKINGFACE_WEBHOOK_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
               TALKINGFACE_WEBHOOK_TIMEOUT_SECONDS="2",
               TALKINGFACE_BROKER_REFLECTION="true")  # fmt: skip
    b = _Broker(env)
    yield b
    b.close()


@pytest.fixture(scope="module")
def default_broker(redis_server, tmp_path_factory):
    """The defaults: https only, reflection off."""
    b = _Broker(_env(redis_server.url, str(tmp_path_factory.mktemp("default") / "store")))
    yield b
    b.close()


@pytest.fixture(scope="module")
def strict_broker(tmp_path_factory):
    """http allowed (so a loopback receiver could be reached at all) but no allowed networks:
    what a production broker does with internal addresses. On a Redis of its own: every
    broker on one Redis delivers any due webhook, and the `broker` fixture's allows loopback."""
    with start_redis(tmp_path_factory.mktemp("strict-redis")) as server:
        yield from _strict(server.url, tmp_path_factory)


def _strict(redis_url, tmp_path_factory):
    env = _env(redis_url, str(tmp_path_factory.mktemp("strict") / "store"),
               TALKINGFACE_WEBHOOK_ALLOW_HTTP="true",
               TALKINGFACE_WEBHOOK_RETRY_BASE_SECONDS=str(RETRY_BASE_S),
               TALKINGFACE_WEBHOOK_TIMEOUT_SECONDS="2")  # fmt: skip
    b = _Broker(env)
    yield b
    b.close()


class Receiver:
    """A loopback HTTP server recording every POST; `statuses` are answered first (then 200)."""

    def __init__(self, port: int = 0, statuses: tuple[int, ...] = (), location: str = "") -> None:
        self.posts: list[dict] = []
        self.location = location  # sent with every answer when set (a redirect)
        self.statuses = list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.posts.append({"path": self.path, "headers": dict(self.headers),
                                       "body": body, "at": time.monotonic(),
                                       "status": status})  # fmt: skip
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def for_path(self, path: str) -> list[dict]:
        return [p for p in self.posts if p["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def new_tenant() -> str:
    return f"wh-{uuid.uuid4().hex[:10]}"


def submit(broker, tenant: str, callback_url: str) -> pb.Job:
    avatar_id = ready_avatar(broker, tenant)
    request = pb.SubmitRenderRequest(avatar_id=avatar_id, inline_audio=AUDIO,
                                     callback_url=callback_url)  # fmt: skip
    return broker.stub.SubmitRender(request, metadata=md(tenant), timeout=30)


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def get_job(broker, tenant: str, job_id: str) -> pb.Job:
    return broker.stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=md(tenant), timeout=30)


def end_job(broker, tenant: str, job_id: str, state: str) -> None:
    if state == "CANCELLED":
        broker.stub.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=md(tenant), timeout=30)
        return
    broker.jobs.update(job_id, state="RUNNING", stage="AUDIO_FEATURES")
    if state == "SUCCEEDED":
        key = f"results/{tenant}/{job_id}/video.mp4"
        broker.store.put(key, b"mp4")
        broker.jobs.update(job_id, state="SUCCEEDED", stage="", progress=1.0,
                           result={"video": {"key": key, "size": 3, "content_type": "video/mp4"},
                                   "duration_seconds": 1.0, "frames": 25})  # fmt: skip
    else:
        broker.jobs.update(job_id, state="FAILED", error_code="AUDIO_CORRUPT",
                           error_message="not audio")  # fmt: skip


@pytest.mark.parametrize("state", ["SUCCEEDED", "FAILED", "CANCELLED"])
def test_one_signed_delivery_per_final_state(broker, receiver, state):
    tenant = new_tenant()
    path = f"/hook/{uuid.uuid4().hex}"
    job = submit(broker, tenant, receiver.url(path))
    assert job.callback_url == receiver.url(path)
    assert job.webhook.state == ""  # nothing to deliver before the job ends
    end_job(broker, tenant, job.job_id, state)
    post = wait_for(lambda: receiver.for_path(path), what="the webhook")[0]
    final = wait_for(lambda: (j := get_job(broker, tenant, job.job_id)).webhook.state
                     == "delivered" and j, what="delivered on the job")  # fmt: skip
    time.sleep(1.0)  # a second POST would arrive within this
    assert len(receiver.for_path(path)) == 1

    # The body is the final job, as the API's Job message.
    body = post["body"]
    sent = json_format.Parse(body, pb.Job())
    assert sent.job_id == job.job_id
    assert pb.JobState.Name(sent.state) == f"JOB_STATE_{state}"
    assert json.loads(body)["job_id"] == job.job_id  # the proto's field names
    if state == "SUCCEEDED":
        assert sent.render.video.key.endswith(f"{job.job_id}/video.mp4")
    if state == "FAILED":
        assert sent.error.message == "not audio"

    # Signed with the tenant's secret; another secret (another tenant's) does not verify.
    secret = tenant_secret(broker.redis, tenant)
    headers = post["headers"]
    assert headers[SIGNATURE_HEADER].startswith("v1=")
    assert verify(secret, headers, body)
    assert not verify(tenant_secret(broker.redis, new_tenant()), headers, body)
    assert not verify(secret, headers, body + b" ")  # a changed body
    stamp = int(headers[TIMESTAMP_HEADER])
    assert not verify(secret, headers, body, now=stamp + 301)  # a replay 5 minutes later

    # Recorded on the job.
    assert final.webhook.attempts == 1
    assert final.webhook.last_status == "HTTP 200"
    assert final.webhook.delivered_at.seconds > 0
    assert broker.redis.zscore(WEBHOOKS_DUE_KEY, job.job_id) is None


def test_receiver_down_then_up_is_retried_with_backoff(broker):
    tenant = new_tenant()
    with socket.socket() as probe:  # a port nobody listens on (yet)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = f"/down/{uuid.uuid4().hex}"
    job = submit(broker, tenant, f"http://127.0.0.1:{port}{path}")
    end_job(broker, tenant, job.job_id, "CANCELLED")
    refused = wait_for(lambda: (j := get_job(broker, tenant, job.job_id)).webhook.attempts >= 2
                       and j, what="two refused attempts")  # fmt: skip
    assert refused.webhook.state == "pending"
    assert refused.webhook.last_status == "connection refused"
    assert not refused.webhook.HasField("delivered_at")

    up = Receiver(port=port)
    try:
        wait_for(lambda: up.for_path(path), what="the delivery once the receiver is up")
        final = wait_for(lambda: (j := get_job(broker, tenant, job.job_id)).webhook.state
                         == "delivered" and j, what="delivered")  # fmt: skip
        assert final.webhook.attempts >= 3
        assert final.webhook.last_status == "HTTP 200"
        assert len(up.for_path(path)) == 1
    finally:
        up.close()


def test_server_errors_are_retried_with_growing_waits(broker):
    tenant = new_tenant()
    receiver = Receiver(statuses=(500, 503))
    try:
        path = f"/flaky/{uuid.uuid4().hex}"
        job = submit(broker, tenant, receiver.url(path))
        end_job(broker, tenant, job.job_id, "FAILED")
        wait_for(lambda: len(receiver.for_path(path)) >= 3, what="three POSTs")
        final = wait_for(lambda: (j := get_job(broker, tenant, job.job_id)).webhook.state
                         == "delivered" and j, what="delivered")  # fmt: skip
        posts = receiver.for_path(path)
        assert [p["status"] for p in posts] == [500, 503, 200]
        assert final.webhook.attempts == 3
        first, second = posts[1]["at"] - posts[0]["at"], posts[2]["at"] - posts[1]["at"]
        assert first >= RETRY_BASE_S * 0.95, first
        assert second >= 2 * RETRY_BASE_S * 0.95, second  # doubled
        # Every attempt is signed afresh.
        secret = tenant_secret(broker.redis, tenant)
        assert all(verify(secret, p["headers"], p["body"]) for p in posts)
    finally:
        receiver.close()


def test_delivery_gives_up_after_max_attempts(broker):
    tenant = new_tenant()
    receiver = Receiver(statuses=(500,) * 10)
    try:
        path = f"/broken/{uuid.uuid4().hex}"
        job = submit(broker, tenant, receiver.url(path))
        end_job(broker, tenant, job.job_id, "CANCELLED")
        final = wait_for(lambda: (j := get_job(broker, tenant, job.job_id)).webhook.state
                         == "failed" and j, timeout=30, what="given up")  # fmt: skip
        assert final.webhook.attempts == MAX_ATTEMPTS
        assert final.webhook.last_status == "HTTP 500"
        time.sleep(1.5 * RETRY_BASE_S * 2 ** (MAX_ATTEMPTS - 1) / 2)
        assert len(receiver.for_path(path)) == MAX_ATTEMPTS
        assert broker.redis.zscore(WEBHOOKS_DUE_KEY, job.job_id) is None
    finally:
        receiver.close()


def test_redirects_are_not_followed(broker):
    tenant = new_tenant()
    target = Receiver()
    path = f"/moved/{uuid.uuid4().hex}"
    redirecting = Receiver(statuses=(307,) * 10, location=target.url(path))
    try:
        job = submit(broker, tenant, redirecting.url(path))
        end_job(broker, tenant, job.job_id, "CANCELLED")
        wait_for(lambda: get_job(broker, tenant, job.job_id).webhook.attempts >= 1,
                 what="one attempt")  # fmt: skip
        assert get_job(broker, tenant, job.job_id).webhook.last_status == "HTTP 307"
        assert get_job(broker, tenant, job.job_id).webhook.state == "pending"  # to be retried
        time.sleep(0.5)
        assert target.posts == []  # the Location was not followed
    finally:
        target.close()
        redirecting.close()


def test_http_callback_refused_by_default(default_broker):
    tenant = new_tenant()
    with pytest.raises(grpc.RpcError) as info:
        submit(default_broker, tenant, "http://127.0.0.1:9/hook")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("INVALID_REQUEST: callback_url must use https")
    assert "TALKINGFACE_WEBHOOK_ALLOW_HTTP" in info.value.details()
    # https is accepted (and its job carries the URL); the tenant's secret now exists.
    job = submit(default_broker, tenant, "https://hooks.example.com/tf?x=1")
    assert job.callback_url == "https://hooks.example.com/tf?x=1"
    assert default_broker.redis.exists(f"tf:webhooksecret:{tenant}")


@pytest.mark.parametrize(
    ("url", "words"),
    [("ftp://example.com/x", "must be an https URL"),
     ("https:///nohost", "has no host"),
     ("https://user:pw@example.com/", "credentials"),
     ("https://example.com/#frag", "fragment"),
     ("https://example.com/a b", "whitespace"),
     ("https://example.com:99999/", "not a valid URL"),
     ("https://example.com/" + "a" * 3000, "longer than 2048")],
)  # fmt: skip
def test_bad_callback_urls(url, words):
    with pytest.raises(TalkingFaceError) as info:
        check_callback_url(url)
    assert info.value.code == "INVALID_REQUEST"
    assert words in info.value.message


def test_secret_rotation_changes_the_signature(broker):
    tenant = new_tenant()
    first = tenant_secret(broker.redis, tenant)
    assert tenant_secret(broker.redis, tenant) == first  # stable until rotated
    second = tenant_secret(broker.redis, tenant, rotate=True)
    assert second != first
    body, stamp = b'{"job_id":"x"}', str(int(time.time()))
    headers = {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(second, stamp, body)}
    assert verify(second, headers, body) and not verify(first, headers, body)


# --- reflection ------------------------------------------------------------------------------


def _reflected_services(b) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(b.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    return [s.name for s in replies[0].list_services_response.service]


def test_reflection_is_off_by_default(default_broker, broker):
    with pytest.raises(grpc.RpcError) as info:
        _reflected_services(default_broker)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "talkingface.v1.Broker" in _reflected_services(broker)  # the setting turns it on


# --- unexpected exceptions --------------------------------------------------------------------


def test_unexpected_exception_answers_internal_with_a_correlation_id(
    default_broker, caplog, monkeypatch
):
    secret_text = f"secret-detail-{uuid.uuid4().hex}"

    def broken(*args, **kwargs):
        raise RuntimeError(secret_text)

    async def broken_async(*args, **kwargs):
        raise RuntimeError(secret_text)

    monkeypatch.setattr(default_broker.servicer.jobs, "get_async", broken_async)  # GetJob
    monkeypatch.setattr(default_broker.servicer.jobs, "watch", broken)
    tenant = new_tenant()
    caplog.set_level(logging.ERROR, logger="talkingface.serving.internal_errors")
    ids = []
    for call in (
        lambda: get_job(default_broker, tenant, "some-job"),
        lambda: list(default_broker.stub.WatchJob(pb.WatchJobRequest(job_id="some-job"),
                                                  metadata=md(tenant), timeout=30)),
    ):  # fmt: skip
        with pytest.raises(grpc.RpcError) as info:
            call()
        error = info.value
        assert error.code() == grpc.StatusCode.INTERNAL
        assert secret_text not in error.details()
        assert "RuntimeError" not in error.details()
        assert error.details().startswith("INTERNAL: internal error, correlation id ")
        ids.append(error.details().rsplit(" ", 1)[1])
        assert len(ids[-1]) == 32
    assert ids[0] != ids[1]
    for correlation_id in ids:
        logged = [r for r in caplog.records if correlation_id in r.getMessage()]
        assert len(logged) == 1
        assert logged[0].exc_info and secret_text in str(logged[0].exc_info[1])
    # An error of ours still answers with its own code (not turned into INTERNAL).
    monkeypatch.undo()
    with pytest.raises(grpc.RpcError) as info:
        get_job(default_broker, tenant, "no-such-job")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_webhook_secret_command(broker, monkeypatch, capsys):
    from talkingface.cli import main

    monkeypatch.setenv("TALKINGFACE_REDIS_URL", broker.settings.redis_url)
    tenant = new_tenant()
    assert main(["tenant", "webhook-secret", "--tenant", tenant, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["webhook_secret"] == tenant_secret(broker.redis, tenant)  # made on first use
    assert main(["tenant", "webhook-secret", "--tenant", tenant, "--rotate"]) == 0
    rotated = capsys.readouterr().out.splitlines()[-1]
    assert rotated != shown["webhook_secret"]
    assert rotated == tenant_secret(broker.redis, tenant)
    assert main(["tenant", "webhook-secret", "--tenant", "bad:name"]) == 2
    assert "INVALID_REQUEST" in capsys.readouterr().err


# --- server-side request forgery ------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed"),
    [("8.8.8.8", True), ("2606:4700::1111", True),
     ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
     ("169.254.169.254", False),  # the cloud metadata endpoint
     ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("192.0.2.1", False),
     ("::1", False), ("fd00::1", False), ("fe80::1", False),
     ("::ffff:10.0.0.1", False), ("2002:a00:1::", False), ("64:ff9b::a00:1", False)],
)  # fmt: skip
def test_only_public_addresses_are_webhook_targets(address, allowed):
    ip = ipaddress.ip_address(address)
    assert address_allowed(ip) is allowed
    assert address_allowed(ip, parse_networks(f"{address}/128" if ":" in address else
                                              f"{address}/32"))  # fmt: skip


def test_callbacks_to_internal_addresses_are_refused(strict_broker, receiver):
    tenant = new_tenant()
    for url in (receiver.url("/hook"), "http://[::1]:9/x", "https://10.0.0.7/x",
                "http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.1]:9/",
                "https://localhost/x", "https://api.localhost./x"):  # fmt: skip
        with pytest.raises(grpc.RpcError) as info:
            submit(strict_broker, tenant, url)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
        details = info.value.details()
        assert "not a public address" in details or "loopback host" in details, details
    assert "TALKINGFACE_WEBHOOK_ALLOWED_NETWORKS" in details or "loopback" in details
    # A name for a loopback address passes submission (nothing is resolved then) and is
    # blocked at delivery, before any connection: 2130706433 is 127.0.0.1 as one number.
    job = submit(strict_broker, tenant, f"http://2130706433:{receiver.port}/hook")
    end_job(strict_broker, tenant, job.job_id, "FAILED")
    blocked = wait_for(lambda: (j := get_job(strict_broker, tenant, job.job_id)).webhook.attempts
                       >= 1 and j, what="the blocked attempt")  # fmt: skip
    assert (
        blocked.webhook.last_status
        == "blocked: 2130706433 resolves to 127.0.0.1, not a public address"
    )
    assert blocked.webhook.state in ("pending", "failed")
    time.sleep(0.3)
    assert receiver.posts == []


def test_delivery_connects_to_the_address_it_checked(monkeypatch, receiver):
    """DNS rebinding: the name is resolved once, checked, and that very address is connected
    to; a resolver that would answer differently the second time is never asked again."""
    from talkingface.broker import webhooks

    real = socket.getaddrinfo
    asked: list[str] = []

    def resolver(host, *args, **kwargs):
        if host != "hooks.example.com":
            return real(host, *args, **kwargs)  # the connect's own numeric lookup
        asked.append(host)
        address = "127.0.0.1" if len(asked) == 1 else "10.9.9.9"  # rebinds after one answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, receiver.port))]

    monkeypatch.setattr(webhooks.socket, "getaddrinfo", resolver)
    status = webhooks.post(f"http://hooks.example.com:{receiver.port}/p", b"{}", {}, 2.0,
                           parse_networks("127.0.0.0/8"))  # fmt: skip
    assert status == "HTTP 200"
    (posted,) = receiver.posts
    assert posted["headers"]["Host"] == f"hooks.example.com:{receiver.port}"
    assert asked == ["hooks.example.com"]
