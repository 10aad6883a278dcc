"""Relay of named targets to the other replicas (`TARGET_PEERS`), so that a name taken on one holds on all.

Behind a Service with N replicas, an operator's `PUT /targets/{label}` or an Alertmanager
notification reaches one pod, and each pod's alarm sees 1/N of the traffic. So each change this
gateway makes to its board is sent on to every peer as the same HTTP call an operator would make:

- a new name by the alarm, an operator or Alertmanager → `PUT /targets/{label}` (a name from the
  setting is on every replica already; one from a peer is not relayed again);
- an operator's `DELETE /targets/{label}` (whether or not this replica held the label: the others may)
  → `DELETE /targets/{label}`.

Each call carries the gateway's own API key (peers behind the same key accept it) and
`X-Zipgate-Relayed-By: <this process's id>`, which tells the peer not to relay it again (no loops,
no storms: one change makes at most one call per peer), and `X-Zipgate-Relayed-Source` (who named
it here). The peer names it with source `peer` and that source as its `rule`: a relayed PUT is a
PUT like any other, under the peer's cap for peers' names (409 `targets_full`; operators' and
Alertmanager's names have a cap of their own) and rules; a relayed DELETE needs
the key like any DELETE (a gateway without API_KEY refuses every DELETE, so it relays none).

Best effort, never in the way of the request that caused it. Each `TARGET_PEERS` entry has one
sender in the background that sends its changes one at a time, in the order they were made, so a
PUT and a DELETE of one label reach every peer in that order. Its queue keeps the latest change of
each label (a later change replaces one not sent yet) and at most `MAX_PENDING_CHANGES` labels (more
are dropped, counted). A DNS entry is resolved by its sender at each change (`service.shadow.peer_urls`:
on a thread of the relay's own, one lookup at a time, the answer reused a few seconds) and the change
goes to its addresses together. Calls run at most `max_inflight` at once over every peer, each bounded
by `timeout_s` as a whole, and only the status of an answer is read. Every call's outcome is counted
in `zipgate_target_relay_total{outcome}`, and failures are logged with the request id of the change.
Names are not re-sent: a replica that restarts later holds only `SUSPECTED_TARGETS`.

The label travels in the path, percent-encoded, dots too (`%2E`: `.` and `..` would otherwise be
dot segments the client removes); the peer's server decodes it back. Static peers are called over
the URL given: with `http://` (in a cluster) the API key travels in plain text, so keep those URLs
inside the cluster's network (k8s/components/target-peers limits it to the gateway pods).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from prometheus_client import CollectorRegistry, Counter

from service.shadow.peer_urls import DnsResolver, Lookup, PeerSpec, system_lookup, urls_of
from service.shadow.relay_headers import API_KEY_HEADER, RELAYED_BY_HEADER, RELAYED_SOURCE_HEADER
from service.shadow.targets import NamedTarget, TargetSource

logger = logging.getLogger(__name__)

# New names from these are relayed: the setting's are on every replica already, a peer's came relayed.
RELAYED_SOURCES = frozenset({TargetSource.ALARM, TargetSource.OPERATOR, TargetSource.ALERTMANAGER})
MAX_PENDING_CHANGES = 256  # labels queued for one peer at once; more are dropped (counted)
MAX_INSTANCE_CHARS = 64  # a received relayed-by id longer than this is cut before it is compared or logged


class RelayMethod(enum.StrEnum):
    """The change: a name (PUT) or an un-naming (DELETE)."""

    PUT = "PUT"
    DELETE = "DELETE"


class RelayOutcome(enum.StrEnum):
    """How one relay call (or, for `unresolved` and `dropped`, one change) ended."""

    OK = "ok"  # 2xx: the peer holds the name (or no longer does)
    NOT_NAMED = "not_named"  # 404 to a DELETE: the peer did not hold it
    TARGETS_FULL = "targets_full"  # 409 to a PUT: the peer holds its most names from peers
    REJECTED = "rejected"  # any other status (401 wrong key, 403 a peer without API_KEY, 5xx, ...)
    TIMEOUT = "timeout"  # no answer within timeout_s
    UNREACHABLE = "unreachable"  # refused, reset, not HTTP
    UNRESOLVED = "unresolved"  # a dns+http entry did not resolve (per entry and change)
    DROPPED = "dropped"  # MAX_PENDING_CHANGES labels were queued for the peer, or the gateway was stopping
    ERROR = "error"  # the relay itself failed (a bug: logged with its traceback)


class RelayMetrics:
    """The relay's counters, out and in (exported whether or not this gateway relays: it may receive)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sent = Counter(
            "zipgate_target_relay",
            "Named-target changes relayed to peers (TARGET_PEERS), by outcome: one per call, or per change and "
            "entry for unresolved, dropped and error.",
            ["outcome"],
            registry=registry,
        )
        self.received = Counter(
            "zipgate_target_relay_received",
            "Relayed PUT and DELETE /targets/{label} calls received from peers (not relayed again).",
            ["method"],
            registry=registry,
        )


