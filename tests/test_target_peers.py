"""Relay of named targets between replicas (`TARGET_PEERS`), over real sockets: gateways on loopback that
name, un-name and count what their peers relay, and peers that refuse, hang or sit behind a DNS name."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.api import create_app
from service.config import load_settings
from service.loopback import GRACE_S, bound_socket, serve_asgi, url_of, wait_for_http, wait_started
from service.shadow.peer_urls import PeerSpec, parse_peer, peer_urls, resolve_addresses
from service.shadow.peers import RELAYED_BY_HEADER, RELAYED_SOURCE_HEADER, RelayMetrics, TargetRelay
from service.shadow.targets import NamedTarget, TargetSource
from service.upstream import make_http_client
from tests.deploy_support import REPO, render
from tests.gateway_servers import gateway_settings, metric_sum, metric_value, wait_until

KEY = "peers-key"
AUTH = {"X-API-Key": KEY}
DEADLINE_S = 30.0  # generous: polled, never slept on


# --- servers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_on(sock: socket.socket, app: Any) -> Iterator[str]:
    """`app` under uvicorn on a socket bound already (so peers can name each other's URLs before any starts)."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=GRACE_S))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="peer-gateway")
    thread.start()
    try:
        wait_started(lambda: server.started, thread, DEADLINE_S, "peer gateway")
        wait_for_http(f"{url_of(sock)}/readyz", timeout_s=DEADLINE_S, alive=thread.is_alive)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(DEADLINE_S)
        sock.close()


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
            stack.enter_context(serve_on(sock, create_app(peer_settings(others, **overrides))))
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
    return httpx.put(f"{url}/targets/{label}", headers={**AUTH, **headers}, timeout=DEADLINE_S)


def delete(url: str, label: str, **headers: str) -> httpx.Response:
    return httpx.delete(f"{url}/targets/{label}", headers={**AUTH, **headers}, timeout=DEADLINE_S)


def targets(url: str) -> dict[str, tuple[str, str | None]]:
    """label → (source, rule)."""
    answer = httpx.get(f"{url}/targets", headers=AUTH, timeout=DEADLINE_S).json()["targets"]
    return {t["label"]: (t["source"], t["rule"]) for t in answer}


def metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=DEADLINE_S).text


def sent(url: str, outcome: str) -> float:
    return metric_value(metrics(url), "zipgate_target_relay_total", outcome=outcome)


def received(url: str, method: str) -> float:
    return metric_value(metrics(url), "zipgate_target_relay_received_total", method=method)


def alert(url: str, raw_label: str) -> httpx.Response:
    body = {"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": "Zip", "raw_label": raw_label}}]}
    return httpx.post(f"{url}/targets/alerts", json=body, headers=AUTH, timeout=DEADLINE_S)


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
        assert alert(c, "3").json()["named"] == ["3"]
        wait_until(lambda: "3" in targets(a) and "3" in targets(b), DEADLINE_S, "the alert's name on both peers")
        named = [targets(url)["3"] for url in (a, b, c)]
    assert named == [("peer", "alertmanager"), ("peer", "alertmanager"), ("alertmanager", "Zip")]


def test_a_relayed_call_is_not_relayed_again() -> None:
    recorder = Recorder()
    with serve_asgi(recorder.app) as peer:
        # One call at a time: the relays leave in the order of the changes.
        settings = peer_settings([peer], target_peer_max_inflight=1)
        with serve_on(bound_socket(), create_app(settings)) as url:
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
    with serve_asgi(recorder.app) as peer, serve_on(bound_socket(), create_app(peer_settings([peer]))) as url:
        assert put(url, "4").status_code == 200
        wait_until(lambda: recorder.calls, DEADLINE_S, "the relay")
        own_id = recorder.calls[0][2][RELAYED_BY_HEADER.lower()]
        echoed = put(url, "9", **{RELAYED_BY_HEADER: own_id})  # as if its own address had not been skipped
    assert echoed.status_code == 200 and "9" not in {t["label"] for t in echoed.json()["targets"]}


# --- failures --------------------------------------------------------------------------------


