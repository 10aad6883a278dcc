"""Protocol conformance against the real thing: KServe's ModelServer serving a shipped vendor
(tests/kserve_vendor.py, in the KServe venv scripts/setup_tests.sh builds) behind the gateway, over v1
and v2, driven by httpx and by NVIDIA's tritonclient. The hand-written stubs elsewhere stay for
fault injection; these tests prove the wire formats against a server we did not write."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.gateway_servers import gateway_settings, get, png_bytes, post, running_gateway, tiny_ddpm_dir
from tests.ports import free_port
from tests.processes import stop_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
KSERVE_READY_STAMP = ROOT / ".venv-kserve" / ".zipgate-ready"  # written by scripts/setup_tests.sh when the venv works
KSERVE_CLIENT_CALLS = ROOT / "tests" / "kserve_client_calls.py"  # KServe's own client, run in its venv
VENDOR_DIR = ROOT / "models" / "vendor-clean"
MODEL = "fmnist"
SEED = 45
START_TIMEOUT_S = 180.0  # importing kserve and torch on a loaded 2-core machine


@contextlib.contextmanager
def kserve_vendor(log_path: Path) -> Iterator[str]:
    """tests/kserve_vendor.py as a process, until its /v2/health/ready answers 200."""
    if not KSERVE_READY_STAMP.exists():
        pytest.skip(
            f"the KServe venv ({KSERVE_PYTHON.parent.parent.name}) could not be built: scripts/setup_tests.sh "
            "printed why; rerun it to build it"
        )
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(KSERVE_PYTHON),
                str(ROOT / "tests" / "kserve_vendor.py"),
                "--model-dir",
                str(VENDOR_DIR),
                "--name",
                MODEL,
                "--port",
                str(port),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the KServe vendor exited with {process.returncode}:\n"
                    f"{log_path.read_text(errors='replace')[-3000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/ready", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the KServe vendor was not ready within {START_TIMEOUT_S} s")
            time.sleep(0.2)
        yield url
    finally:
        stop_process(process, grace_s=20)


@pytest.fixture(scope="module")
def kserve_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with kserve_vendor(tmp_path_factory.mktemp("kserve") / "kserve.log") as url:
        yield url


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_ddpm_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module", params=["v2", "tfserving"])
def gateway(request: pytest.FixtureRequest, ddpm: Path, kserve_url: str) -> Iterator[tuple[str, str]]:
    """The gateway in front of KServe, its /predict speaking v2 or v1 (TF-Serving) to it."""
    settings = gateway_settings(ddpm, kserve_url, upstream_protocol=request.param, upstream_model=MODEL)
    with running_gateway(settings) as url:
        yield url, request.param


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _purified(gateway: str, *images: bytes) -> list[bytes]:
    files = [("image", (str(i), image, "image/png")) for i, image in enumerate(images)]
    answer = post(f"{gateway}/purify", params={"seed": SEED}, files=files)
    return [answer.content] if len(images) == 1 else [base64.b64decode(b) for b in answer.json()["images"]]


def _v1_direct(kserve_url: str, images: list[bytes]) -> list[dict]:
    answer = post(f"{kserve_url}/v1/models/{MODEL}:predict", json={"instances": [{"b64": _b64(i)} for i in images]})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def test_predict_reaches_kserve_over_its_protocol(gateway: tuple[str, str], kserve_url: str) -> None:
    url, protocol = gateway
    images = [png_bytes(seed=1), png_bytes(seed=2)]
    expected = _v1_direct(kserve_url, _purified(url, *images))
    answer = post(
        f"{url}/predict",
        params={"seed": SEED},
        files=[("image", (str(i), image, "image/png")) for i, image in enumerate(images)],
    )
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    if protocol == "v2":  # one object per image: {output name: row}
        assert [p["label"] for p in predictions] == [e["label"] for e in expected]
        np.testing.assert_allclose(
            [p["probabilities"] for p in predictions], [e["probabilities"] for e in expected], rtol=1e-5
        )
    else:
        assert predictions == expected


def test_v1_sidecar_relays_kserves_answer(gateway: tuple[str, str], kserve_url: str) -> None:
    url, _ = gateway
    images = [png_bytes(seed=3)]
    direct = post(
        f"{kserve_url}/v1/models/{MODEL}:predict",
        json={"instances": [{"b64": _b64(p)} for p in _purified(url, *images)]},
    )
    through = post(
        f"{url}/v1/models/{MODEL}:predict",
        params={"seed": SEED},
        json={"instances": [{"b64": _b64(i)} for i in images]},
    )
    assert through.status_code == direct.status_code == 200
    assert through.json() == direct.json()


def _infer(
    client: triton.InferenceServerClient,
    images: list[bytes],
    *,
    binary_in: bool,
    binary_out: bool,
    model: str = MODEL,
    **kwargs: object,
) -> triton.InferResult:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    # KServe reads binary BYTES as UTF-8 text: its clients send the base64 text in either form.
    tensor.set_data_from_numpy(np.array([_b64(i).encode() for i in images], dtype=np.object_), binary_data=binary_in)
    outputs = (
        None
        if binary_out
        else [triton.InferRequestedOutput(name, binary_data=False) for name in ("probabilities", "label")]
    )
    # Without the binary extension tritonclient sends no Content-Type, and KServe 0.21 then reads the body
    # as binary (400: "inference-header-content-length header is missing"); JSON must say it is JSON.
    headers = None if binary_in else {"Content-Type": "application/json"}
    return client.infer(model, [tensor], outputs=outputs, headers=headers, **kwargs)


@pytest.mark.parametrize(("binary_in", "binary_out"), [(False, False), (True, False), (True, True)])
def test_tritonclient_infers_through_the_gateway_as_against_kserve(
    gateway: tuple[str, str], kserve_url: str, binary_in: bool, binary_out: bool
) -> None:
    url, _ = gateway
    images = [png_bytes(seed=4), png_bytes(seed=5)]
    direct = _infer(
        triton.InferenceServerClient(kserve_url.removeprefix("http://")),
        _purified(url, *images),
        binary_in=binary_in,
        binary_out=binary_out,
    )
    through = _infer(
        triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60.0),
        images,
        binary_in=binary_in,
        binary_out=binary_out,
        query_params={"seed": SEED},
        request_id="tc-1",
    )
    assert through.get_response()["id"] == "tc-1"
    for name in ("label", "probabilities"):
        np.testing.assert_array_equal(through.as_numpy(name), direct.as_numpy(name))
    data_inline = [("data" in output) for output in through.get_response()["outputs"]]
    assert data_inline == [not binary_out] * 2  # binary outputs came back binary


def test_tritonclient_health_and_metadata_through_the_gateway(gateway: tuple[str, str], kserve_url: str) -> None:
    url, _ = gateway
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and not client.is_model_ready("nope")
    assert client.get_model_metadata(MODEL) == get(f"{kserve_url}/v2/models/{MODEL}").json()
    assert client.get_server_metadata() == get(f"{kserve_url}/v2").json()


def test_an_unknown_model_is_kserves_404_without_purification(gateway: tuple[str, str]) -> None:
    url, _ = gateway
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([_b64(png_bytes()).encode()], dtype=np.object_))
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", [tensor])
    # tritonclient shows the OIP's {"error": "<message>"} string as the message (not a dict of ours).
    assert info.value.status() == "404" and "nope" in info.value.message() and "{" not in info.value.message()
    sidecar_v1 = post(f"{url}/v1/models/nope:predict", json={"instances": [{"b64": _b64(png_bytes())}]})
    assert sidecar_v1.status_code == 404 and sidecar_v1.json()["code"] == "model_not_found"


# --- every call of KServe's and NVIDIA's clients: what works against KServe works through the gateway ---------


def _kserve_client_calls(base_url: str, image: Path) -> dict[str, dict[str, Any]]:
    """tests/kserve_client_calls.py (KServe's InferenceRESTClient, v1 and v2) against `base_url`: each outcome."""
    done = subprocess.run(
        [str(KSERVE_PYTHON), str(KSERVE_CLIENT_CALLS), base_url, MODEL, str(image)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_every_kserve_client_call_that_works_against_kserve_works_through_the_gateway(
    gateway: tuple[str, str], kserve_url: str, tmp_path: Path
) -> None:
    url, _ = gateway
    image = tmp_path / "image.png"
    image.write_bytes(png_bytes(seed=6))
    direct = _kserve_client_calls(kserve_url, image)
    through = _kserve_client_calls(url, image)
    working = sorted(name for name, outcome in direct.items() if outcome["ok"])
    assert len(working) >= 9, json.dumps(direct)  # liveness, readiness and inference, v1 and v2, all work directly
    assert {name: through[name] for name in working} == {name: direct[name] for name in working}
    # What KServe refuses, the gateway refuses, with KServe's status where KServe answered one (KServe 0.21
    # drops the connection on a v1 call to an unknown model; the gateway answers 404).
    for name, outcome in direct.items():
        if not outcome["ok"]:
            assert not through[name]["ok"], (name, outcome, through[name])
            assert outcome["status"] in (None, through[name]["status"]), (name, outcome, through[name])


def _triton_infer(client: triton.InferenceServerClient, model: str, *, binary_in: bool, binary_out: bool) -> Any:
    answer = _infer(client, [png_bytes(seed=7)], binary_in=binary_in, binary_out=binary_out, model=model)
    return sorted((output["name"], output["shape"], output["datatype"]) for output in answer.get_response()["outputs"])


TRITON_CALLS: dict[str, Callable[[triton.InferenceServerClient], Any]] = {
    "is_server_live": lambda c: c.is_server_live(),
    "is_server_ready": lambda c: c.is_server_ready(),
    "is_model_ready": lambda c: c.is_model_ready(MODEL),
    "is_model_ready unknown": lambda c: c.is_model_ready("no-such-model"),
    "get_server_metadata": lambda c: c.get_server_metadata(),
    "get_model_metadata": lambda c: c.get_model_metadata(MODEL),
    "get_model_metadata unknown": lambda c: c.get_model_metadata("no-such-model"),
    "get_model_config": lambda c: c.get_model_config(MODEL),
    "get_model_repository_index": lambda c: c.get_model_repository_index(),
    "get_inference_statistics": lambda c: c.get_inference_statistics(MODEL),
    "get_trace_settings": lambda c: c.get_trace_settings(),
    "get_log_settings": lambda c: c.get_log_settings(),
    "get_system_shared_memory_status": lambda c: c.get_system_shared_memory_status(),
    "infer json": lambda c: _triton_infer(c, MODEL, binary_in=False, binary_out=False),
    "infer binary in": lambda c: _triton_infer(c, MODEL, binary_in=True, binary_out=False),
    "infer binary in and out": lambda c: _triton_infer(c, MODEL, binary_in=True, binary_out=True),
    "infer unknown model": lambda c: _triton_infer(c, "no-such-model", binary_in=False, binary_out=False),
}


def _triton_outcomes(base_url: str) -> dict[str, dict[str, Any]]:
    client = triton.InferenceServerClient(base_url.removeprefix("http://"), network_timeout=120.0)
    outcomes: dict[str, dict[str, Any]] = {}
    try:
        for name, call in TRITON_CALLS.items():
            try:
                outcomes[name] = {"ok": True, "value": call(client)}
            except InferenceServerException as exc:
                outcomes[name] = {"ok": False, "status": exc.status()}
    finally:
        client.close()
    return outcomes


def test_every_tritonclient_call_that_works_against_kserve_works_through_the_gateway(
    gateway: tuple[str, str], kserve_url: str
) -> None:
    url, _ = gateway
    direct, through = _triton_outcomes(kserve_url), _triton_outcomes(url)
    working = sorted(name for name, outcome in direct.items() if outcome["ok"])
    assert len(working) >= 9, direct
    assert {name: through[name] for name in working} == {name: direct[name] for name in working}
    for name, outcome in direct.items():
        if not outcome["ok"]:
            assert not through[name]["ok"], (name, through[name])


@pytest.mark.parametrize("path", [f"/v2/models/{MODEL}/infer", f"/v1/models/{MODEL}:predict"])
def test_a_body_that_is_not_json_gets_kserves_own_status(gateway: tuple[str, str], kserve_url: str, path: str) -> None:
    url, _ = gateway
    broken = {"content": b'{"inputs": [', "headers": {"Content-Type": "application/json"}}
    direct, through = post(f"{kserve_url}{path}", **broken), post(f"{url}{path}", **broken)
    assert through.status_code == direct.status_code and direct.status_code in (400, 422), (direct.text, through.text)
