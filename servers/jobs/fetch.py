"""Outbound HTTP that cannot be turned against the server's network (SSRF) and never buffers whole bodies."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

__all__ = ["AddressPolicy", "FetchError", "GuardedResolver", "address_refused", "check_url", "download", "new_session",
           "preflight", "request_guarded"]

MAX_REDIRECTS = 2
_CHUNK_BYTES = 1 << 16
# hosts made only of numbers (decimal, octal 0177, hex 0x7f) that are not a dotted quad: 127.1, 2130706433, 0
_NUMERIC_HOST = re.compile(r"(?i)(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\.?")


class FetchError(Exception):
    """A remote input or webhook target could not be reached; ``reason`` is a short machine tag."""

    def __init__(self, message: str, reason: str = "connection_failed") -> None:
        super().__init__(message)
        self.reason = reason


def address_refused(address: str) -> bool:
    """True for loopback, private, link-local, multicast, unspecified and reserved addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return bool(ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
                or ip.is_unspecified or ip.is_reserved or not ip.is_global)


class RefusedAddress(OSError):
    """Raised by the resolver when a name resolves only to refused addresses."""


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses outbound requests may reach.

    Parameters
    ----------
    allow_private
        Allow every address (``DIARFLOW_ALLOW_PRIVATE_URLS=1``: tests, LANs).
    exceptions
        Individual addresses allowed even though non-public (tests use it for a local redirector).
    """

    allow_private: bool = False
    exceptions: frozenset[str] = frozenset()

    def refuses(self, address: str) -> bool:
        return not self.allow_private and address not in self.exceptions and address_refused(address)


class GuardedResolver(AbstractResolver):
    """DNS resolution that drops refused addresses, so a connection can only go to public ones.

    aiohttp connects to exactly the addresses its resolver returns, so checking here (and not
    before the request) also defeats DNS rebinding between a check and the connection.
    """

    def __init__(self, policy: AddressPolicy) -> None:
        self._inner = DefaultResolver()
        self._policy = policy

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if not self._policy.refuses(r["host"])]
        if not allowed:
            raise RefusedAddress(f"{host} resolves only to non-public addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def check_url(url: str | URL, policy: AddressPolicy) -> URL:
    """Validate scheme and literal host of an outbound URL (names are checked by the resolver)."""
    parsed = URL(str(url))
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise FetchError(f"only http(s) URLs can be fetched, got scheme {parsed.scheme or 'none'!r}", "refused")
    host = parsed.host.strip("[]")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        literal = True
    except ValueError:
        literal = False
    if not literal and _NUMERIC_HOST.fullmatch(host):
        raise FetchError(f"the URL host {host!r} is a number in a shorthand form; write an IP address as a.b.c.d "
                         "or use a host name", "refused")
    if literal and policy.refuses(host):
        raise FetchError("the URL points to a non-public address", "refused")
    return parsed


async def preflight(url: str, policy: AddressPolicy) -> None:
    """Fail fast on a URL whose host can only reach refused addresses, before a worker is given it.

    The worker's own download checks again, on its machine and on every connection (DNS rebinding);
    this only saves handing a worker a URL it must refuse. A name that does not resolve here passes:
    the worker reports what it finds.

    Raises
    ------
    FetchError
        Not http(s), a numeric shorthand host, or only refused addresses (``reason="refused"``).
    """
    parsed = check_url(url, policy)
    resolver = GuardedResolver(policy)
    try:
        await resolver.resolve(str(parsed.host).strip("[]"), parsed.port or 0)
    except RefusedAddress:
        raise FetchError("the URL points to a non-public address", "refused") from None
    except OSError:
        pass
    finally:
        await resolver.close()


def new_session(policy: AddressPolicy, total_timeout_s: float | None = None, **kwargs: Any) -> aiohttp.ClientSession:
    """A client session whose connections can reach only allowed addresses."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy), use_dns_cache=False,
                                     limit=64)
    timeout = aiohttp.ClientTimeout(total=total_timeout_s, sock_connect=10, sock_read=60)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False, **kwargs)


async def request_guarded(session: aiohttp.ClientSession, method: str, url: str, policy: AddressPolicy,
                          **kwargs: Any) -> aiohttp.ClientResponse:
    """One request following at most ``MAX_REDIRECTS`` redirects, each target checked again."""
    target = check_url(url, policy)
    for hop in range(MAX_REDIRECTS + 1):
        try:
            response = await session.request(method, target, allow_redirects=False, **kwargs)
        except asyncio.TimeoutError:
            raise FetchError("timed out", "http_timeout") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                raise FetchError("the URL points to a non-public address", "refused") from None
            raise FetchError(f"connection failed ({exc.os_error.strerror or 'refused'})"
                             if isinstance(exc.os_error, OSError) else "connection failed",
                             "connection_failed") from None
        except aiohttp.ClientError as exc:
            raise FetchError(f"connection failed ({type(exc).__name__})", "connection_failed") from None
        if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
            location = response.headers["Location"]
            response.release()
            if hop == MAX_REDIRECTS:
                raise FetchError(f"more than {MAX_REDIRECTS} redirects", "too_many_redirects")
            target = check_url(target.join(URL(location)), policy)
            if response.status == 303:
                method = "GET"
            continue
        return response
    raise AssertionError("unreachable")


async def download(session: aiohttp.ClientSession, url: str, dest: Path, max_bytes: int,
                   policy: AddressPolicy) -> int:
    """Stream ``url`` to ``dest`` (at most ``max_bytes``); returns the size.

    Raises
    ------
    FetchError
        Refused address, connection failure, non-2xx status, or a body larger than ``max_bytes``.
    """
    response = await request_guarded(session, "GET", url, policy)
    async with response:
        if not 200 <= response.status < 300:
            raise FetchError(f"HTTP {response.status}", "http_error")
        declared = response.content_length
        if declared is not None and declared > max_bytes:
            raise FetchError(f"the file is larger than {max_bytes} bytes", "too_large")
        size = 0
        try:
            with open(dest, "wb") as out:
                async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchError(f"the file is larger than {max_bytes} bytes", "too_large")
                    await asyncio.to_thread(out.write, chunk) if len(chunk) > (1 << 20) else out.write(chunk)
        except asyncio.TimeoutError:
            raise FetchError("timed out while downloading", "http_timeout") from None
        except aiohttp.ClientError as exc:
            raise FetchError(f"download interrupted ({type(exc).__name__})", "connection_failed") from None
    return size
