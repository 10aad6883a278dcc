"""Relay of named targets between replicas (`TARGET_PEERS`), over real sockets: gateways on loopback that
name, un-name and count what their peers relay, and peers that refuse, hang or sit behind a DNS name."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from socket import gethostname
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.api import create_app
from service.config import load_settings
from service.loopback import bound_socket, serve_asgi, url_of
from service.shadow.peer_urls import DnsResolver, PeerSpec, parse_peer, system_lookup, urls_of
from service.shadow.peers import MAX_PENDING_CHANGES, RelayMetrics, TargetRelay
from service.shadow.relay_headers import RELAYED_BY_HEADER, RELAYED_SOURCE_HEADER
from service.shadow.targets import NamedTarget, TargetSource
from service.upstream import make_http_client
from tests.deploy_support import render_cpu_overlay_with
from tests.gateway_servers import (
    alert_target,
    delete_target,
    gateway_settings,
    metric_sum,
    metric_value,
    named_targets,
    put_target,
    wait_until,
)

KEY = "peers-key"
AUTH = {"X-API-Key": KEY}
DEADLINE_S = 30.0  # generous: polled, never slept on


# --- servers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_gateway(settings: Any, sock: socket.socket | None = None) -> Iterator[str]:
    """A gateway with `settings`, ready, on `sock` when given (bound already, so peers can name each other's
    URLs before any starts)."""
    with serve_asgi(create_app(settings), ready_path="/readyz", startup_timeout_s=DEADLINE_S, sock=sock) as url:
        yield url


def peer_settings(peers: list[str], **overrides: Any) -> Any:
    """An unpurified gateway's settings (the /targets routes need no model) relaying to `peers`."""
    values: dict[str, Any] = {"api_key": KEY, "target_peers": ",".join(peers), "target_peer_timeout_s": 10.0}
    values.update(overrides)
    return gateway_settings(None, "http://127.0.0.1:9", **values)


@contextlib.contextmanager
def gateway_mesh(count: int, **overrides: Any) -> Iterator[list[str]]:
    """`count` gateways, each with the others as its static TARGET_PEERS."""
    sockets = [bound_socket() for _ in range(count)]
    urls = [url_of(sock) for sock in sockets]
    with contextlib.ExitStack() as stack:
        for index, sock in enumerate(sockets):
            others = [url for other, url in enumerate(urls) if other != index]
            stack.enter_context(serve_gateway(peer_settings(others, **overrides), sock))
        yield urls


