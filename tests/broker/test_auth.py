"""Authentication of the broker API: API keys (scopes, expiry, revocation, hashing), the
interceptor on a real broker over loopback gRPC, the tenant and key commands, and TLS with a
certificate made at test time."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import time
import uuid
from types import SimpleNamespace

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from talkingface.broker.auth import Authenticator
from talkingface.broker.client import BrokerClient
from talkingface.broker.jobs import JobStore
from talkingface.broker.keys import KeyStore, api_key_key, tenant_keys_key
from talkingface.broker.service import broker_server
from talkingface.cli import main
from talkingface.config import ConfigError, Settings
from talkingface.errors import TalkingFaceError
from talkingface.v1 import broker_pb2 as pb
from talkingface.v1 import broker_pb2_grpc


def _env(redis_url: str, tmp, **extra: str) -> dict[str, str]:
    return {
        "TALKINGFACE_REDIS_URL": redis_url,
        "TALKINGFACE_STORE": "local",
        "TALKINGFACE_STORE_DIR": str(tmp / "store"),
        "TALKINGFACE_CACHE_DIR": str(tmp / "cache"),
        "TALKINGFACE_GRPC_HOST": "127.0.0.1",
        "TALKINGFACE_GRPC_PORT": "0",
        "TALKINGFACE_METRICS_PORT": "0",
        "TALKINGFACE_BROKER_WORKERS": "0",
        "TALKINGFACE_BROKER_TRAIN_WORKERS": "0",
        "TALKINGFACE_JANITOR_INTERVAL_SECONDS": "0",
        "TALKINGFACE_LOG_FORMAT": "text",
        **extra,
    }


@pytest.fixture(scope="module")
def broker(redis_server, tmp_path_factory):
    """A broker API (no workers) with TALKINGFACE_BROKER_AUTH=keys and no key cache."""
    tmp = tmp_path_factory.mktemp("auth")
    settings = Settings.from_env(_env(redis_server.url, tmp, TALKINGFACE_BROKER_AUTH="keys",
                                      TALKINGFACE_BROKER_AUTH_CACHE_SECONDS="0"))  # fmt: skip
    server = broker_server(settings)
    server.start()
    server.warm_up()
    client = redis.Redis.from_url(redis_server.url)
    yield SimpleNamespace(address=f"127.0.0.1:{server.port}", keys=KeyStore(client),
                          jobs=JobStore(client), redis=client, url=redis_server.url)  # fmt: skip
    server.stop(grace=1.0)
    client.close()


def _tenant(broker, prefix: str = "t") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    broker.keys.create_tenant(name)
    return name


def _client(broker, key: str | None, tenant: str = "default") -> BrokerClient:
    return BrokerClient(broker.address, tenant, timeout_s=10, api_key=key or "", ca_file="")


def _code(call) -> str:
    with pytest.raises(TalkingFaceError) as info:
        call()
    return info.value.code


def _list_jobs(client: BrokerClient) -> list[str]:
    reply = client._call(client.stub.ListJobs, pb.ListJobsRequest(page_size=100))
    return [job.job_id for job in reply.jobs]


def test_a_key_reaches_its_tenants_jobs(broker):
    tenant = _tenant(broker)
    key, info = broker.keys.create_key(tenant, "render")
    assert key.startswith(f"tfk_{info.key_id}_")
    job, _ = broker.jobs.create(tenant, "render", {"x": 1})
    with _client(broker, key) as client:
        assert client.get_job(job.job_id).job_id == job.job_id
        assert job.job_id in _list_jobs(client)
        upload = client.upload(b"RIFF....some bytes")
        assert upload.upload_id and upload.size == 18


def test_missing_wrong_expired_and_revoked_keys_are_unauthenticated(broker):
    tenant = _tenant(broker)
    job, _ = broker.jobs.create(tenant, "render", {"x": 1})
    good, _ = broker.keys.create_key(tenant, "render")
    wrong_secret = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    unknown = f"tfk_{'0' * 16}_{'x' * 43}"
    short_lived, _ = broker.keys.create_key(tenant, "render", expires_in_s=0.3)
    revoked, revoked_info = broker.keys.create_key(tenant, "render")
    broker.keys.revoke_key(revoked_info.key_id)
    time.sleep(0.4)
    for key in ("", "not-a-key", wrong_secret, unknown, short_lived, revoked):
        with _client(broker, key, tenant) as client:
            assert _code(lambda c=client: c.get_job(job.job_id)) == "UNAUTHENTICATED", key
            assert _code(lambda c=client: list(c.watch(job.job_id))) == "UNAUTHENTICATED"
            assert _code(lambda c=client: c.upload(b"data")) == "UNAUTHENTICATED"
    with _client(broker, short_lived) as api, pytest.raises(TalkingFaceError, match="expired"):
        api.get_job(job.job_id)
    with _client(broker, revoked) as api, pytest.raises(TalkingFaceError, match="revoked"):
        api.get_job(job.job_id)
    with _client(broker, good) as client:  # the same tenant's valid key still works
        assert client.get_job(job.job_id).job_id == job.job_id
    with grpc.insecure_channel(broker.address) as channel:  # a non-Bearer scheme
        stub = pb_stub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=5,
                        metadata=(("authorization", f"Basic {good}"),))  # fmt: skip
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in err.value.details()


def pb_stub(channel):
    from talkingface.v1 import broker_pb2_grpc

    return broker_pb2_grpc.BrokerStub(channel)


def test_a_missing_scope_is_permission_denied(broker):
    tenant = _tenant(broker)
    job, _ = broker.jobs.create(tenant, "render", {"x": 1})
    render, _ = broker.keys.create_key(tenant, "render")
    avatars, _ = broker.keys.create_key(tenant, "avatars")
    admin, _ = broker.keys.create_key(tenant, "admin")
    with _client(broker, avatars) as client:
        with pytest.raises(TalkingFaceError, match="needs render") as info:
            client.submit_render("av-none", audio=b"RIFF")
        assert info.value.code == "PERMISSION_DENIED"
        assert client.get_job(job.job_id).job_id == job.job_id  # job reads: either scope
    with _client(broker, render) as client:
        assert _code(lambda: client.get_avatar("av-none")) == "PERMISSION_DENIED"
        # with the scope, the servicer answers: this tenant has no such avatar
        assert _code(lambda: client.submit_render("av-none", audio=b"RIFF")) == ("AVATAR_NOT_FOUND")
    with _client(broker, admin) as client:
        assert _code(lambda: client.get_avatar("av-none")) == "AVATAR_NOT_FOUND"
        assert client.get_job(job.job_id).job_id == job.job_id


def test_with_auth_on_the_tenant_header_cannot_reach_another_tenant(broker):
    owner, intruder = _tenant(broker, "own"), _tenant(broker, "other")
    job, _ = broker.jobs.create(owner, "render", {"x": 1})
    key, _ = broker.keys.create_key(intruder, "admin")
    with _client(broker, key, tenant=owner) as client:  # claims to be the owner
        assert _code(lambda: client.get_job(job.job_id)) == "JOB_NOT_FOUND"
        assert _code(lambda: client.cancel_job(job.job_id)) == "JOB_NOT_FOUND"
        assert _code(lambda: list(client.watch(job.job_id, timeout_s=5))) == "JOB_NOT_FOUND"
        assert job.job_id not in _list_jobs(client)
    assert broker.jobs.get(job.job_id).cancel_requested is False
    owner_key, _ = broker.keys.create_key(owner, "render")
    with _client(broker, owner_key, tenant="some-other-name") as client:  # header ignored
        assert client.get_job(job.job_id).job_id == job.job_id


def test_health_stays_open_without_a_key(broker):
    with grpc.insecure_channel(broker.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="talkingface.v1.Broker"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_key_secrets_are_not_stored_in_clear(broker):
    tenant = _tenant(broker)
    key, info = broker.keys.create_key(tenant, "render,avatars", name="ci")
    secret = key.split("_", 2)[2]
    record = broker.redis.hgetall(api_key_key(info.key_id))
    stored = b" ".join([*record.keys(), *record.values()])
    assert record[b"tenant"] == tenant.encode() and record[b"scopes"] == b"avatars,render"
    assert secret.encode() not in stored and key.encode() not in stored
    assert len(record[b"secret_sha256"]) == 64
    assert broker.redis.smembers(tenant_keys_key(tenant)) == {info.key_id.encode()}


def test_revocation_takes_effect_within_the_cache_ttl(broker):
    tenant = _tenant(broker)
    key, info = broker.keys.create_key(tenant, "render")
    auth = Authenticator(broker.redis, cache_s=0.5)
    metadata = [("authorization", f"Bearer {key}")]
    assert auth.authenticate(metadata).tenant == tenant
    broker.keys.revoke_key(info.key_id)
    assert auth.authenticate(metadata).tenant == tenant  # cached
    time.sleep(0.6)
    with pytest.raises(TalkingFaceError, match="revoked"):
        auth.authenticate(metadata)


def test_bad_scopes_and_unknown_tenants_are_refused(broker):
    tenant = _tenant(broker)
    with pytest.raises(TalkingFaceError, match="scopes must be") as info:
        broker.keys.create_key(tenant, "render,root")
    assert info.value.code == "INVALID_REQUEST"
    with pytest.raises(TalkingFaceError, match="tenant create") as info:
        broker.keys.create_key(f"nobody-{uuid.uuid4().hex[:8]}", "render")
    assert info.value.code == "NOT_FOUND"
    assert _code(lambda: broker.keys.create_tenant(tenant)) == "ALREADY_EXISTS"
    assert _code(lambda: broker.keys.create_tenant("bad name!")) == "INVALID_REQUEST"


# --- the commands ----------------------------------------------------------------------------


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tenant_and_key_commands_end_to_end(broker, monkeypatch, capsys):
    monkeypatch.setenv("TALKINGFACE_REDIS_URL", broker.url)
    tenant = f"cli-{uuid.uuid4().hex[:10]}"
    job, _ = broker.jobs.create(tenant, "render", {"x": 1})
    assert _run(capsys, "tenant", "create", tenant)[:2] == (0, f"tenant {tenant} created\n")
    code, out, err = _run(capsys, "tenant", "create", tenant)
    assert code == 2 and "ALREADY_EXISTS" in err

    code, out, _ = _run(capsys, "key", "create", "--tenant", tenant, "--scopes",
                        "render", "--expires-days", "1", "--json")  # fmt: skip
    assert code == 0
    created = json.loads(out)
    key, key_id = created["key"], created["key_id"]
    assert created["tenant"] == tenant and created["scopes"] == ["render"]
    assert created["status"] == "active" and created["expires_at"] > time.time() + 86000
    code, out, _ = _run(capsys, "key", "create", "--tenant", tenant, "--scopes", "avatars")
    assert code == 0 and "shown only now" in out
    plain_key = next(line for line in out.splitlines() if line.startswith("tfk_"))

    monkeypatch.setenv("TALKINGFACE_API_KEY", key)  # the clients read it from the environment
    with BrokerClient(broker.address, timeout_s=10, ca_file="") as client:
        assert client.get_job(job.job_id).job_id == job.job_id

    code, out, _ = _run(capsys, "key", "list", "--tenant", tenant, "--json")
    listed = {k["key_id"]: k for k in json.loads(out)}
    assert code == 0 and set(listed) == {key_id, plain_key.split("_")[1]}
    assert "key" not in listed[key_id] and key.split("_", 2)[2] not in out
    code, out, _ = _run(capsys, "tenant", "list", "--json")
    assert {"tenant": tenant, "keys": 2} == {
        k: v
        for k, v in next(t for t in json.loads(out) if t["tenant"] == tenant).items()
        if k in ("tenant", "keys")
    }

    assert _run(capsys, "key", "revoke", key_id)[0] == 0
    code, out, _ = _run(capsys, "key", "list", "--tenant", tenant, "--json")
    assert {k["key_id"]: k["status"] for k in json.loads(out)}[key_id] == "revoked"
    with BrokerClient(broker.address, timeout_s=10, ca_file="") as client:
        assert _code(lambda: client.get_job(job.job_id)) == "UNAUTHENTICATED"

    code, out, err = _run(capsys, "key", "create", "--tenant", tenant, "--scopes", "root")
    assert code == 2 and "INVALID_REQUEST" in err and "render, avatars, admin" in err
    code, out, err = _run(capsys, "key", "create", "--tenant", "no-such-" + tenant,
                          "--scopes", "render")  # fmt: skip
    assert code == 2 and "NOT_FOUND" in err
    code, out, err = _run(capsys, "key", "revoke", "0123456789abcdef")
    assert code == 2 and "NOT_FOUND" in err

    code, out, _ = _run(capsys, "tenant", "delete", tenant, "--json")
    assert code == 0 and json.loads(out) == {"tenant": tenant, "deleted": True,
                                             "keys_deleted": 2}  # fmt: skip
    assert not broker.redis.exists(api_key_key(key_id))
    monkeypatch.setenv("TALKINGFACE_API_KEY", plain_key)
    with BrokerClient(broker.address, timeout_s=10, ca_file="") as client:
        assert _code(lambda: client.get_job(job.job_id)) == "UNAUTHENTICATED"
    code, out, err = _run(capsys, "tenant", "delete", tenant)
    assert code == 2 and "NOT_FOUND" in err


def test_the_job_command_reads_lists_cancels_and_deletes_own_jobs(broker, monkeypatch, capsys):
    """`talkingface job get|list|cancel|delete` against the broker, with the key from
    TALKINGFACE_API_KEY (another tenant's job reads as not found)."""
    tenant, other = _tenant(broker, "job"), _tenant(broker, "job")
    key, _ = broker.keys.create_key(tenant, "render")
    monkeypatch.setenv("TALKINGFACE_BROKER_ADDRESS", broker.address)
    monkeypatch.setenv("TALKINGFACE_API_KEY", key)
    monkeypatch.setenv("TALKINGFACE_REDIS_URL", broker.url)
    queued = [broker.jobs.create(tenant, "render", {"n": i})[0].job_id for i in range(3)]
    foreign, _ = broker.jobs.create(other, "render", {})
    code, out, err = _run(capsys, "job", "get", queued[0], "--json")
    assert code == 0, err
    assert json.loads(out) == {"job_id": queued[0], "state": "QUEUED", "attempt": 0}
    code, out, _ = _run(capsys, "job", "list", "--json")
    assert code == 0 and [row["job_id"] for row in json.loads(out)] == queued[::-1]
    code, out, _ = _run(capsys, "job", "list", "--limit", "2", "--json")
    assert [row["job_id"] for row in json.loads(out)] == queued[:0:-1]
    code, out, _ = _run(capsys, "job", "cancel", queued[1], "--json")
    assert code == 0 and json.loads(out)["state"] == "CANCELLED"
    code, out, _ = _run(capsys, "job", "list", "--state", "CANCELLED", "--json")
    assert [row["job_id"] for row in json.loads(out)] == [queued[1]]
    code, out, _ = _run(capsys, "job", "delete", queued[2], "--json")
    assert code == 0
    deleted = json.loads(out)
    assert deleted["job_id"] == queued[2] and deleted["cancelled"] is True
    assert not broker.redis.exists(f"tf:job:{queued[2]}")
    code, out, _ = _run(capsys, "job", "delete", queued[2])
    assert code == 2
    for action in ("get", "cancel", "delete"):
        code, _, err = _run(capsys, "job", action, foreign.job_id)
        assert code == 2 and "JOB_NOT_FOUND" in err, action
    assert broker.jobs.get(foreign.job_id).state == "QUEUED"  # untouched
    code, _, err = _run(capsys, "job", "get")
    assert code == 2 and "JOB_ID is required" in err


def _rate_refusal(call) -> TalkingFaceError:
    with pytest.raises(TalkingFaceError) as info:
        call()
    return info.value


def test_a_key_is_held_to_its_own_rate_within_its_tenants(broker, monkeypatch, capsys):
    """Per-key token buckets: a key over its own rate is refused while another key of the same
    tenant still works, and a refused call takes no token from the tenant's bucket."""
    monkeypatch.setenv("TALKINGFACE_REDIS_URL", broker.url)
    tenant = _tenant(broker, "rate")
    code, out, _ = _run(capsys, "key", "create", "--tenant", tenant, "--scopes", "render",
                        "--submit-per-second", "0.5", "--submit-burst", "2", "--json")  # fmt: skip
    assert code == 0
    created = json.loads(out)
    assert created["limits"] == {"submit_burst": "2", "submit_per_second": "0.5"}
    slow = _client(broker, created["key"])
    other, _ = broker.keys.create_key(tenant, "render")  # on the defaults: no key limit
    fast = _client(broker, other)
    empty = pb.SubmitRenderRequest(avatar_id="nobody")  # refused after taking its tokens

    def submit(client):
        return lambda: client._call(client.stub.SubmitRender, empty)

    for _ in range(2):
        assert _code(submit(slow)) == "AUDIO_EMPTY"
    error = _rate_refusal(submit(slow))
    assert error.code == "RATE_LIMITED"
    assert f"API key {created['key_id']}" in error.message and "submit_burst = 2" in error.message
    assert f"talkingface key limits {created['key_id']}" in error.message
    assert 0 < int(error.metadata["retry-after-ms"]) <= 2000
    for _ in range(5):
        assert _code(submit(fast)) == "AUDIO_EMPTY"  # the tenant's bucket (50) is not empty
    # The tenant's bucket lost one token per accepted call only (7), none for the refusal.
    tokens = float(broker.redis.hget(f"tf:bucket:{tenant}:submit", "tokens"))
    assert 50 - 7 <= tokens < 50 - 7 + 1

    # `key limits` lifts the key's own rate; `--clear` puts it back on the default (0: none).
    code, out, _ = _run(capsys, "key", "limits", created["key_id"], "--submit-per-second", "0",
                        "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["limits"]["submit_per_second"] == "0.0"
    assert _code(submit(slow)) == "AUDIO_EMPTY"  # no key cache in this broker
    code, out, _ = _run(capsys, "key", "limits", created["key_id"], "--clear",
                        "submit_per_second", "submit_burst", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["limits"] == {}
    code, _, err = _run(capsys, "key", "limits", created["key_id"], "--clear", "speed")
    assert code == 2 and "INVALID_REQUEST" in err and "submit_per_second" in err
    code, _, err = _run(capsys, "key", "limits", created["key_id"], "--upload-burst", "0")
    assert code == 2 and "must be 1 or more" in err
    code, _, err = _run(capsys, "key", "limits", "0123456789abcdef", "--upload-burst", "3")
    assert code == 2 and "NOT_FOUND" in err


def test_commands_without_redis_say_so(monkeypatch, capsys):
    monkeypatch.delenv("TALKINGFACE_REDIS_URL", raising=False)
    code, _, err = _run(capsys, "tenant", "list")
    assert code == 2 and "TALKINGFACE_REDIS_URL" in err


# --- TLS -------------------------------------------------------------------------------------


def _self_signed(directory) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return str(cert_path), str(key_path)


def test_tls_on_the_public_port(redis_server, tmp_path):
    cert, key_file = _self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca, _ = _self_signed(tmp_path / "other")
    with socket.socket() as probe:  # a free port for the plaintext health port
        probe.bind(("127.0.0.1", 0))
        health_port = probe.getsockname()[1]
    settings = Settings.from_env(_env(redis_server.url, tmp_path, TALKINGFACE_BROKER_AUTH="keys",
                                      TALKINGFACE_TLS_CERT_FILE=cert,
                                      TALKINGFACE_TLS_KEY_FILE=key_file,
                                      TALKINGFACE_GRPC_HEALTH_PORT=str(health_port)))  # fmt: skip
    client = redis.Redis.from_url(redis_server.url)
    tenant = f"tls-{uuid.uuid4().hex[:10]}"
    keys = KeyStore(client)
    keys.create_tenant(tenant)
    api_key, _ = keys.create_key(tenant, "render")
    job, _ = JobStore(client).create(tenant, "render", {"x": 1})
    server = broker_server(settings)
    server.start()
    try:
        address = f"127.0.0.1:{server.port}"
        with BrokerClient(address, timeout_s=10, api_key=api_key, ca_file=cert) as api:
            assert api.get_job(job.job_id).job_id == job.job_id
        with BrokerClient(address, timeout_s=5, api_key=api_key, ca_file="") as plain:
            assert _code(lambda: plain.get_job(job.job_id)) == "UNAVAILABLE"
        with BrokerClient(address, timeout_s=5, api_key=api_key, ca_file=other_ca) as wrong:
            assert _code(lambda: wrong.get_job(job.job_id)) == "UNAVAILABLE"
        # The plaintext health port (a kubelet's gRPC probe cannot speak TLS) serves health
        # and nothing else: the Broker API is not reachable there without TLS.
        assert server.health_port == health_port
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            assert check(health_pb2.HealthCheckRequest(), timeout=5).status == (
                health_pb2.HealthCheckResponse.NOT_SERVING)  # fmt: skip
            server.warm_up()
            assert check(health_pb2.HealthCheckRequest(), timeout=5).status == (
                health_pb2.HealthCheckResponse.SERVING)  # fmt: skip
            with pytest.raises(grpc.RpcError) as info:
                stub = broker_pb2_grpc.BrokerStub(channel)
                stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=5,
                            metadata=(("authorization", f"Bearer {api_key}"),))  # fmt: skip
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=1.0)
        keys.delete_tenant(tenant)
        client.close()


def test_tls_settings_go_together(tmp_path):
    with pytest.raises(ConfigError, match="set both or neither"):
        Settings.from_env({"TALKINGFACE_TLS_CERT_FILE": str(tmp_path / "cert.pem")})
    with pytest.raises(ConfigError, match="TALKINGFACE_BROKER_AUTH"):
        Settings.from_env({"TALKINGFACE_BROKER_AUTH": "password"})
    with pytest.raises(TalkingFaceError, match="CA file"):
        BrokerClient("127.0.0.1:1", ca_file=tmp_path / "missing.pem")