def test_a_hanging_peer_does_not_hold_up_the_request() -> None:
    with hanging_port() as hanging:
        settings = peer_settings([url_of(hanging)], target_peer_timeout_s=300.0)
        with serve_on(bound_socket(), create_app(settings)) as url:
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
        settings = peer_settings([dead, url_of(hanging), live], target_peer_timeout_s=0.2)
        with serve_on(bound_socket(), create_app(settings)) as url:
            answer = put(url, "8")
            wait_until(
                lambda: (sent(url, "unreachable"), sent(url, "timeout"), sent(url, "ok")) == (1, 1, 1),
                DEADLINE_S,
                "the three outcomes",
            )
    assert answer.status_code == 200
    assert recorder.labels() == [("PUT", "8")]


def test_a_full_peer_and_a_peer_without_a_key_are_counted_as_such() -> None:
    full, keyless = bound_socket(), bound_socket()
    full_settings = peer_settings([], shadow_max_labels=1)
    keyless_settings = peer_settings([], api_key=None)
    with serve_on(full, create_app(full_settings)) as full_url, serve_on(keyless, create_app(keyless_settings)) as bare:
        assert put(full_url, "1").status_code == 200  # its one outside slot is taken
        with serve_on(bound_socket(), create_app(peer_settings([full_url, bare]))) as url:
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
        serve_on(bound_socket(), create_app(peer_settings([peer], api_key=None))) as url,
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
    with serve_asgi(recorder.app), serve_on(bound_socket(), create_app(peer_settings([]))) as url:
        assert put(url, "2").status_code == 200
        page = metrics(url)
    assert metric_sum(page, "zipgate_target_relay_total") == 0 and recorder.calls == []


# --- the DNS form ----------------------------------------------------------------------------


def test_a_dns_entry_stands_for_every_address_but_this_pods() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("zipgate-peers.zipgate.svc", 8080)
        return ["10.0.0.5", "10.0.0.6", "fd00::7", "fe80::1%eth0", "10.0.0.6"]

    specs = [parse_peer("dns+http://zipgate-peers.zipgate.svc:8080"), parse_peer("http://static:9000/gw/")]
    urls, unresolved = asyncio.run(peer_urls(specs, resolver, frozenset({"10.0.0.5"}), 5.0))
    assert urls == ["http://10.0.0.6:8080", "http://[fd00::7]:8080", "http://static:9000/gw"]
    assert unresolved == []


def test_a_dns_entry_that_fails_or_hangs_is_unresolved() -> None:
    async def failing(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def hanging(host: str, port: int) -> list[str]:
        await asyncio.Event().wait()
        return []

    spec = parse_peer("dns+http://nowhere:8080")
    for resolver in (failing, hanging):
        assert asyncio.run(peer_urls([spec], resolver, frozenset(), 0.05)) == ([], [spec])


def test_localhost_resolves_to_loopback() -> None:
    assert "127.0.0.1" in asyncio.run(resolve_addresses("localhost", 8080))


def test_the_relay_calls_every_address_a_dns_name_resolves_to() -> None:
    recorders = [Recorder(), Recorder()]
    with serve_asgi(recorders[0].app) as first, serve_asgi(recorders[1].app) as second:
        ports = {int(first.rsplit(":", 1)[1]), int(second.rsplit(":", 1)[1])}

        async def resolver(host: str, port: int) -> list[str]:
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
                    resolver=resolver,
                    own=frozenset({"::1"}),  # this "pod's" own address: skipped
                )
                relay.named(NamedTarget("7", TargetSource.ALARM, 0.0), "dns-test")
                relay.named(NamedTarget("8", TargetSource.PEER, 0.0), "dns-test")  # relayed to it: not again
                await relay.wait_idle()
                assert registry.get_sample_value("zipgate_target_relay_total", {"outcome": "ok"}) == 2

        asyncio.run(relay_once())
    assert [r.labels() for r in recorders] == [[("PUT", "7")], [("PUT", "7")]]
    assert recorders[0].calls[0][2]["x-request-id"] == "dns-test"


@pytest.mark.parametrize(
    "entry",
    ["ftp://host:1", "dns+https://peers:8443", "http://:8080", "http://user:pw@host:1", "http://host:1/?a=b", "host"],
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
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    k8s = os.path.relpath(REPO / "k8s", overlay)  # kustomize takes relative paths only
    (overlay / "kustomization.yaml").write_text(
        f"namespace: zipgate\nresources: [{k8s}/overlays/cpu]\ncomponents: [{k8s}/components/target-peers]\n"
    )
    objects = {(o["kind"], o["metadata"]["name"]): o for o in render(overlay)}
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