class Recorder:
    """A peer that records the relayed calls it gets and answers each with `status`."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.app = Starlette(routes=[Route("/targets/{label:path}", self._record, methods=["PUT", "DELETE"])])

    async def _record(self, request: Request) -> JSONResponse:
        self.calls.append((request.method, request.path_params["label"], dict(request.headers)))
        return JSONResponse({"policy": "always", "targets": []}, status_code=self.status)

    def labels(self) -> list[tuple[str, str]]:
        return [(method, label) for method, label, _ in self.calls]


@contextlib.contextmanager
def refusing_port() -> Iterator[str]:
    """A port bound but not listening: every connection is refused."""
    sock = bound_socket()
    try:
        yield url_of(sock)
    finally:
        sock.close()


@contextlib.contextmanager
def hanging_port() -> Iterator[socket.socket]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    sock = bound_socket()
    sock.listen(8)
    try:
        yield sock
    finally:
        sock.close()


# --- helpers ---------------------------------------------------------------------------------


def put(url: str, label: str, **headers: str) -> httpx.Response:
    return put_target(url, label, **AUTH, **headers)


def delete(url: str, label: str, **headers: str) -> httpx.Response:
    return delete_target(url, label, **AUTH, **headers)


def targets(url: str) -> dict[str, tuple[str, str | None]]:
    """label → (source, rule)."""
    return named_targets(url, **AUTH)


def metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=DEADLINE_S).text


def sent(url: str, outcome: str) -> float:
    return metric_value(metrics(url), "zipgate_target_relay_total", outcome=outcome)


def received(url: str, method: str) -> float:
    return metric_value(metrics(url), "zipgate_target_relay_received_total", method=method)


# --- three gateways --------------------------------------------------------------------------


def test_a_put_on_one_gateway_names_the_label_on_every_peer_and_a_delete_clears_it_everywhere() -> None:
    with gateway_mesh(3) as (a, b, c):
        assert put(a, "7").status_code == 200
        wait_until(lambda: "7" in targets(b) and "7" in targets(c), DEADLINE_S, "the name on both peers")
        wait_until(lambda: sent(a, "ok") == 2, DEADLINE_S, "two relays counted")
        named = [targets(url)["7"] for url in (a, b, c)]
        counts = [(received(url, "PUT"), metric_sum(metrics(url), "zipgate_target_relay_total")) for url in (a, b, c)]
        gauge = metric_value(metrics(b), "zipgate_named_target", raw_label="7", source="peer")

        # B holds it as relayed; an operator's DELETE there clears it on A (its operator's) and C too.
        assert delete(b, "7").status_code == 200
        wait_until(lambda: "7" not in targets(a) and "7" not in targets(c), DEADLINE_S, "the name cleared")
        wait_until(lambda: sent(b, "ok") == 2, DEADLINE_S, "B's two relays counted")
        deletes = [received(url, "DELETE") for url in (a, b, c)]
    assert named == [("operator", None), ("peer", "operator"), ("peer", "operator")]
    # Each peer counts one call in and relays nothing out: A's two calls are all there were.
    assert counts == [(0, 2), (1, 0), (1, 0)]
    assert gauge == 1
    assert deletes == [1, 0, 1]


def test_an_alertmanager_notification_to_one_gateway_names_the_label_on_every_peer() -> None:
    with gateway_mesh(3) as (a, b, c):
        assert alert_target(c, "3", alertname="Zip", **AUTH).json()["named"] == ["3"]
        wait_until(lambda: "3" in targets(a) and "3" in targets(b), DEADLINE_S, "the alert's name on both peers")
        named = [targets(url)["3"] for url in (a, b, c)]
    assert named == [("peer", "alertmanager"), ("peer", "alertmanager"), ("alertmanager", "Zip")]


def test_a_relayed_call_is_not_relayed_again() -> None:
    recorder = Recorder()
    with serve_asgi(recorder.app) as peer:
        # One call at a time: the relays leave in the order of the changes.
        settings = peer_settings([peer], target_peer_max_inflight=1)
        with serve_gateway(settings) as url:
            relayed = put(url, "5", **{RELAYED_BY_HEADER: "another-replica", RELAYED_SOURCE_HEADER: "alarm"})
            assert delete(url, "5", **{RELAYED_BY_HEADER: "another-replica"}).status_code == 200
            assert put(url, "marker").status_code == 200  # an operator's own: relayed
            wait_until(lambda: ("PUT", "marker") in recorder.labels(), DEADLINE_S, "the marker relayed")
            counts = received(url, "PUT"), received(url, "DELETE"), sent(url, "ok")
    assert relayed.status_code == 200 and relayed.json()["targets"][0]["source"] == "peer"
    assert relayed.json()["targets"][0]["rule"] == "alarm"
    assert recorder.labels() == [("PUT", "marker")]  # neither the relayed PUT nor the relayed DELETE went on
    assert counts == (1, 1, 1)
    headers = recorder.calls[0][2]
    assert headers["x-api-key"] == KEY and headers[RELAYED_SOURCE_HEADER.lower()] == "operator"
    assert RELAYED_BY_HEADER.lower() in headers


def test_a_call_relayed_by_this_process_changes_nothing() -> None:
    recorder = Recorder()
    with serve_asgi(recorder.app) as peer, serve_gateway(peer_settings([peer])) as url:
        assert put(url, "4").status_code == 200
        wait_until(lambda: recorder.calls, DEADLINE_S, "the relay")
        own_id = recorder.calls[0][2][RELAYED_BY_HEADER.lower()]
        echoed = put(url, "9", **{RELAYED_BY_HEADER: own_id})  # as if its own address had not been skipped
    assert echoed.status_code == 200 and "9" not in {t["label"] for t in echoed.json()["targets"]}


# --- failures --------------------------------------------------------------------------------


def test_a_hanging_peer_does_not_hold_up_the_request() -> None:
    with hanging_port() as hanging:
        settings = peer_settings([url_of(hanging)], target_peer_timeout_s=300.0)
        with serve_gateway(settings) as url:
            answer = put(url, "6")
            # The peer holds the relayed call unanswered, and the client has its answer all the same.
            hanging.settimeout(DEADLINE_S)
            connection, _ = hanging.accept()
            with connection:
                request = connection.recv(4096)
                pending = metric_sum(metrics(url), "zipgate_target_relay_total")
    assert answer.status_code == 200 and [t["label"] for t in answer.json()["targets"]] == ["6"]
    assert request.startswith(b"PUT /targets/6 HTTP/1.1")
    assert pending == 0  # the call is still open: nothing counted yet


def test_dead_and_hanging_peers_are_counted_as_failures_and_the_live_one_gets_the_name() -> None:
    recorder = Recorder()
    with refusing_port() as dead, hanging_port() as hanging, serve_asgi(recorder.app) as live:
        # 2 s: the live peer answers within it on a loaded machine; the hanging one never does.
        settings = peer_settings([dead, url_of(hanging), live], target_peer_timeout_s=2.0)
        with serve_gateway(settings) as url:
            answer = put(url, "8")
            wait_until(
                lambda: (sent(url, "unreachable"), sent(url, "timeout"), sent(url, "ok")) == (1, 1, 1),
                DEADLINE_S,
                "the three outcomes",
            )
    assert answer.status_code == 200
    assert recorder.labels() == [("PUT", "8")]


def test_a_full_peer_and_a_peer_without_a_key_are_counted_as_such() -> None:
    full_settings = peer_settings([], shadow_max_labels=1)
    keyless_settings = peer_settings([], api_key=None)
    with serve_gateway(full_settings) as full_url, serve_gateway(keyless_settings) as bare:
        # Its one slot for peers' names is taken (by a name relayed from elsewhere).
        assert put(full_url, "1", **{RELAYED_BY_HEADER: "elsewhere"}).status_code == 200
        with serve_gateway(peer_settings([full_url, bare])) as url:
            assert put(url, "2").status_code == 200
            wait_until(lambda: (sent(url, "targets_full"), sent(url, "ok")) == (1, 1), DEADLINE_S, "the PUTs")
            assert delete(url, "2").status_code == 200
            # The keyless peer refuses every DELETE (403); the full one never held "2" (404).
            wait_until(lambda: (sent(url, "rejected"), sent(url, "not_named")) == (1, 1), DEADLINE_S, "the DELETEs")
            left = targets(bare)
    assert left == {"2": ("peer", "operator")}  # a DELETE needs the key on the peer too


def test_a_gateway_without_a_key_relays_no_delete() -> None:
    recorder = Recorder()
    with (
        serve_asgi(recorder.app) as peer,
        serve_gateway(peer_settings([peer], api_key=None)) as url,
    ):
        assert httpx.put(f"{url}/targets/3", timeout=DEADLINE_S).status_code == 200
        refused = httpx.delete(f"{url}/targets/3", timeout=DEADLINE_S)
        assert httpx.put(f"{url}/targets/marker", timeout=DEADLINE_S).status_code == 200
        wait_until(lambda: len(recorder.calls) == 2, DEADLINE_S, "the two PUTs relayed")
    assert refused.status_code == 403
    assert recorder.labels() == [("PUT", "3"), ("PUT", "marker")]
    assert "x-api-key" not in recorder.calls[0][2]


def test_no_peers_no_relay() -> None:
    recorder = Recorder()
    with serve_asgi(recorder.app), serve_gateway(peer_settings([])) as url:
        assert put(url, "2").status_code == 200
        page = metrics(url)
    assert metric_sum(page, "zipgate_target_relay_total") == 0 and recorder.calls == []


def test_changes_of_one_label_reach_every_peer_in_their_order() -> None:
    # Many calls at once (max_inflight 8): each peer still gets a label's changes one after the other.
    with gateway_mesh(3, target_peer_max_inflight=8) as (a, b, c):
        for round_ in range(5):
            for label in (f"put-delete-put-{round_}", f"put-delete-{round_}"):
                assert put(a, label).status_code == 200
                assert delete(a, label).status_code == 200
            assert put(a, f"put-delete-put-{round_}").status_code == 200
            assert put(b, f"on-b-{round_}").status_code == 200  # B names it; A un-names it right away
            on_b = f"on-b-{round_}"
            wait_until(lambda on_b=on_b: all(on_b in targets(url) for url in (a, c)), DEADLINE_S, "B's name on A and C")
            assert delete(a, f"on-b-{round_}").status_code == 200
        assert put(a, "last").status_code == 200  # queued after every other change: sent last, to each peer
        wait_until(lambda: "last" in targets(b) and "last" in targets(c), DEADLINE_S, "the last change")
        boards = [set(targets(url)) for url in (a, b, c)]
    expected = {f"put-delete-put-{round_}" for round_ in range(5)} | {"last"}
    assert boards == [expected] * 3


@pytest.mark.parametrize("label", [".", "..", "a/b", "%", "%2E", "../x", "é✓ü", "a.b"])
def test_labels_that_are_not_plain_path_segments_are_relayed_as_they_are(label: str) -> None:
    with gateway_mesh(2) as (a, b):
        named = put(a, label)
        wait_until(lambda: label in targets(b), DEADLINE_S, f"{label!r} on the peer")
        on_peer = targets(b)
        assert delete(a, label).status_code == 200
        wait_until(lambda: label not in targets(b), DEADLINE_S, f"{label!r} cleared on the peer")
        counts = sent(a, "ok"), received(b, "PUT"), received(b, "DELETE")
    assert named.status_code == 200 and [t["label"] for t in named.json()["targets"]] == [label]
    assert on_peer == {label: ("peer", "operator")}
    assert counts == (2, 1, 1)


def test_a_label_changed_again_before_it_was_sent_is_sent_once_as_its_last_change_and_a_full_queue_drops() -> None:
    recorder = Recorder()
    with serve_asgi(recorder.app) as peer:

        async def relay_burst() -> tuple[float | None, float | None]:
            registry = CollectorRegistry()
            async with make_http_client(2.0, DEADLINE_S, 4) as client:
                relay = TargetRelay(
                    client,
                    (parse_peer(peer),),
                    RelayMetrics(registry),
                    api_key=KEY,
                    timeout_s=DEADLINE_S,
                    max_inflight=4,
                )
                # All queued before the sender runs (no await in between).
                for method in ("named", "cleared", "named", "cleared"):
                    if method == "named":
                        relay.named(NamedTarget("7", TargetSource.OPERATOR, 0.0), "burst")
                    else:
                        relay.cleared("7", "burst")
                for index in range(MAX_PENDING_CHANGES + 2):  # "7" and these: three past the bound
                    relay.named(NamedTarget(f"n{index}", TargetSource.OPERATOR, 0.0), "burst")
                await relay.wait_idle()
                await relay.close()
            return (
                registry.get_sample_value("zipgate_target_relay_total", {"outcome": "dropped"}),
                registry.get_sample_value("zipgate_target_relay_total", {"outcome": "ok"}),
            )

        dropped, ok = asyncio.run(relay_burst())
    labels = recorder.labels()
    assert labels[0] == ("DELETE", "7")  # PUT, DELETE, PUT, DELETE of "7": only the last was left to send
    assert labels[1:] == [("PUT", f"n{index}") for index in range(MAX_PENDING_CHANGES - 1)]
    assert (dropped, ok) == (3, MAX_PENDING_CHANGES)


def test_a_relay_that_fails_unexpectedly_is_logged_with_the_request_id_and_counted_and_the_next_change_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()

    def lookup(host: str, port: int) -> list[str]:
        raise RuntimeError("a resolver bug")

    with serve_asgi(recorder.app) as peer:

        async def relay() -> tuple[float | None, float | None]:
            registry = CollectorRegistry()
            async with make_http_client(2.0, DEADLINE_S, 4) as client:
                relay = TargetRelay(
                    client,
                    (parse_peer("dns+http://peers:8080"), parse_peer(peer)),
                    RelayMetrics(registry),
                    api_key=KEY,
                    timeout_s=DEADLINE_S,
                    max_inflight=4,
                    lookup=lookup,
                    own=frozenset(),
                )
                relay.named(NamedTarget("1", TargetSource.ALARM, 0.0), "first-change")
                await relay.wait_idle()
                relay.named(NamedTarget("2", TargetSource.ALARM, 0.0), "second-change")
                await relay.wait_idle()
                await relay.close()
            return (
                registry.get_sample_value("zipgate_target_relay_total", {"outcome": "error"}),
                registry.get_sample_value("zipgate_target_relay_total", {"outcome": "ok"}),
            )

        with caplog.at_level(logging.ERROR, logger="service.shadow.peers"):
            counts = asyncio.run(relay())
    assert counts == (2, 2)  # the DNS entry failed both times; the static peer got both names
    assert recorder.labels() == [("PUT", "1"), ("PUT", "2")]
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [getattr(r, "request_id", None) for r in failures] == ["first-change", "second-change"]
    assert all(r.exc_info and "a resolver bug" in str(r.exc_info[1]) for r in failures)


def test_peers_names_have_their_own_bucket_so_neither_crowds_out_the_other() -> None:
    relayed = {RELAYED_BY_HEADER: "another-replica", RELAYED_SOURCE_HEADER: "alarm"}
    with serve_gateway(peer_settings([], shadow_max_labels=1)) as url:
        answers = [put(url, "p1", **relayed), put(url, "p2", **relayed), put(url, "o1"), put(url, "o2")]
        alerted = alert_target(url, "a1", **AUTH)
        board = targets(url)
    assert [answer.status_code for answer in answers] == [200, 409, 200, 409]
    assert "holds 1 named targets from peers," in answers[1].json()["error"]["message"]
    assert "holds 1 named targets from operators and Alertmanager," in answers[3].json()["error"]["message"]
    assert alerted.json()["not_named"] == ["a1"]
    assert board == {"p1": ("peer", "alarm"), "o1": ("operator", None)}


# --- the DNS form ----------------------------------------------------------------------------


def test_a_dns_entry_stands_for_every_address_but_this_pods() -> None:
    def lookup(host: str, port: int) -> list[str]:
        assert (host, port) == ("zipgate-peers.zipgate.svc", 8080)
        return ["10.0.0.5", "10.0.0.6", "fd00::7", "fe80::1%eth0", "10.0.0.6"]

    async def urls() -> list[list[str]]:
        resolver = DnsResolver(DEADLINE_S, lookup)
        try:
            specs = [parse_peer("dns+http://zipgate-peers.zipgate.svc:8080"), parse_peer("http://static:9000/gw/")]
            return [await urls_of(spec, resolver, frozenset({"10.0.0.5"})) for spec in specs]
        finally:
            resolver.close()

    assert asyncio.run(urls()) == [["http://10.0.0.6:8080", "http://[fd00::7]:8080"], ["http://static:9000/gw"]]


def test_lookups_run_on_the_relays_own_thread_one_at_a_time_and_a_hung_one_is_not_waited_on() -> None:
    release = threading.Event()
    threads: list[str] = []

    def lookup(host: str, port: int) -> list[str]:
        threads.append(threading.current_thread().name)
        if host == "hangs":
            release.wait(DEADLINE_S)
            return ["10.0.0.1"]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def run() -> list[str]:
        resolver = DnsResolver(0.05, lookup)  # the lookups here fail or hang: the bound is what is tested
        outcomes = []
        try:
            for host in ("fails", "hangs", "fails"):
                try:
                    await resolver.resolve(host, 80)
                except (OSError, TimeoutError) as exc:
                    outcomes.append(type(exc).__name__)
            # The hung lookup still holds the thread: the third was refused at once, never started.
            assert len(threads) == 2
            release.set()
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:  # once the hung lookup has returned, lookups start again
                try:
                    return outcomes + [str(await resolver.resolve("hangs", 80))]
                except OSError:
                    await asyncio.sleep(0.01)
            raise AssertionError("no lookup started after the hung one returned")
        finally:
            resolver.close()

    assert asyncio.run(run()) == ["gaierror", "TimeoutError", "OSError", "['10.0.0.1']"]
    assert len(threads) == 3 and all(name.startswith("zipgate-peer-dns") for name in threads)


def test_an_answer_is_reused_for_a_few_seconds_and_a_failure_is_not() -> None:
    calls: list[str] = []
    now = [0.0]

    def lookup(host: str, port: int) -> list[str]:
        calls.append(host)
        if host == gethostname() and calls.count(host) == 1:  # this host's name fails once, then resolves
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return ["10.0.0.9"]

    async def run() -> list[object]:
        resolver = DnsResolver(DEADLINE_S, lookup, cache_s=5.0, clock=lambda: now[0])
        try:
            answers: list[object] = [await resolver.resolve("peers", 80), await resolver.resolve("peers", 80)]
            now[0] = 6.0
            answers.append(await resolver.resolve("peers", 80))
            for _ in range(3):
                answers.append(await resolver.own_addresses())
            return answers
        finally:
            resolver.close()

    answers = asyncio.run(run())
    assert answers[:3] == [["10.0.0.9"]] * 3
    assert answers[3:] == [frozenset(), frozenset({"10.0.0.9"}), frozenset({"10.0.0.9"})]
    assert calls == ["peers", "peers", gethostname(), gethostname()]  # cached: once per 5 s; own: kept once found


def test_localhost_resolves_to_loopback() -> None:
    assert "127.0.0.1" in system_lookup("localhost", 8080)


def test_the_relay_calls_every_address_a_dns_name_resolves_to() -> None:
    recorders = [Recorder(), Recorder()]
    with serve_asgi(recorders[0].app) as first, serve_asgi(recorders[1].app) as second:
        ports = {int(first.rsplit(":", 1)[1]), int(second.rsplit(":", 1)[1])}

        def lookup(host: str, port: int) -> list[str]:
            return ["127.0.0.1", "::1"] if host == "localhost" else []

        async def relay_once() -> None:
            registry = CollectorRegistry()
            async with make_http_client(2.0, 5.0, 4) as client:
                relay = TargetRelay(
                    client,
                    tuple(parse_peer(f"dns+http://localhost:{port}") for port in sorted(ports)),
                    RelayMetrics(registry),
                    api_key=KEY,
                    timeout_s=5.0,
                    max_inflight=2,
                    lookup=lookup,
                    own=frozenset({"::1"}),  # this "pod's" own address: skipped
                )
                relay.named(NamedTarget("7", TargetSource.ALARM, 0.0), "dns-test")
                relay.named(NamedTarget("8", TargetSource.PEER, 0.0), "dns-test")  # relayed to it: not again
                await relay.wait_idle()
                await relay.close()
                assert registry.get_sample_value("zipgate_target_relay_total", {"outcome": "ok"}) == 2

        asyncio.run(relay_once())
    assert [r.labels() for r in recorders] == [[("PUT", "7")], [("PUT", "7")]]
    assert recorders[0].calls[0][2]["x-request-id"] == "dns-test"


@pytest.mark.parametrize(
    "entry",
    [
        "ftp://host:1",
        "dns+https://peers:8443",
        "http://:8080",
        "http://user:pw@host:1",
        "http://host:1/?a=b",
        "host",
        f"dns+http://{'a' * 70}.svc:8080",  # a DNS label over 63 characters: resolving it would raise UnicodeError
        "http://a..b:8080",
    ],
)
def test_a_bad_peer_entry_is_refused_at_start_up(entry: str) -> None:
    with pytest.raises(ValueError, match="target_peers"):
        load_settings(target_peers=entry, purification_enabled=False)


def test_the_env_form_is_a_comma_list() -> None:
    settings = load_settings(target_peers=" http://a:1 , dns+http://b:2 ,", purification_enabled=False)
    assert settings.target_peers == ("http://a:1", "dns+http://b:2")
    assert [spec.dns for spec in map(parse_peer, settings.target_peers)] == [False, True]
    assert parse_peer("dns+http://b:2") == PeerSpec("http", "b", 2, "", True)


# --- Kubernetes ------------------------------------------------------------------------------


def test_the_k8s_component_lets_every_pod_find_and_reach_the_others(tmp_path: Path) -> None:
    objects = render_cpu_overlay_with("target-peers", tmp_path)
    peers, deployment = objects[("Service", "zipgate-peers")], objects[("Deployment", "zipgate")]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    (http_port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    spec = parse_peer(objects[("ConfigMap", "zipgate-config")]["data"]["ZIPGATE_TARGET_PEERS"])
    policy = objects[("NetworkPolicy", "zipgate-peers")]
    pod_labels = pod["metadata"]["labels"]
    assert peers["spec"]["clusterIP"] == "None" and peers["metadata"]["namespace"] == "zipgate"
    assert peers["spec"]["selector"].items() <= pod_labels.items()
    # A headless name resolves to the pods themselves: the URL's port is theirs, not a Service port.
    assert (spec.dns, spec.host, spec.port) == (True, "zipgate-peers", http_port)
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    for rule, side in ((policy["spec"]["ingress"][0], "from"), (policy["spec"]["egress"][0], "to")):
        (peer,) = rule[side]
        assert peer == {"podSelector": policy["spec"]["podSelector"]}  # only the gateway pods, this namespace
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert objects[("Service", "zipgate")]["spec"].get("clusterIP") != "None"  # clients still get one address
