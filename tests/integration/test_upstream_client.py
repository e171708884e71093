"""The provider calls' HTTP/1.1 client against servers that answer byte for byte what each
test scripts: keep-alive and its limits, every body framing, compression, backpressure,
timeouts, broken servers, the pool's bound, TLS."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from interlock.errors import UpstreamConnectionFailed, UpstreamProtocolError, UpstreamTimeout
from interlock.providers.classify import classify_transport
from interlock.providers.upstream_client import (
    BodyIncomplete,
    ConnectTimeout,
    InvalidRequestHeader,
    InvalidResponse,
    ReadTimeout,
    ServerDisconnected,
    UpstreamClient,
    UpstreamResponse,
    split_url,
    target_on,
)

pytestmark = pytest.mark.anyio

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Handler = Callable[[Reader, Writer], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Server:
    """A loopback server that hands each connection to ``handler`` and counts them."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.origin = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request (head and Content-Length body), recorded; b"" if the client left."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


@asynccontextmanager
async def serving(
    handler: Callable[[Server, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Server]:
    server = Server(lambda r, w: handler(server, r, w))
    listening = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=ssl_context)
    port = listening.sockets[0].getsockname()[1]
    server.origin = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    try:
        yield server
    finally:
        listening.close()


def replying(*responses: bytes) -> Callable[..., Awaitable[None]]:
    """A handler answering the requests of one connection with ``responses`` in turn."""

    async def handler(server: Server, reader: Reader, writer: Writer) -> None:
        for response in responses:
            if not await server.read_request(reader):
                return
            writer.write(response)
            await writer.drain()
        await reader.read()  # keep the connection open until the client closes it

    return handler


def answering_then_closing(response: bytes) -> Callable[..., Awaitable[None]]:
    """A handler that answers one request with ``response`` (maybe b"") and hangs up."""

    async def handler(server: Server, reader: Reader, writer: Writer) -> None:
        if await server.read_request(reader) and response:
            writer.write(response)
            await writer.drain()

    return handler


def ok(body: bytes, *headers: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def post(client: UpstreamClient, **timeouts: float | None) -> UpstreamResponse:
    return await client.post(
        "/v1/chat",
        b'{"q": 1}',
        {"Content-Type": "application/json"},
        connect_timeout=timeouts.get("connect", 5.0),
        read_timeout=timeouts.get("read", 5.0),
    )


async def body_of(response: UpstreamResponse) -> bytes:
    parts = []
    while chunk := await response.read_chunk():
        parts.append(chunk)
    response.release()
    return b"".join(parts)


# ---- requests and keep-alive ----------------------------------------------------------------


async def test_the_request_is_one_well_formed_post() -> None:
    async with serving(replying(ok(b"{}"))) as server, UpstreamClient(server.origin) as client:
        response = await post(client)
        assert (response.status, await body_of(response)) == (200, b"{}")
    host = server.origin.removeprefix("http://")
    assert server.requests == [
        b"POST /v1/chat HTTP/1.1\r\nHost: " + host.encode() + b"\r\nUser-Agent: interlock\r\n"
        b'Content-Type: application/json\r\nContent-Length: 8\r\n\r\n{"q": 1}'
    ]


async def test_a_connection_is_reused_once_its_reply_was_read() -> None:
    async with (
        serving(replying(ok(b"one"), ok(b"two"), ok(b"three"))) as server,
        UpstreamClient(server.origin) as client,
    ):
        bodies = [await body_of(await post(client)) for _ in range(3)]
    assert bodies == [b"one", b"two", b"three"]
    assert server.connections == 1


async def test_a_reply_left_unread_closes_its_connection() -> None:
    async with (
        serving(replying(ok(b"x" * 4_000_000))) as server,  # more than one read holds
        UpstreamClient(server.origin) as client,
    ):
        response = await post(client)
        await response.read_chunk()
        response.release()  # the rest was not read: the connection cannot carry another
        server.handler = lambda r, w: replying(ok(b"fresh"))(server, r, w)
        assert await body_of(await post(client)) == b"fresh"
    assert server.connections == 2


async def test_connection_close_from_the_server_is_honoured() -> None:
    async with (
        serving(replying(ok(b"bye", "Connection: close"), ok(b"never"))) as server,
        UpstreamClient(server.origin) as client,
    ):
        assert await body_of(await post(client)) == b"bye"
        assert await body_of(await post(client)) == b"bye"
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    async with (
        serving(answering_then_closing(ok(b"done"))) as server,
        UpstreamClient(server.origin) as client,
    ):
        assert await body_of(await post(client)) == b"done"
        await asyncio.sleep(0.05)  # the server's close reaches the idle connection
        assert await body_of(await post(client)) == b"done"
    assert server.connections == 2


async def test_connections_idle_past_the_keepalive_timeout_are_not_reused() -> None:
    async with (
        serving(replying(ok(b"a"), ok(b"b"))) as server,
        UpstreamClient(server.origin, keepalive_timeout=0.05) as client,
    ):
        await body_of(await post(client))
        await asyncio.sleep(0.1)
        await body_of(await post(client))
    assert server.connections == 2


# ---- body framing and encodings -----------------------------------------------------------


async def test_a_chunked_body_arrives_whole() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    async with (
        serving(replying(chunked, ok(b"again"))) as server,
        UpstreamClient(server.origin) as client,
    ):
        assert await body_of(await post(client)) == b"hello world"
        assert await body_of(await post(client)) == b"again"
    assert server.connections == 1


async def test_a_body_delimited_by_the_connection_closing_is_complete() -> None:
    until_close = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
    async with (
        serving(answering_then_closing(until_close)) as server,
        UpstreamClient(server.origin) as client,
    ):
        response = await post(client)
        assert await body_of(response) == b"all of it"


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
async def test_compressed_replies_are_decompressed(
    encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    text = b'{"answer": "' + b"la " * 5000 + b'"}'
    reply = ok(compress(text), f"Content-Encoding: {encoding}")
    async with serving(replying(reply)) as server, UpstreamClient(server.origin) as client:
        assert await body_of(await post(client)) == text


async def test_an_unknown_content_encoding_is_an_invalid_response() -> None:
    reply = ok(b"\x00\x01", "Content-Encoding: br")
    async with serving(replying(reply)) as server, UpstreamClient(server.origin) as client:
        with pytest.raises(InvalidResponse):
            await post(client)


async def test_a_corrupt_compressed_body_is_an_invalid_response() -> None:
    reply = ok(b"not gzip at all", "Content-Encoding: gzip")
    async with serving(replying(reply)) as server, UpstreamClient(server.origin) as client:
        response = await post(client)
        with pytest.raises(InvalidResponse):
            await response.read_chunk()
        response.close()


async def test_an_interim_response_is_skipped_for_the_final_one() -> None:
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    async with (
        serving(replying(early_hints + ok(b"final", "X-Final: yes"), ok(b"next"))) as server,
        UpstreamClient(server.origin) as client,
    ):
        response = await post(client)
        assert (response.status, response.headers.get("link")) == (200, None)
        assert response.headers["x-final"] == "yes"
        assert await body_of(response) == b"final"
        assert await body_of(await post(client)) == b"next"
    assert server.connections == 1


async def test_headers_are_lower_cased_and_repeats_joined() -> None:
    reply = ok(b"", "X-Thing: a", "x-thing: b", "Content-Type: Application/JSON; charset=utf-8")
    async with serving(replying(reply)) as server, UpstreamClient(server.origin) as client:
        response = await post(client)
        assert response.headers["x-thing"] == "a, b"
        assert response.content_type == "application/json"
        assert response.content_length == 0
        response.release()


async def test_a_large_body_read_slowly_arrives_intact() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: reading pauses and resumes several times
    async with serving(replying(ok(body))) as server, UpstreamClient(server.origin) as client:
        response = await post(client)
        parts = []
        while chunk := await response.read_chunk():
            parts.append(chunk)
            await asyncio.sleep(0.001)
        response.release()
    assert b"".join(parts) == body


# ---- failures ------------------------------------------------------------------------------


async def test_a_server_closing_before_answering_is_a_disconnect() -> None:
    async with (
        serving(answering_then_closing(b"")) as server,
        UpstreamClient(server.origin) as client,
    ):
        with pytest.raises(ServerDisconnected) as raised:
            await post(client)
    assert type(classify_transport(raised.value)) is UpstreamConnectionFailed


async def test_a_body_cut_short_is_incomplete() -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"
    async with (
        serving(answering_then_closing(cut)) as server,
        UpstreamClient(server.origin) as client,
    ):
        response = await post(client)
        assert await response.read_chunk() == b"only part"
        with pytest.raises(BodyIncomplete) as raised:
            await response.read_chunk()
        response.close()
    assert type(classify_transport(raised.value)) is UpstreamProtocolError


async def test_garbage_instead_of_http_is_an_invalid_response() -> None:
    async with (
        serving(replying(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")) as server,
        UpstreamClient(server.origin) as client,
    ):
        with pytest.raises(InvalidResponse) as raised:
            await post(client)
    assert type(classify_transport(raised.value)) is UpstreamProtocolError


async def test_no_head_within_the_read_timeout() -> None:
    async def silent(server: Server, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await reader.read()

    async with serving(silent) as server, UpstreamClient(server.origin) as client:
        with pytest.raises(ReadTimeout) as raised:
            await post(client, read=0.1)
    assert type(classify_transport(raised.value)) is UpstreamTimeout


async def test_a_stall_inside_the_body_is_a_read_timeout() -> None:
    async def stall(server: Server, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstarted")
        await writer.drain()
        await reader.read()

    async with serving(stall) as server, UpstreamClient(server.origin) as client:
        response = await post(client, read=0.1)
        assert await response.read_chunk() == b"started"
        with pytest.raises(ReadTimeout):
            await response.read_chunk()
        response.close()


async def test_without_a_read_timeout_a_slow_reply_is_awaited() -> None:
    async def slow(server: Server, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await asyncio.sleep(0.2)
        writer.write(ok(b"late"))
        await writer.drain()
        await reader.read()

    async with serving(slow) as server, UpstreamClient(server.origin) as client:
        assert await body_of(await post(client, read=None)) == b"late"


async def test_a_refused_connection_is_an_os_error() -> None:
    async with serving(replying()) as server:
        origin = server.origin
    async with UpstreamClient(origin) as client:
        with pytest.raises(ConnectionRefusedError) as raised:
            await post(client)
    assert type(classify_transport(raised.value)) is UpstreamConnectionFailed


async def test_the_pool_bound_makes_callers_wait_within_the_connect_timeout() -> None:
    async with (
        serving(replying(ok(b"first"), ok(b"second"))) as server,
        UpstreamClient(server.origin, max_connections=1) as client,
    ):
        held = await post(client)
        with pytest.raises(ConnectTimeout) as raised:
            await post(client, connect=0.1)  # the only connection is busy
        waiting = asyncio.ensure_future(post(client, connect=5.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert await body_of(held) == b"first"  # releasing it hands it to the waiter
        assert await body_of(await waiting) == b"second"
    assert server.connections == 1
    assert type(classify_transport(raised.value)) is UpstreamTimeout


async def test_a_waiter_cancelled_as_its_turn_comes_passes_the_turn_on() -> None:
    async with (
        serving(replying(ok(b"first"), ok(b"second"))) as server,
        UpstreamClient(server.origin, max_connections=1) as client,
    ):
        held = await post(client)
        assert await held.read_chunk() == b"first"
        assert await held.read_chunk() == b""
        leaving = asyncio.ensure_future(post(client))
        staying = asyncio.ensure_future(post(client))
        await asyncio.sleep(0.01)  # both wait for the one connection
        held.release()  # wakes the first waiter...
        leaving.cancel()  # ...which leaves before it runs
        assert await body_of(await asyncio.wait_for(staying, 2)) == b"second"
        with pytest.raises(asyncio.CancelledError):
            await leaving
    assert server.connections == 1


async def test_a_cancelled_call_closes_its_connection_and_frees_its_slot() -> None:
    async def silent_then_ok(server: Server, reader: Reader, writer: Writer) -> None:
        if server.connections == 1:
            await server.read_request(reader)
            await reader.read()
        else:
            await replying(ok(b"next"))(server, reader, writer)

    async with (
        serving(silent_then_ok) as server,
        UpstreamClient(server.origin, max_connections=1) as client,
    ):
        call = asyncio.ensure_future(post(client))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await body_of(await post(client, connect=1.0)) == b"next"
    assert server.connections == 2


@pytest.mark.parametrize(
    ("value", "problem"), [("a\r\nInjected: yes", "line break"), ("sk-ключ", "Latin-1")]
)
async def test_a_header_that_cannot_be_sent_is_refused(value: str, problem: str) -> None:
    async with serving(replying(ok(b""))) as server, UpstreamClient(server.origin) as client:
        with pytest.raises(InvalidRequestHeader, match=problem) as raised:
            await client.post("/", b"", {"X-Key": value}, connect_timeout=1, read_timeout=1)
    assert server.requests == []
    error = classify_transport(raised.value)
    assert type(error) is UpstreamConnectionFailed
    assert value not in error.message


async def test_a_closed_client_refuses_new_calls() -> None:
    async with serving(replying(ok(b"a"))) as server:
        client = UpstreamClient(server.origin)
        await body_of(await post(client))
        await client.close()
        with pytest.raises(ServerDisconnected):
            await post(client)


# ---- TLS -----------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_with_a_trusted_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with (
        serving(replying(ok(b"secret"), ok(b"again")), server_side) as server,
        UpstreamClient(server.origin, ssl_context=trusting) as client,
    ):
        assert await body_of(await post(client)) == b"secret"
        assert await body_of(await post(client)) == b"again"
    assert server.connections == 1


async def test_https_with_an_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    async with (
        serving(replying(ok(b"secret")), server_side) as server,
        UpstreamClient(server.origin) as client,  # the system's trust store
    ):
        with pytest.raises(ssl.SSLCertVerificationError) as raised:
            await post(client)
    error = classify_transport(raised.value)
    assert type(error) is UpstreamConnectionFailed
    assert "certificate" in error.message


# ---- URLs ----------------------------------------------------------------------------------


def test_split_url() -> None:
    assert split_url("https://api.example.com/v1/chat") == ("https://api.example.com", "/v1/chat")
    assert split_url("http://user:pw@[::1]:8000/v1?x=1") == ("http://[::1]:8000", "/v1?x=1")
    assert split_url("http://host") == ("http://host", "/")
    with pytest.raises(ValueError):
        split_url("ftp://host/x")


async def test_a_url_on_another_origin_is_refused() -> None:
    async with UpstreamClient("http://127.0.0.1:1") as client:
        assert target_on(client, "http://127.0.0.1:1/v1/x") == "/v1/x"
        with pytest.raises(ValueError):
            target_on(client, "http://127.0.0.1:2/v1/x")
