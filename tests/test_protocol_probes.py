"""The public health probes (`GET /`, `/v2/health/live`, `/v2/health/ready`) and KServe v1's model status.

Public probes are anyone's to call: they send the vendor none of the caller's headers, and ask it at
most once per probe path per cache period however many probes arrive. KServe v1's `GET /` and
`GET /v1/models/{name}` reach the vendor like the v2 health and metadata routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

import service.api.gateway as gateway_module
from service.api.probes import VendorProbes
from service.upstream import UpstreamProtocol
from tests.fault_servers import StaticApp, refused_port, serve_asgi
from tests.gateway_servers import gateway_settings, get, running_gateway
from tests.mock_vendor import adapter, mock_client

KEY = "gateway-key-123"
CALLER_HEADERS = {
    "Authorization": "Bearer vendor-secret",
    "Cookie": "session=abc",
    "X-Evil": "1",
    "X-API-Key": KEY,
}
PROBES = ("/", "/v2/health/live", "/v2/health/ready")


@pytest.fixture
def vendor() -> Iterator[tuple[StaticApp, str]]:
    app = StaticApp(200, b'{"status": "alive", "live": true, "ready": true, "name": "fmnist"}')
    with serve_asgi(app) as url:
        yield app, url


@pytest.mark.parametrize("path", PROBES)
def test_a_public_probe_sends_the_vendor_none_of_the_callers_headers(vendor: tuple[StaticApp, str], path: str) -> None:
    app, vendor_url = vendor
    with running_gateway(gateway_settings(None, vendor_url, api_key=KEY)) as url:
        answer = get(f"{url}{path}?cache=bust", headers={**CALLER_HEADERS, "X-Request-ID": "probe-1"})
    assert answer.status_code == 200, answer.text
    (call,) = app.requests
    assert call.path == path  # the caller's query is not forwarded: it would be a way around the cache
    assert not {"authorization", "cookie", "x-evil", "x-api-key"} & set(call.headers)
    assert call.headers["x-request-id"] == "probe-1"


def test_public_probes_ask_the_vendor_once_per_path_per_cache_period(
    vendor: tuple[StaticApp, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, vendor_url = vendor
    monkeypatch.setattr(gateway_module, "PROBE_CACHE_TTL_S", 3600.0)  # no period ends within the test
    with running_gateway(gateway_settings(None, vendor_url)) as url:
        answers = [get(f"{url}{path}", headers={"X-Evil": str(i)}) for i in range(20) for path in PROBES]
    assert {answer.status_code for answer in answers} == {200}
    assert sorted(call.path for call in app.requests) == sorted(PROBES)  # 60 probes, 3 vendor calls


async def test_probe_answers_expire_and_concurrent_probes_share_one_call() -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        await release.wait()
        return httpx.Response(200 if len(calls) == 1 else 503)

    now = [0.0]
    probes = VendorProbes(5.0, 10.0, clock=lambda: now[0])
    async with mock_client(handler) as client:
        vendor = adapter(UpstreamProtocol.V2, client)
        waiting = [asyncio.ensure_future(probes.says_ok(vendor, "/v2/health/ready", None)) for _ in range(5)]
        while not calls:  # the first probe's call has reached the vendor; the others wait for it
            await asyncio.sleep(0)
        release.set()
        assert await asyncio.gather(*waiting) == [True] * 5 and len(calls) == 1
        now[0] = 4.9
        assert await probes.says_ok(vendor, "/v2/health/ready", None) and len(calls) == 1
        now[0] = 5.0  # expired: asked again, and the new answer counts
        assert not await probes.says_ok(vendor, "/v2/health/ready", None) and len(calls) == 2


def test_an_unreachable_vendor_is_not_live_on_v1() -> None:
    with refused_port() as vendor_url, running_gateway(gateway_settings(None, vendor_url)) as url:
        answer = get(f"{url}/")
    assert (answer.status_code, answer.json()) == (503, {"status": "unavailable"})


def test_kserve_v1_liveness_and_model_status_are_relayed(vendor: tuple[StaticApp, str]) -> None:
    app, vendor_url = vendor
    with running_gateway(gateway_settings(None, vendor_url, api_key=KEY)) as url:
        live = get(f"{url}/")
        assert (live.status_code, live.json()) == (200, {"status": "alive"})  # no key needed, like /v2/health/live
        assert get(f"{url}/v1/models/fmnist").status_code == 401  # model status is behind the key, as metadata
        status = get(f"{url}/v1/models/fmnist", headers={"X-API-Key": KEY, "Authorization": "Bearer vendor-secret"})
        version = get(f"{url}/v1/models/fmnist/versions/2", headers={"X-API-Key": KEY})
        refused = get(f"{url}/v1/models/%2e%2e", headers={"X-API-Key": KEY})
    assert status.status_code == 200 and status.json()["name"] == "fmnist"
    assert version.status_code == 200 and refused.status_code == 400  # the sidecar's path checks
    paths = [call.path for call in app.requests]
    assert paths == ["/", "/v1/models/fmnist", "/v1/models/fmnist/versions/2"]
    assert app.requests[1].headers["authorization"] == "Bearer vendor-secret"  # a keyed route: vendor creds pass
    assert "x-api-key" not in app.requests[1].headers
