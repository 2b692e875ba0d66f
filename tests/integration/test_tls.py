"""TLS on both ports, mutual TLS for workers, and Redis over TLS, with certificates made at
test time and real TLS handshakes."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import grpc
import pytest

import longline
from longline._channel import bearer, open_channel
from longline.compute_plane import Worker, WorkerSettings, load_workflows
from longline.control_plane import ControlPlane, ControlPlaneSettings
from longline.v1 import worker_pb2, worker_pb2_grpc
from tests.certs import CertificateAuthority, TlsProxy
from tests.conftest import FLOWS
from tests.integration.test_auth import secret, tokens_toml


async def _hello() -> AsyncIterator[worker_pb2.ConnectRequest]:
    yield worker_pb2.ConnectRequest(
        hello=worker_pb2.WorkerHello(
            worker_id="probe", slots=1, workflows=[worker_pb2.WorkflowInfo(name="echo")]
        )
    )
    await asyncio.sleep(30)


async def _connect_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """How WorkerService.Connect answers on this channel (OK once welcomed)."""
    call = worker_pb2_grpc.WorkerServiceStub(channel).Connect(
        _hello(), metadata=bearer(secret("worker")), timeout=10
    )
    try:
        first = await anext(aiter(call))
        assert first.HasField("welcome")
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        call.cancel()


async def test_tls_everywhere_and_mutual_tls_for_workers(redis_url: str, tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    server = ca.issue("control-plane", server=True)
    worker_pem = ca.issue("worker-1", server=False)
    stranger_ca = CertificateAuthority(tmp_path, "stranger CA")
    stranger = stranger_ca.issue("stranger", server=False)
    cp = ControlPlane(
        ControlPlaneSettings(
            redis_url=redis_url,
            listen="127.0.0.1:0",
            worker_listen="127.0.0.1:0",
            tls_cert=server.cert,
            tls_key=server.key,
            tls_client_ca=ca.pem.cert,
            tokens=tokens_toml(["alice", "worker"]),
            http_listen="127.0.0.1:0",
        )
    )
    async with cp:
        clients, workers = f"127.0.0.1:{cp.port}", f"127.0.0.1:{cp.worker_port}"
        assert cp.worker_port != cp.port
        worker = Worker(
            WorkerSettings(
                redis_url=redis_url,
                control_plane=workers,
                token=secret("worker"),
                tls_ca=ca.pem.cert,
                tls_cert=worker_pem.cert,
                tls_key=worker_pem.key,
            ),
            load_workflows(str(FLOWS)),
        )
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.connected.wait(), 10)
        async with longline.Client(clients, token=secret("alice"), tls_ca=ca.pem.cert) as client:
            assert await client.run("echo", "over TLS") == "over TLS"

        # The HTTP face speaks TLS with the same certificate; plain HTTP gets nothing.
        https = f"https://127.0.0.1:{cp.http_port}/v1/workflows"
        trusted = ssl.create_default_context(cafile=ca.pem.cert)
        async with aiohttp.ClientSession() as http:
            async with http.get(
                https, ssl=trusted, headers={"Authorization": f"Bearer {secret('alice')}"}
            ) as r:
                assert r.status == 200
                assert "echo" in [w["name"] for w in (await r.json())["workflows"]]
            with pytest.raises(aiohttp.ClientError):
                async with http.get(https.replace("https", "http"), ssl=trusted) as r:
                    await r.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(
                    https, headers={"Authorization": f"Bearer {secret('alice')}"}
                ) as r:  # untrusted CA
                    await r.read()

        # A client that does not speak TLS, or trusts another CA, gets no connection.
        for plain in (
            longline.Client(clients, token=secret("alice"), tls_ca=""),
            longline.Client(clients, token=secret("alice"), tls_ca=stranger_ca.pem.cert),
        ):
            async with plain:
                with pytest.raises(longline.Unavailable):
                    await plain.list_runs()

        # The worker port takes only workers with a certificate from the client CA.
        def worker_channel(cert: str = "", key: str = "") -> grpc.aio.Channel:
            return open_channel(workers, tls_ca=ca.pem.cert, tls_cert=cert, tls_key=key)  # type: ignore[no-any-return]

        async with worker_channel() as channel:
            assert await _connect_code(channel) == grpc.StatusCode.UNAVAILABLE
        async with worker_channel(stranger.cert, stranger.key) as channel:
            assert await _connect_code(channel) == grpc.StatusCode.UNAVAILABLE
        async with worker_channel(worker_pem.cert, worker_pem.key) as channel:
            assert await _connect_code(channel) == grpc.StatusCode.OK
        # ... and workers are not served on the clients' port at all.
        async with open_channel(clients, tls_ca=ca.pem.cert) as channel:
            assert await _connect_code(channel) == grpc.StatusCode.UNIMPLEMENTED
        worker.request_stop()
        await task


@pytest.mark.single_redis  # a TLS proxy in front of one server
async def test_redis_over_tls(redis_url: str, tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    proxy = await TlsProxy(ca.issue("redis", server=True), urlsplit(redis_url).port or 0).start()
    rediss = f"rediss://127.0.0.1:{proxy.port}/0?ssl_ca_certs={ca.pem.cert}"
    try:
        cp = ControlPlane(
            ControlPlaneSettings(redis_url=rediss, listen="127.0.0.1:0", insecure_no_auth=True)
        )
        async with cp:
            target = f"127.0.0.1:{cp.port}"
            worker = Worker(
                WorkerSettings(redis_url=rediss, control_plane=target, insecure_no_auth=True),
                load_workflows(str(FLOWS)),
            )
            task = asyncio.create_task(worker.run())
            await asyncio.wait_for(worker.connected.wait(), 10)
            async with longline.Client(target) as client:
                assert await client.run("five_steps", {"delay": 0}) == {"steps": 5}
            worker.request_stop()
            await task
        assert proxy.connections >= 3  # both planes reached Redis only through TLS
        # The TLS port does not answer plain Redis.
        import redis.asyncio as aioredis
        from redis.exceptions import ConnectionError as RedisConnectionError

        plain = aioredis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=5)
        with pytest.raises(RedisConnectionError):
            await plain.ping()
        await plain.aclose()
    finally:
        await proxy.aclose()
