"""Where named targets are relayed: `TARGET_PEERS` entries, and the base URLs they stand for now.

An entry is either one peer's base URL (`http://host:port[/prefix]`, `https://...`) or a DNS name
whose every A/AAAA record is a peer (`dns+http://name:port[/prefix]`): a Kubernetes headless
Service, whose name resolves to the ready pods' own addresses. The name is resolved at each relay
(pods come and go; an answer is reused for `DNS_CACHE_S`), on a thread of the relay's own, one lookup at
a time, and this process's own addresses are skipped. The DNS form trusts the cluster's DNS: whoever
answers for the name receives the relayed calls, the API key with them. Only `dns+http`: a certificate
names a host, not the addresses behind it, so HTTPS to a resolved address could not be verified.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

DNS_PREFIX = "dns+"
MAX_PEERS = 64  # addresses one relay calls at most, whatever a DNS answer holds

DNS_CACHE_S = 5.0  # a DNS answer is reused this long (a burst of changes makes one lookup)

# host, port → the addresses it resolves to now, blocking (run on the relay's own thread; tests inject their own).
Lookup = Callable[[str, int], list[str]]


@dataclass(frozen=True)
class PeerSpec:
    """One `TARGET_PEERS` entry, parsed."""

    scheme: str
    host: str
    port: int
    path: str  # without a trailing slash
    dns: bool  # True: every address of `host` is a peer

    def base_url(self, address: str | None = None) -> str:
        """The base URL of the peer (at `address`, one of a DNS entry's records)."""
        host = self.host if address is None else address
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def parse_peer(text: str) -> PeerSpec:
    """Parse one entry.

    Raises:
        ValueError: not an http(s) or dns+http URL with a host, or with credentials, a query or a fragment
            (the API key travels in a header; a query would be dropped).
    """
    dns = text.startswith(DNS_PREFIX)
    try:
        parts = urlsplit(text[len(DNS_PREFIX) :] if dns else text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"target peer {text!r}: {exc}") from None
    allowed = ("http",) if dns else ("http", "https")
    if parts.scheme not in allowed:
        raise ValueError(f"target peer {text!r}: expected {' or '.join(f'{s}://' for s in allowed)}")
    if not parts.hostname:
        raise ValueError(f"target peer {text!r}: no host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"target peer {text!r}: no credentials, query or fragment (the API key is sent as a header)")
    try:
        parts.hostname.encode("idna")  # what resolving it will do: a label over 63 characters, an empty one, ...
    except UnicodeError as exc:
        raise ValueError(f"target peer {text!r}: not a host name ({exc})") from None
    default_port = 443 if parts.scheme == "https" else 80
    return PeerSpec(parts.scheme, parts.hostname, port or default_port, parts.path.rstrip("/"), dns)


def system_lookup(host: str, port: int) -> list[str]:
    """Every address `host` resolves to now (A and AAAA), in the resolver's order, each once (blocking)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class DnsResolver:
    """The relay's DNS lookups, kept off asyncio's default thread pool (which `/predict` decodes and encodes on).

    Lookups run on a thread of their own (`close` ends it), one at a time: while a lookup is running (a
    resolver that hangs past `timeout_s` keeps its thread), another is not started but fails at once. A
    lookup that succeeded is reused for `cache_s` seconds; a failure is not kept (the next change asks again).

    Args:
        timeout_s: the bound on one lookup (the wait; a blocked thread cannot be stopped).
        lookup: host, port → addresses, blocking (default: the system's, `system_lookup`; tests pass theirs).
        cache_s: how long a lookup's answer is reused.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        timeout_s: float,
        lookup: Lookup = system_lookup,
        *,
        cache_s: float = DNS_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._timeout_s = timeout_s
        self._lookup = lookup
        self._cache_s = cache_s
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zipgate-peer-dns")
        self._lock = asyncio.Lock()
        self._running: asyncio.Future[list[str]] | None = None
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._own: frozenset[str] | None = None

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of `host` (cached for `cache_s`).

        Raises:
            OSError: it did not resolve, or an earlier lookup is still running.
            TimeoutError: no answer within `timeout_s`.
        """
        async with self._lock:  # one lookup at a time; the others wait for it (and may find it cached)
            cached = self._cache.get((host, port))
            if cached is not None and self._clock() < cached[0]:
                return cached[1]
            if self._running is not None and not self._running.done():
                raise OSError(f"an earlier lookup is still running (over {self._timeout_s} s)")
            running = asyncio.get_running_loop().run_in_executor(self._executor, self._lookup, host, port)
            running.add_done_callback(_retrieve)
            self._running = running
            async with asyncio.timeout(self._timeout_s):
                addresses = await asyncio.shield(running)  # a timeout stops the wait; `running` still tracks the thread
            self._cache[(host, port)] = (self._clock() + self._cache_s, addresses)
            return addresses

    async def own_addresses(self) -> frozenset[str]:
        """This host's addresses as its name resolves (in a pod: the pod's IP), under the same bound.

        Kept once found; empty when the name does not resolve now (asked again next time)."""
        if self._own is None:
            try:
                self._own = frozenset(await self.resolve(socket.gethostname(), 0))
            except (OSError, TimeoutError, UnicodeError):
                return frozenset()
        return self._own

    def close(self) -> None:
        """End the lookup thread (a lookup blocked in it is left to finish on its own)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _retrieve(future: asyncio.Future[list[str]]) -> None:
    """Read a lookup's outcome, so one that failed after its wait timed out is not logged as never retrieved."""
    if not future.cancelled():
        future.exception()


def _usable(address: str, own: frozenset[str]) -> bool:
    """An address to call: a plain IP (no IPv6 zone, which a URL cannot carry) that is not this process's."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id) and address not in own


async def urls_of(spec: PeerSpec, resolver: DnsResolver, own: frozenset[str]) -> list[str]:
    """The base URLs `spec` stands for now: its own, or one per usable address of its DNS name (at most
    `MAX_PEERS`, each once, this process's skipped).

    Raises:
        OSError, TimeoutError, UnicodeError: the DNS name did not resolve (in time).
    """
    if not spec.dns:
        return [spec.base_url()]
    addresses = await resolver.resolve(spec.host, spec.port)
    return list(dict.fromkeys(spec.base_url(a) for a in addresses if _usable(a, own)))[:MAX_PEERS]