@dataclass(frozen=True)
class RelayedBy:
    """What a relayed call says about itself: the relaying process and who named the label there."""

    instance: str
    source: TargetSource | None  # None on a DELETE, or a source this gateway does not relay


def relayed_by(headers: Mapping[str, str]) -> RelayedBy | None:
    """The relay headers of a request (None: not relayed). The values are the caller's word, bounded."""
    instance = headers.get(RELAYED_BY_HEADER)
    if instance is None:
        return None
    source_text = headers.get(RELAYED_SOURCE_HEADER, "")
    source = next((s for s in RELAYED_SOURCES if s.value == source_text), None)
    return RelayedBy(instance[:MAX_INSTANCE_CHARS], source)


@dataclass(frozen=True)
class TargetChange:
    """One change to relay."""

    method: RelayMethod
    label: str
    source: TargetSource | None  # who named it here (PUT)
    request_id: str


class _PeerQueue:
    """One `TARGET_PEERS` entry's changes waiting to be sent, in order, the latest per label (bounded)."""

    def __init__(self, spec: PeerSpec) -> None:
        self.spec = spec
        self.pending: OrderedDict[str, TargetChange] = OrderedDict()
        self.wake = asyncio.Event()  # set when a change is queued
        self.idle = asyncio.Event()  # set while nothing is queued or being sent
        self.idle.set()
        self.sender: asyncio.Task[None] | None = None


