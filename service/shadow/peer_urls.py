"""Where named targets are relayed: `TARGET_PEERS` entries, and the base URLs they stand for now.

An entry is either one peer's base URL (`http://host:port[/prefix]`, `https://...`) or a DNS name
whose every A/AAAA record is a peer (`dns+http://name:port[/prefix]`): a Kubernetes headless
Service, whose name resolves to the ready pods' own addresses. The name is resolved at each relay
(pods come and go), and this process's own addresses are skipped. Only `dns+http`: a certificate
names a host, not the addresses behind it, so HTTPS to a resolved address could not be verified.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

DNS_PREFIX = "dns+"
MAX_PEERS = 64  # addresses one relay calls at most, whatever a DNS answer holds

# host, port → the addresses it resolves to now (tests inject their own).
Resolver = Callable[[str, int], Awaitable[list[str]]]


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
    default_port = 443 if parts.scheme == "https" else 80
    return PeerSpec(parts.scheme, parts.hostname, port or default_port, parts.path.rstrip("/"), dns)


async def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address `host` resolves to now (A and AAAA), in the resolver's order, each once."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def own_addresses() -> frozenset[str]:
    """This host's addresses as its name resolves (in a pod: the pod's IP); empty when it does not resolve."""
    try:
        return frozenset(await resolve_addresses(socket.gethostname(), 0))
    except OSError:
        return frozenset()


def _usable(address: str, own: frozenset[str]) -> bool:
    """An address to call: a plain IP (no IPv6 zone, which a URL cannot carry) that is not this process's."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return not (isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id) and address not in own


async def peer_urls(
    specs: Iterable[PeerSpec], resolver: Resolver, own: frozenset[str], timeout_s: float
) -> tuple[list[str], list[PeerSpec]]:
    """The peers' base URLs now (at most `MAX_PEERS`, each once), and the DNS entries that did not resolve
    within `timeout_s` (or at all)."""
    urls: list[str] = []
    unresolved: list[PeerSpec] = []
    for spec in specs:
        if not spec.dns:
            urls.append(spec.base_url())
            continue
        try:
            async with asyncio.timeout(timeout_s):
                addresses = await resolver(spec.host, spec.port)
        except (OSError, TimeoutError):
            unresolved.append(spec)
            continue
        urls.extend(spec.base_url(address) for address in addresses if _usable(address, own))
    return list(dict.fromkeys(urls))[:MAX_PEERS], unresolved
