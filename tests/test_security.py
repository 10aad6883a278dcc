"""The gateway's API key never reaches the vendor: every spelling of it is stripped, the vendor's
own credentials pass (service/api/security.py)."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from service.api.security import headers_for_vendor
from service.shadow.peers import RELAYED_BY_HEADER, RELAYED_SOURCE_HEADER
from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import gateway_settings, png_bytes, running_gateway
from tests.raw_http import raw_post, tfserving_body

KEY = "gateway-key-123"


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {KEY}",
        f"Bearer\t{KEY}",
        f"bearer  {KEY}",
        f"BEARER {KEY} ",
        f"  Bearer {KEY}",
        KEY,
        f"Token {KEY}",
        f"Bearer \t {KEY}\t",
    ],
)
def test_every_form_of_the_gateway_key_is_stripped(authorization: str) -> None:
    kept = headers_for_vendor({"Authorization": authorization, "X-Custom": "1"}, SecretStr(KEY))
    assert kept == {"X-Custom": "1"}


def test_x_api_key_is_always_stripped_and_a_vendor_token_passes() -> None:
    kept = headers_for_vendor({"X-API-Key": "something-else", "authorization": "Bearer vendor-token"}, SecretStr(KEY))
    assert kept == {"authorization": "Bearer vendor-token"}
    # Without a gateway key the client's headers are all the vendor's.
    assert headers_for_vendor({"X-API-Key": "v"}, None) == {"X-API-Key": "v"}


def test_proxy_authorization_holding_the_gateway_key_is_stripped() -> None:
    key = SecretStr("gateway-key-123")
    assert "Proxy-Authorization" not in headers_for_vendor({"Proxy-Authorization": "Basic gateway-key-123"}, key)
    kept = headers_for_vendor({"Proxy-Authorization": "Basic other"}, key)
    assert kept == {"Proxy-Authorization": "Basic other"}  # not the gateway's (the adapter drops it as hop-by-hop)


def test_headers_between_replicas_are_not_forwarded_to_the_vendor() -> None:
    relay = {RELAYED_BY_HEADER: "instance-1", RELAYED_SOURCE_HEADER.upper(): "alarm", "X-Custom": "1"}
    assert headers_for_vendor(relay, None) == {"X-Custom": "1"}


def test_a_tab_separated_bearer_key_is_not_forwarded_over_http() -> None:
    recorder = StaticApp(200, b"{}")
    with (
        serve_asgi(recorder) as upstream_url,
        running_gateway(gateway_settings(None, upstream_url, api_key=KEY)) as url,
    ):
        status, _, answer = raw_post(
            url,
            "/v1/models/fmnist:predict",
            tfserving_body(png_bytes()),
            extra_headers=f"X-API-Key: {KEY}\r\nAuthorization: Bearer\t{KEY}\r\n",
        )
    assert status == 200, answer
    (sent,) = [r for r in recorder.requests if r.method == "POST"]  # not the GET asking for the model
    assert "authorization" not in sent.headers and "x-api-key" not in sent.headers
    assert all(KEY not in json.dumps(r.headers) for r in recorder.requests)  # the model question's GET too
