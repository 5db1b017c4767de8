"""The SuperLink's front door: only operators with a client certificate reach its Control API.

Flower 1.42 serves the Fleet API (SuperNodes), the Control API (`flwr`) and the Runtime API (its own ServerApp) on
one HTTPS port, and the open-source build authenticates no `flwr` user (account authentication needs Flower's
enterprise OIDC plugin). So the SuperLink listens on loopback only and this proxy takes the public port:

- `/v1/fleet/...` is forwarded for anyone who completes TLS: SuperNodes authenticate with their registered keys,
  which the SuperLink checks itself;
- `/v1/control/...` is forwarded only when the client presented a certificate signed by the operator CA;
- everything else (the Runtime API) is refused.

The `flwr` CLI cannot present a client certificate, so an operator runs `operator_tunnel` on their own machine: a
loopback listener that carries each connection to this proxy over mutual TLS.

Each connection carries one request: the proxy asks the SuperLink to close after answering, so no later request on
the same connection escapes the check. Refusals are logged with the peer's address and the path, never a body.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("fracfl.control_proxy")

FLEET, CONTROL = b"/v1/fleet/", b"/v1/control/"
MAX_DISCARD = 256 * 1024 * 1024  # bytes of a refused request's body read before answering (a FAB is smaller)
HEAD_TIMEOUT = 30.0  # seconds a client may take to send its request head or body
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"}


class Refused(Exception):
    """A request the proxy answers itself, with `status` and a short reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def server_context(certfile: Path, keyfile: Path, operator_ca: Path) -> ssl.SSLContext:
    """TLS for the public port: the SuperLink's certificate; a client certificate is optional but, if sent, must
    chain to the operator CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)
    ctx.load_verify_locations(cafile=str(operator_ca))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(ca: Path, certfile: Path | None = None, keyfile: Path | None = None) -> ssl.SSLContext:
    """TLS towards the SuperLink (from the proxy) or the proxy (from a tunnel, with the operator's certificate)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


def _operator(writer: asyncio.StreamWriter) -> str | None:
    """The common name of a verified operator certificate, or None when the client sent none."""
    cert = writer.get_extra_info("peercert")
    if not cert:
        return None
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names[0] if names else "unnamed operator"


def _printable(raw: bytes, limit: int = 120) -> str:
    return raw[:limit].decode("ascii", "replace").encode("ascii", "backslashreplace").decode()


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
    except asyncio.LimitOverrunError as e:  # asyncio's default stream limit, 64 KiB
        raise Refused("431 Request Header Fields Too Large", "request head too large") from e


def _parse(head: bytes) -> tuple[bytes, bytes, int]:
    """Check the request head; return (head to forward, path, body length). The forwarded head asks the SuperLink to
    close the connection after its answer."""
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise Refused("400 Bad Request", "not an HTTP/1.x request")
    kept, length = [lines[0]], None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        key = name.strip().lower()
        if not sep or not key:
            raise Refused("400 Bad Request", "malformed header line")
        if key == b"transfer-encoding":
            raise Refused("411 Length Required", "request bodies must have a Content-Length")
        if key == b"content-length":
            if length is not None or not value.strip().isdigit():
                raise Refused("400 Bad Request", "bad Content-Length")
            length = int(value.strip())
        if key not in HOP_BY_HOP:
            kept.append(line)
    kept.append(b"Connection: close")
    return b"\r\n".join(kept) + b"\r\n\r\n", parts[1], length or 0


def _authorize(path: bytes, operator: str | None) -> None:
    """Refuse, fail closed, any path the SuperLink might read as another one than its prefix says: dot segments
    (`/v1/fleet/../control/...`), percent-encoding, backslashes and empty segments. Flower's own paths use none."""
    segments = path.split(b"?", 1)[0].split(b"/")
    if segments[0] or b"%" in path or b"\\" in path or any(s in (b"", b".", b"..") for s in segments[1:]):
        raise Refused("400 Bad Request", "the path must be plain: no dot segments, percent-encoding or empty segments")
    if path.startswith(CONTROL):
        if operator is None:
            raise Refused(
                "403 Forbidden",
                "the Control API needs an operator certificate: use `fracfl deploy operator-tunnel` "
                "(docs/deployment.md)",
            )
    elif not path.startswith(FLEET):
        raise Refused("404 Not Found", "only the Fleet and Control APIs are served here")


async def _discard(reader: asyncio.StreamReader, length: int) -> None:
    """Read a refused request's body before answering: closing a socket with unread data resets the connection, and
    the client would see a network error instead of the refusal."""
    while length > 0:
        data = await asyncio.wait_for(reader.read(min(65536, length)), HEAD_TIMEOUT)
        if not data:
            return
        length -= len(data)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None = None) -> None:
    """Copy until EOF, or exactly `limit` bytes (a request body, each read bounded by HEAD_TIMEOUT)."""
    left = limit
    while left is None or left > 0:
        size = 65536 if left is None else min(65536, left)
        data = await (reader.read(size) if left is None else asyncio.wait_for(reader.read(size), HEAD_TIMEOUT))
        if not data:
            if left is not None:
                raise ConnectionError("the client closed before sending its whole request body")
            break
        writer.write(data)
        await writer.drain()
        if left is not None:
            left -= len(data)
    if limit is None and writer.can_write_eof():
        writer.write_eof()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (OSError, ssl.SSLError):
        pass


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _guarded(handle: Handler, what: str) -> Handler:
    """A bad client only ends its own connection, with one log line."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            await handle(reader, writer)
        except ssl.SSLError as e:
            log.warning("%s: refused %s: TLS: %s", what, peer, e.reason or type(e).__name__)
        except (TimeoutError, OSError, EOFError, asyncio.IncompleteReadError) as e:
            log.info("%s: connection from %s ended: %s", what, peer, type(e).__name__)
        finally:
            await _close(writer)

    return run


def make_proxy_handler(upstream: tuple[str, int], upstream_tls: ssl.SSLContext) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        operator, head = _operator(writer), b""
        try:
            head = await _read_head(reader)
            forward, path, length = _parse(head)
            try:
                _authorize(path, operator)
            except Refused:
                if length <= MAX_DISCARD:
                    await _discard(reader, length)
                raise
        except Refused as r:
            log.warning(
                "refused %s %s: %s (%s)",
                writer.get_extra_info("peername"),
                _printable(head.split(b"\r\n", 1)[0]),
                r.status,
                "operator " + operator if operator else "no operator certificate",
            )
            body = (r.reason + "\n").encode()
            writer.write(
                f"HTTP/1.1 {r.status}\r\ncontent-type: text/plain\r\ncontent-length: {len(body)}\r\n"
                f"connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            return
        if path.startswith(CONTROL):
            log.info("operator %s: %s", operator, _printable(path))
        up_reader, up_writer = await asyncio.open_connection(*upstream, ssl=upstream_tls)
        try:
            up_writer.write(forward)
            await _pipe(reader, up_writer, length)
            await _pipe(up_reader, writer)
        finally:
            await _close(up_writer)

    return handle


def make_tunnel_handler(proxy: tuple[str, int], proxy_tls: ssl.SSLContext) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*proxy, ssl=proxy_tls)
        request = asyncio.ensure_future(_pipe(reader, up_writer))
        try:
            await _pipe(up_reader, writer)  # the proxy closes after its answer: so does the tunnel
        finally:
            request.cancel()
            await _close(up_writer)

    return handle


async def serve(listen: tuple[str, int], handle: Handler, tls: ssl.SSLContext | None, what: str) -> None:
    # TLS in start_server, not StreamWriter.start_tls: a ClientHello that arrives before start_tls is called is
    # swallowed by the plain stream and the handshake hangs (seen here). A failed handshake (a certificate from
    # another CA) is therefore refused by asyncio without a log line of ours.
    server = await asyncio.start_server(
        _guarded(handle, what), *listen, ssl=tls, ssl_handshake_timeout=HEAD_TIMEOUT if tls else None
    )
    log.warning("%s listening on %s:%s", what, *listen)
    async with server:
        await server.serve_forever()


def split_address(address: str, flag: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) into its parts; ConfigError names the flag."""
    from common.errors import ConfigError

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag} {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9093")
    return host.strip("[]"), int(port)