class TargetRelay:
    """Relays this gateway's changes to its named targets to its peers, in the background.

    Each `TARGET_PEERS` entry has one sender that sends its changes one after the other, in the order
    they were made, so a PUT and a DELETE of one label reach every peer in that order. Its queue holds
    the latest change of each label (a later change replaces one not sent yet) and at most
    `MAX_PENDING_CHANGES` labels (more are dropped, counted). A DNS entry is resolved by its sender, per
    change, and the change goes to every address at once.

    Args:
        client: the HTTP client for the calls (the caller opens and closes it).
        peers: the parsed `TARGET_PEERS`.
        metrics: where outcomes are counted.
        api_key: the gateway's own key, sent on every call; None: sent without (a peer without a key takes
            PUTs; every gateway refuses a DELETE without one).
        timeout_s: the bound on one call (and on one DNS lookup).
        max_inflight: calls at once, over every peer (each peer gets one at a time; a DNS entry's addresses
            are called together).
        lookup: host, port → addresses, blocking, run on the relay's own DNS thread (default: the system's).
        own: this process's addresses, skipped in DNS answers (default: its host name's).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        peers: tuple[PeerSpec, ...],
        metrics: RelayMetrics,
        *,
        api_key: str | None,
        timeout_s: float,
        max_inflight: int,
        lookup: Lookup = system_lookup,
        own: frozenset[str] | None = None,
    ) -> None:
        self.instance = secrets.token_hex(8)  # a received call with this id came from this process: ignored
        self._client = client
        self._metrics = metrics
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._dns = DnsResolver(timeout_s, lookup)
        self._own = own
        self._slots = asyncio.Semaphore(max_inflight)
        self._queues = [_PeerQueue(spec) for spec in peers]
        self._closed = False

    def named(self, target: NamedTarget, request_id: str | None) -> None:
        """Relay a new name (the board's `on_named`); names from the setting or a peer are not relayed."""
        if target.source in RELAYED_SOURCES:
            self._submit(TargetChange(RelayMethod.PUT, target.label, target.source, _request_id(request_id)))

    def cleared(self, label: str, request_id: str | None) -> None:
        """Relay an operator's DELETE of `label`."""
        self._submit(TargetChange(RelayMethod.DELETE, label, None, _request_id(request_id)))

    def _submit(self, change: TargetChange) -> None:
        """Queue `change` for every peer (replacing an unsent change of its label), or drop it (counted)."""
        for queue in self._queues:
            reason = self._enqueue(queue, change)
            if reason is not None:
                self._metrics.sent.labels(RelayOutcome.DROPPED.value).inc()
                logger.warning(
                    "%s of target %r not relayed to %s (%s)",
                    change.method.value,
                    change.label,
                    queue.spec.base_url(),
                    reason,
                    extra={"request_id": change.request_id},
                )

    def _enqueue(self, queue: _PeerQueue, change: TargetChange) -> str | None:
        """Queue `change` for one peer; the reason it was not, or None."""
        if self._closed:
            return "stopping"
        if change.label not in queue.pending and len(queue.pending) >= MAX_PENDING_CHANGES:
            return "busy"
        if queue.sender is None:
            try:
                queue.sender = asyncio.get_running_loop().create_task(
                    self._send_all(queue), name=f"relay-{queue.spec.base_url()}"
                )
            except RuntimeError:  # not on the event loop (the board is only changed there today)
                return "off the event loop"
        queue.pending.pop(change.label, None)  # a later change of a label replaces the unsent one
        queue.pending[change.label] = change
        queue.idle.clear()
        queue.wake.set()
        return None

    async def _send_all(self, queue: _PeerQueue) -> None:
        """One peer's sender: its changes, oldest first, one at a time (until the relay closes)."""
        while True:
            if not queue.pending:
                queue.idle.set()
                queue.wake.clear()
                await queue.wake.wait()
                continue
            _, change = queue.pending.popitem(last=False)
            try:
                await self._relay(queue.spec, change)
            except Exception:  # never the sender's end: log it, count it, go on with the next change
                self._metrics.sent.labels(RelayOutcome.ERROR.value).inc()
                logger.exception(
                    "%s of target %r to %s failed",
                    change.method.value,
                    change.label,
                    queue.spec.base_url(),
                    extra={"request_id": change.request_id},
                )

    async def _relay(self, spec: PeerSpec, change: TargetChange) -> None:
        """One change to one entry: its URL, or every address its DNS name resolves to now."""
        if spec.dns:
            own = self._own if self._own is not None else await self._dns.own_addresses()
            try:
                urls = await urls_of(spec, self._dns, own)
            except (OSError, TimeoutError, UnicodeError) as exc:
                self._metrics.sent.labels(RelayOutcome.UNRESOLVED.value).inc()
                logger.warning(
                    "target peers %r did not resolve (%s); %s of target %r not relayed to them",
                    spec.host,
                    exc or type(exc).__name__,
                    change.method.value,
                    change.label,
                    extra={"request_id": change.request_id},
                )
                return
        else:
            urls = [spec.base_url()]
        await asyncio.gather(*(self._call(url, change) for url in urls))

    async def _call(self, base_url: str, change: TargetChange) -> None:
        async with self._slots:  # the timeout starts once a slot is free: it bounds the call, not the wait
            outcome = await self._send(base_url, change)
        self._metrics.sent.labels(outcome.value).inc()
        log = logger.info if outcome in (RelayOutcome.OK, RelayOutcome.NOT_NAMED) else logger.warning
        log(
            "%s of target %r relayed to %s: %s",
            change.method.value,
            change.label,
            base_url,
            outcome.value,
            extra={"request_id": change.request_id},
        )

    async def _send(self, base_url: str, change: TargetChange) -> RelayOutcome:
        """One call; only the answer's status is read (whatever a peer sends, its body is never read)."""
        headers = {RELAYED_BY_HEADER: self.instance, "X-Request-ID": change.request_id}
        if change.source is not None:
            headers[RELAYED_SOURCE_HEADER] = change.source.value
        if self._api_key is not None:
            headers[API_KEY_HEADER] = self._api_key
        url = f"{base_url}/targets/{label_path(change.label)}"
        try:
            async with asyncio.timeout(self._timeout_s):  # as a whole: a peer that answers byte by byte too
                async with self._client.stream(change.method.value, url, headers=headers) as response:
                    status = response.status_code
        except (TimeoutError, httpx.TimeoutException):
            return RelayOutcome.TIMEOUT
        except (httpx.HTTPError, OSError):
            return RelayOutcome.UNREACHABLE
        return _outcome(change.method, status)

    async def wait_idle(self) -> None:
        """Wait until every change queued has been relayed (tests)."""
        while not all(queue.idle.is_set() for queue in self._queues):
            for queue in self._queues:
                await queue.idle.wait()

    async def close(self) -> None:
        """Stop relaying: changes still queued are dropped, calls under way cancelled (best effort, never
        held for a drain), and the DNS thread ended."""
        self._closed = True
        senders = [queue.sender for queue in self._queues if queue.sender is not None]
        for sender in senders:
            sender.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        self._dns.close()


def label_path(label: str) -> str:
    """`label` as one path segment: every reserved character percent-encoded, and the dots too, so that
    `.` and `..` are not dot segments the client would remove (the peer's server decodes `%2E` back)."""
    return quote(label, safe="").replace(".", "%2E")


def _outcome(method: RelayMethod, status: int) -> RelayOutcome:
    if 200 <= status < 300:
        return RelayOutcome.OK
    if method is RelayMethod.DELETE and status == 404:
        return RelayOutcome.NOT_NAMED
    if method is RelayMethod.PUT and status == 409:
        return RelayOutcome.TARGETS_FULL
    return RelayOutcome.REJECTED


def _request_id(request_id: str | None) -> str:
    """The id the change's logs and calls carry: the request's that caused it (a fresh one outside a request)."""
    return request_id or uuid.uuid4().hex
