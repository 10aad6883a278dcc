"""Offline checks of the deployment files: Kubernetes overlays (rendered by `kubectl kustomize`, then
validated against the Kubernetes schemas and, for CRDs, their structure), the Dockerfile (hadolint, final stage), the
compose files (compose specification), Prometheus config (promtool) and the Grafana dashboard
(every query names only metrics a live gateway exports).

No Docker engine and no cluster exist where these run; docs/deployment.md says how to check the
rest by hand.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.config import ENV_PREFIX, Settings, load_settings
from tests.deploy_support import (
    PROMETHEUS_CONFIG,
    RARE_EVENT_SUFFIX,
    REPO,
    dashboard_queries,
    gateway_metric_names,
    interpolate,
    load_dashboard,
    promql_metric_names,
    recorded_metric_names,
    render,
    to_promql,
)
from tests.fault_servers import StaticApp, refused_port, serve_asgi

K8S = REPO / "k8s"
OVERLAYS = ("cpu", "gpu", "gpu-keda")
GPU_OVERLAYS = ("gpu", "gpu-keda")
# The oldest Kubernetes release the manifests claim to support, and the newest the validator ships.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker" / "compose.gpu.yml"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
VARIANTS = ("cpu", "cuda")
# Ignore pragmas the Dockerfile may use, each with its reason written beside it there.
ALLOWED_HADOLINT_IGNORES = {"DL3006", "DL3008"}
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|cmake|build-essential|git|curl|wget|pip3? install|"
    r"python3?-dev|python3?-pip|apt-get install [^&]*-dev)\b"
)
# Time a worker may still need for the batch it runs when the drain deadline passes.
LAST_BATCH_MARGIN_S = 10


def _bin(name: str) -> str:
    """A console script of this virtualenv (hadolint, check-jsonschema), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; run scripts/setup.sh (it installs the dev extras)")
    return found


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(K8S / "overlays" / overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def exported_names() -> set[str]:
    """Sample names from a live `/metrics` of the gateway app (purification off: no model needed)."""
    names = gateway_metric_names()
    assert "zipgate_queue_depth" in names
    return names


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The process environment without ZIPGATE_* variables (settings come only from the test)."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return [o["kind"] for o in objects]


def gateway_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(objects)["containers"] if c["name"] == "gateway"]
    return container


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def config_data(objects: list[dict[str, Any]]) -> dict[str, str]:
    return one(objects, "ConfigMap")["data"]


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Validate ZIPGATE_* variables the way the gateway reads them (names and values)."""
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = sorted(name for name in env if name.startswith(ENV_PREFIX) and name not in fields)
    assert not unknown, f"not gateway settings: {unknown}"
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)
    return load_settings()


# --- Kubernetes: schemas ------------------------------------------------------------------------

# The parts of the CRDs' OpenAPI schemas that the manifests use (KEDA 2.10+, Prometheus Operator
# v0.6x+), closed with additionalProperties: false so a misspelled field fails here, not on apply.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": _STRING_MAP, "matchExpressions": {"type": "array"}},
}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}


def _custom_resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A closed schema of one custom resource: apiVersion, kind, metadata and this `spec`."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


SCALED_OBJECT_SCHEMA = _custom_resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "additionalProperties": False,
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "envSourceContainerName": {"type": "string"},
                },
            },
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "initialCooldownPeriod": {"type": "integer", "minimum": 0},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "fallback": {"type": "object"},
            "advanced": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "scalingModifiers": {"type": "object"},
                    "horizontalPodAutoscalerConfig": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                    },
                },
            },
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["type", "metadata"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"},
                        "name": {"type": "string"},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                        "authenticationRef": {"type": "object", "required": ["name"]},
                        # KEDA reads every metadata value as a string: a bare 16 is rejected.
                        "metadata": _STRING_MAP,
                    },
                },
            },
        },
    },
)
SERVICE_MONITOR_SCHEMA = _custom_resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector"],
        "additionalProperties": False,
        "properties": {
            "selector": _LABEL_SELECTOR,
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "namespaceSelector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                },
            },
            "sampleLimit": {"type": "integer"},
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "targetPort": {"type": ["string", "integer"]},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                        "honorLabels": {"type": "boolean"},
                        "honorTimestamps": {"type": "boolean"},
                        "params": {"type": "object"},
                        "relabelings": {"type": "array"},
                        "metricRelabelings": {"type": "array"},
                        "tlsConfig": {"type": "object"},
                        "authorization": {"type": "object"},
                        "bearerTokenSecret": {"type": "object"},
                        "followRedirects": {"type": "boolean"},
                        "enableHttp2": {"type": "boolean"},
                        "filterRunning": {"type": "boolean"},
                    },
                },
            },
        },
    },
)
PROMETHEUS_RULE_SCHEMA = _custom_resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    {
        "type": "object",
        "required": ["groups"],
        "additionalProperties": False,
        "properties": {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "rules"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": _DURATION,
                        "rules": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["expr"],
                                "additionalProperties": False,
                                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                "properties": {
                                    "alert": {"type": "string"},
                                    "record": {"type": "string"},
                                    # The operator's CRD takes an int-or-string expr; Prometheus parses it.
                                    "expr": {"type": ["string", "integer"]},
                                    "for": _DURATION,
                                    "keep_firing_for": _DURATION,
                                    "labels": _STRING_MAP,
                                    "annotations": _STRING_MAP,
                                },
                            },
                        },
                    },
                },
            }
        },
    },
)
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT_SCHEMA,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR_SCHEMA,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE_SCHEMA,
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_builtin_object_matches_its_kubernetes_schema(rendered: dict, overlay: str, version: str) -> None:
    without_schema = set()
    for obj in rendered[overlay]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            without_schema.add((obj["apiVersion"], obj["kind"]))
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{overlay}: {obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {version}: "
                f"{exc.message} at {'.'.join(str(p) for p in exc.path)}",
                pytrace=False,
            )
    # Only the CRDs checked structurally below may lack a built-in schema; nothing is skipped silently.
    assert without_schema <= set(CRD_SCHEMAS), without_schema
    assert {"Namespace", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy"} <= set(
        kinds(rendered[overlay])
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_crd_objects_match_their_structure(rendered: dict, overlay: str) -> None:
    checked = 0
    for obj in rendered[overlay]:
        schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
        if schema is not None:
            jsonschema.validate(obj, schema)
            checked += 1
        if obj["kind"] == "ScaledObject":
            # KEDA hands `behavior` to the HPA it creates: it must be a valid HPA behavior.
            behavior = obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
            hpa = {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "x"},
                "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 2, "behavior": behavior},
            }
            kubernetes_validate.validate(hpa, K8S_VERSIONS[-1], strict=True)
    assert checked == (3 if overlay.endswith("keda") else 2)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "triggers", 0, "metadata", "threshold"), 16),  # must be a string
        (("spec", "triggers", 0, "metricType"), "Average"),
        (("spec", "minReplicas"), 1),  # an HPA field name, not KEDA's
    ],
)
def test_scaled_object_schema_rejects_typical_mistakes(rendered: dict, path: tuple, value: Any) -> None:
    broken = copy.deepcopy(one(rendered["gpu-keda"], "ScaledObject"))
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCALED_OBJECT_SCHEMA)


def test_service_monitor_schema_rejects_a_bad_interval(rendered: dict) -> None:
    broken = copy.deepcopy(one(rendered["cpu"], "ServiceMonitor"))
    broken["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SERVICE_MONITOR_SCHEMA)


@pytest.mark.parametrize(("field", "value"), [("for", "5 minutes"), ("severity", "critical"), ("alert", None)])
def test_prometheus_rule_schema_rejects_typical_mistakes(rendered: dict, field: str, value: Any) -> None:
    broken = copy.deepcopy(one(rendered["cpu"], "PrometheusRule"))
    rule = broken["spec"]["groups"][0]["rules"][0]
    if value is None:
        del rule[field]  # neither alert nor record
    else:
        rule[field] = value  # a bad duration; a label outside `labels`
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, PROMETHEUS_RULE_SCHEMA)


# --- Kubernetes: one namespace, components included -------------------------------------------------

# Kinds that live outside any namespace (of those kustomize or these manifests could produce).
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PriorityClass",
        "StorageClass",
        "PersistentVolume",
        "IngressClass",
        "RuntimeClass",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "APIService",
    }
)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespaced_object_shares_the_deployments_namespace(rendered: dict, overlay: str) -> None:
    # kustomize applies a base's namespace to the base's objects only, not to the components'
    # (kustomize issue 5329): an HPA without one lands in `default` and scales nothing.
    objects = rendered[overlay]
    namespace = one(objects, "Deployment")["metadata"]["namespace"]
    assert one(objects, "Namespace")["metadata"]["name"] == namespace
    for obj in objects:
        name = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], name
        else:
            assert obj["metadata"].get("namespace") == namespace, f"{name} is not in namespace {namespace}"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "zipgate", f"{name} lacks the common labels"


def test_the_namespace_check_finds_a_component_without_one(tmp_path: Path) -> None:
    # The bug the test above guards against, reproduced with the real kustomize: a base's namespace
    # does not reach a component's object. If kustomize ever fixes it, the overlays' own
    # `namespace:` can go.
    base, component, overlay = tmp_path / "base", tmp_path / "component", tmp_path / "overlay"
    for folder in (base, component, overlay):
        folder.mkdir()
    (base / "kustomization.yaml").write_text("namespace: apps\nresources: [cm.yaml]\n")
    (base / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (component / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nresources: [cm.yaml]\n"
    )
    (component / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n")
    (overlay / "kustomization.yaml").write_text("resources: [../base]\ncomponents: [../component]\n")
    namespaces = {o["metadata"]["name"]: o["metadata"].get("namespace") for o in render(overlay)}
    assert namespaces == {"a": "apps", "b": None}


def test_the_base_needs_no_custom_resource_definitions() -> None:
    # Prometheus Operator and KEDA objects come only with their components: the base applies on a
    # bare cluster, and an overlay without `components/monitoring` needs no operator.
    api_groups = {o["apiVersion"].split("/")[0] for o in render(K8S / "base")}
    assert not api_groups & {"monitoring.coreos.com", "keda.sh"}, api_groups


# --- Kubernetes: what the objects say -------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_torch_threads_leave_one_core_of_the_cpu_limit(
    rendered: dict, overlay: str, clean_env: pytest.MonkeyPatch
) -> None:
    # What the default (usable cores - 1, from the cgroup) would pick; set explicitly because the
    # CPU request is lower than the limit and the setting must not depend on the node.
    settings = settings_from_env(config_data(rendered[overlay]), clean_env)
    cpu_limit = gateway_container(rendered[overlay])["resources"]["limits"]["cpu"]
    assert settings.torch_threads == int(cpu_limit) - 1


def _min_replicas(objects: list[dict[str, Any]]) -> int:
    (scaler,) = [o for o in objects if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    return (
        scaler["spec"]["minReplicas"]
        if scaler["kind"] == "HorizontalPodAutoscaler"
        else scaler["spec"]["minReplicaCount"]
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_drain_never_evicts_the_last_replica(rendered: dict, overlay: str) -> None:
    budget = one(rendered[overlay], "PodDisruptionBudget")["spec"]
    assert "minAvailable" not in budget
    assert _min_replicas(rendered[overlay]) - budget["maxUnavailable"] >= 1, (
        f"{overlay}: at the autoscaler's minimum a drain may evict every replica"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_only_in_gpu_overlays(rendered: dict, overlay: str, clean_env: pytest.MonkeyPatch) -> None:
    container = gateway_container(rendered[overlay])
    settings = settings_from_env(config_data(rendered[overlay]), clean_env)
    gpus = {kind: container["resources"][kind].get("nvidia.com/gpu") for kind in ("requests", "limits")}
    if overlay in GPU_OVERLAYS:
        assert gpus == {"requests": "1", "limits": "1"}
        assert container["image"].endswith(":cuda")
        assert settings.devices == "auto" and settings.dtype.value == "auto"
        assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec(rendered[overlay])["tolerations"])
    else:
        assert gpus == {"requests": None, "limits": None}
        assert container["image"].endswith(":cpu")
        assert settings.devices == "cpu"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_non_root_read_only_without_capabilities(rendered: dict, overlay: str) -> None:
    spec = pod_spec(rendered[overlay])
    container = gateway_container(rendered[overlay])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == dockerfile_user_uid() != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # A read-only root needs a writable /tmp, where HOME and the caches point.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOME"] == "/tmp" and env["XDG_CACHE_HOME"].startswith("/tmp/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_selectors_agree(rendered: dict, overlay: str, clean_env: pytest.MonkeyPatch) -> None:
    objects = rendered[overlay]
    deployment, service, monitor = one(objects, "Deployment"), one(objects, "Service"), one(objects, "ServiceMonitor")
    container = gateway_container(objects)
    settings = settings_from_env(config_data(objects), clean_env)
    (port,) = container["ports"]
    assert port["containerPort"] == settings.port and settings.host == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": service["spec"]["selector"],
        "PodDisruptionBudget": one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector and selector.items() <= pod_labels.items(), f"{kind} selector does not select the pods"
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [service_port["name"]]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_the_drain(rendered: dict, overlay: str, clean_env: pytest.MonkeyPatch) -> None:
    settings = settings_from_env(config_data(rendered[overlay]), clean_env)
    container = gateway_container(rendered[overlay])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    grace_s = pod_spec(rendered[overlay])["terminationGracePeriodSeconds"]
    assert grace_s >= pre_stop_s + settings.drain_timeout_s + LAST_BATCH_MARGIN_S, (
        f"terminationGracePeriodSeconds {grace_s} leaves the drain ({settings.drain_timeout_s} s after a "
        f"{pre_stop_s} s preStop) no room; Kubernetes would SIGKILL queued work"
    )
    strategy = one(rendered[overlay], "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0  # capacity never dips while new replicas load their model


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_come_from_the_configmap_and_the_key_from_a_secret(
    rendered: dict, overlay: str, clean_env: pytest.MonkeyPatch
) -> None:
    objects = rendered[overlay]
    data = config_data(objects)
    settings = settings_from_env(data, clean_env)  # every key is a setting, every value valid
    assert settings.model_path.as_posix().startswith("/opt/zipgate/models/")
    assert f"{ENV_PREFIX}API_KEY" not in data
    assert "Secret" not in kinds(objects)  # the operator creates it; nothing secret is in git
    container = gateway_container(objects)
    assert container["envFrom"] == [{"configMapRef": {"name": one(objects, "ConfigMap")["metadata"]["name"]}}]
    (api_key,) = [e for e in container["env"] if e["name"] == f"{ENV_PREFIX}API_KEY"]
    assert set(api_key["valueFrom"]["secretKeyRef"]) == {"name", "key"}  # required: no silent unauthenticated start


def _hpa_target(hpa: dict[str, Any]) -> tuple[str, str]:
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    return metric["pods"]["metric"]["name"], metric["pods"]["target"]["averageValue"]


def test_autoscalers_scale_on_the_exported_queue_depth(rendered: dict, exported_names: set[str]) -> None:
    adapter_rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    (rule,) = [r for r in adapter_rules if r["name"]["as"] == "zipgate_queue_depth"]
    assert promql_metric_names(rule["seriesQuery"]) == {"zipgate_queue_depth"} <= exported_names
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}  # a per-pod (type Pods) metric
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        deployment = one(objects, "Deployment")["metadata"]["name"]
        scalers = [o for o in objects if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
        assert len(scalers) == 1, f"{overlay}: exactly one autoscaler (an HPA and KEDA would fight)"
        assert scalers[0]["spec"]["scaleTargetRef"]["name"] == deployment
    for overlay in ("cpu", "gpu"):
        name, _ = _hpa_target(one(rendered[overlay], "HorizontalPodAutoscaler"))
        assert name == rule["name"]["as"]


def test_keda_uses_the_same_signal_and_target_as_the_hpa(rendered: dict, exported_names: set[str]) -> None:
    scaled = one(rendered["gpu-keda"], "ScaledObject")
    hpa = one(rendered["gpu"], "HorizontalPodAutoscaler")
    (trigger,) = scaled["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert promql_metric_names(query) == {"zipgate_queue_depth"} <= exported_names
    namespace = one(rendered["gpu-keda"], "Deployment")["metadata"]["namespace"]
    assert f'namespace="{namespace}"' in query, "the query must select this namespace's gateways"
    _, average_value = _hpa_target(hpa)
    assert trigger["metadata"]["threshold"] == average_value
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (
        hpa["spec"]["minReplicas"],
        hpa["spec"]["maxReplicas"],
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_clients_and_prometheus_and_only_dns_and_upstream_out(
    rendered: dict, overlay: str
) -> None:
    policy = one(rendered[overlay], "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [gateway_container(rendered[overlay])["ports"][0]["name"]]
    sources = [peer["podSelector"]["matchLabels"] for peer in ingress["from"]]
    assert {"zipgate.io/client": "true"} in sources and {"app.kubernetes.io/name": "prometheus"} in sources
    assert all(peer.get("podSelector", {}).get("matchLabels") for peer in ingress["from"]), "no open ingress"
    dns, upstream = policy["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert upstream["to"][0]["podSelector"]["matchLabels"] == {"zipgate.io/upstream": "true"}


# --- Docker -----------------------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[dict[str, Any]]]:
    """Instructions of each stage, by stage name ('' for unnamed), FROM first."""
    stages: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] = []
    for instruction in DockerfileParser(path=str(DOCKERFILE)).structure:
        if instruction["instruction"] == "FROM":
            words = instruction["value"].split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            current = stages.setdefault(name, [])
        if instruction["instruction"] != "COMMENT":
            current.append(instruction)
    return stages


def runtime_chain(variant: str) -> list[list[dict[str, Any]]]:
    """The final stage and every stage of this file it builds on, for one VARIANT."""
    stages = dockerfile_stages()
    final = list(stages)[-1]
    chain, name = [], final
    while name in stages:
        chain.append(stages[name])
        name = stages[name][0]["value"].split()[0].replace("${VARIANT}", variant)
    return chain


def dockerfile_user_uid() -> int:
    (user,) = [i["value"] for i in runtime_chain("cpu")[0] if i["instruction"] == "USER"]
    return int(user.split(":")[0])


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [_bin("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    pragmas = re.findall(r"#\s*hadolint ignore=([\w,]+)", DOCKERFILE.read_text())
    ignored = {rule for pragma in pragmas for rule in pragma.split(",")}
    assert ignored <= ALLOWED_HADOLINT_IGNORES, f"new hadolint ignores need a reason and a test update: {ignored}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_final_stage_is_non_root_healthchecked_and_drains_on_sigterm(
    variant: str, clean_env: pytest.MonkeyPatch
) -> None:
    chain = runtime_chain(variant)
    final = {i["instruction"]: i["value"] for i in chain[0]}
    assert len(chain) == 2 and chain[1][0]["value"].split()[-1] == f"base-{variant}"
    user = final["USER"].split(":")
    assert user[0] not in ("root", "0") and user[-1] not in ("root", "0")
    assert final["STOPSIGNAL"] == "SIGTERM"
    # Exec form: zipgate is PID 1 and receives SIGTERM itself (a shell would swallow it).
    assert final["ENTRYPOINT"].startswith("[") and final["CMD"] == '["serve"]'
    assert "CMD" in final["HEALTHCHECK"] and "/opt/zipgate/healthcheck.py" in final["HEALTHCHECK"]
    parser = DockerfileParser(path=str(DOCKERFILE))
    env = {name: value for name, value in parser.envs.items()}
    settings = settings_from_env(env, clean_env)
    assert final["EXPOSE"] == str(settings.port) and settings.host == "0.0.0.0"
    assert settings.model_path.as_posix() == "/opt/zipgate/models/fmnist-ddpm"
    for stage in chain:
        for instruction in stage:
            if instruction["instruction"] == "RUN":
                assert not BUILD_TOOLS.search(instruction["value"]), f"build tool in the final image: {instruction}"
    copies = [i["value"] for i in chain[0] if i["instruction"] == "COPY"]
    assert copies and all(c.startswith("--from=builder ") for c in copies), "the final stage takes only built files"


def test_image_installs_pinned_versions_from_the_constraints_file() -> None:
    builder = dockerfile_stages()["builder"]
    copied = [shlex.split(i["value"])[:-1] for i in builder if i["instruction"] == "COPY"]
    assert any("constraints.txt" in sources for sources in copied), "the builder copies constraints.txt"
    runs = " ".join(i["value"] for i in builder if i["instruction"] == "RUN")
    assert re.search(r"pip install [^&]*-c constraints\.txt \.", runs), "pip install of the project uses it"
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.]*", v) for v in pins.values()), "exact versions, no local labels"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a dependency but not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"
    torch_arg = re.search(r"^ARG TORCH_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert torch_arg is not None and torch_arg.group(1) == pins["torch"]


def _healthcheck_module() -> Any:
    spec = importlib.util.spec_from_file_location("zipgate_healthcheck", REPO / "docker" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize(
    ("command", "env_port", "port"),
    [
        (["zipgate", "serve"], "8123", "8123"),  # the image's ZIPGATE_PORT (or a user's)
        (["zipgate", "serve"], None, "8080"),
        (["zipgate", "serve", "--port", "9001"], "8080", "9001"),  # the flag wins, as in the gateway
        (["zipgate", "serve", "--port=9002", "--host", "0.0.0.0"], None, "9002"),
        (["/opt/venv/bin/python", "/opt/venv/bin/zipgate", "demo-vendor", "--model", "vendor-badnets"], "8080", "9000"),
        (["zipgate", "demo-vendor", "--port", "9100"], "8080", "9100"),
        ([], "8124", "8124"),  # /proc/1/cmdline unreadable
    ],
)
def test_healthcheck_probes_the_port_the_container_command_listens_on(
    command: list[str], env_port: str | None, port: str
) -> None:
    module = _healthcheck_module()
    env = {} if env_port is None else {"ZIPGATE_PORT": env_port}
    assert module.default_url(command, env) == f"http://127.0.0.1:{port}/healthz"


def test_healthcheck_knows_the_demo_vendors_default_port() -> None:
    import typer

    from service.cli import app

    command = typer.main.get_command(app).commands["demo-vendor"]  # type: ignore[attr-defined]
    (port,) = [param for param in command.params if param.name == "port"]
    assert str(port.default) == _healthcheck_module().DEMO_VENDOR_PORT


@pytest.fixture(scope="module")
def healthcheck_urls() -> Iterator[dict[str, str]]:
    with (
        serve_asgi(StaticApp(200, b'{"status":"ok"}')) as ok,
        serve_asgi(StaticApp(503)) as not_ready,
        refused_port() as refused,
    ):
        yield {"ok": ok, "503": not_ready, "refused": refused}


@pytest.mark.parametrize(("server", "exit_code"), [("ok", 0), ("503", 1), ("refused", 1)])
def test_healthcheck_script_exit_codes(healthcheck_urls: dict[str, str], server: str, exit_code: int) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "docker" / "healthcheck.py"), f"{healthcheck_urls[server]}/healthz"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == exit_code, result.stderr


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative, '/'-separated) out of the build context: the last
    pattern matching the path or one of its parent directories wins; '!' re-includes."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip().strip("/")
        regex = "".join(
            ".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
            for tok in re.split(r"(\*\*|\*|\?)", pattern)
        )
        regex = regex.replace(".*/", "(.*/)?")  # '**/' also matches no directory at all
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_dockerfile_copies_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    sources = []
    for stage in dockerfile_stages().values():
        for instruction in stage:
            if instruction["instruction"] == "COPY" and "--from=" not in instruction["value"]:
                sources.extend(shlex.split(instruction["value"])[:-1])
    assert {"service", "models", "pyproject.toml"} <= set(sources)
    copied_files = []
    for source in sources:
        path = REPO / source
        if source == "README.md" and not path.exists():
            continue  # written by another change; pip needs it (pyproject's readme) at build time
        assert path.exists(), f"COPY source {source} does not exist"
        files = (
            [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
        copied_files.extend(p.relative_to(REPO).as_posix() for p in files)
    kept = [f for f in copied_files if dockerignore_excludes(f, patterns)]
    assert not kept, f".dockerignore drops files the Dockerfile copies: {kept[:5]}"
    for unwanted in (
        ".venv/bin/python",
        ".git/HEAD",
        ".cache/ddpm-checkpoint/state.pt",
        "tests/test_zip.py",
        "service/__pycache__/cli.cpython-311.pyc",
        "models/fmnist-ddpm/__pycache__/x.pyc",
    ):
        assert dockerignore_excludes(unwanted, patterns), f"{unwanted} would be sent to the Docker daemon"


def cli_commands() -> dict[str, set[str]]:
    """The `zipgate` CLI's commands, each with its option names."""
    import typer

    from service.cli import app

    group = typer.main.get_command(app)
    return {name: {opt for param in command.params for opt in param.opts} for name, command in group.commands.items()}  # type: ignore[attr-defined]


def test_commands_the_containers_run_exist_in_the_cli(rendered: dict) -> None:
    commands = cli_commands()
    invocations = [json_list(DockerfileParser(path=str(DOCKERFILE)).structure, "CMD")]
    invocations += [
        service["command"]
        for service in load_compose()["services"].values()
        if service.get("image", "").startswith("${ZIPGATE_IMAGE")
    ]
    invocations += [gateway_container(objects)["args"] for objects in rendered.values()]
    for argv in invocations:
        name, options = argv[0], {arg for arg in argv[1:] if arg.startswith("--")}
        assert name in commands, f"`zipgate {name}` does not exist (commands: {sorted(commands)})"
        assert options <= commands[name], f"`zipgate {name}` has no {sorted(options - commands[name])}"


def json_list(structure: list[dict[str, Any]], instruction: str) -> list[str]:
    """The exec-form arguments of the last `instruction` (e.g. CMD) of a Dockerfile."""
    (value,) = [i["value"] for i in structure if i["instruction"] == instruction][-1:]
    return json.loads(value)


# --- Compose -------------------------------------------------------------------------------------


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=["main", "gpu"])
def test_compose_files_match_the_compose_specification(path: Path) -> None:
    result = subprocess.run(
        [_bin("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_stack_is_wired_with_health_checks(clean_env: pytest.MonkeyPatch) -> None:
    services = load_compose()["services"]
    assert set(services) == {"gateway", "vendor", "prometheus", "grafana"}
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", f"{name} has no exec-form health check"
    assert services["gateway"]["depends_on"]["vendor"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert "/readyz" in services["gateway"]["healthcheck"]["test"][-1]
    assert services["vendor"]["command"][0] == "demo-vendor" and "vendor-badnets" in " ".join(
        services["vendor"]["command"]
    )
    env = {name: interpolate(str(value)) for name, value in services["gateway"]["environment"].items()}
    settings = settings_from_env(env, clean_env)
    upstream_port = services["vendor"]["command"][services["vendor"]["command"].index("--port") + 1]
    assert settings.upstream_url == f"http://vendor:{upstream_port}"
    stop_grace_s = float(services["gateway"]["stop_grace_period"].rstrip("s"))
    assert services["gateway"]["stop_signal"] == "SIGTERM"
    assert stop_grace_s >= settings.drain_timeout_s + LAST_BATCH_MARGIN_S
    for service in services.values():
        for published in service.get("ports", []):
            assert published.startswith("127.0.0.1:"), f"{published}: publish on loopback unless told otherwise"


def test_every_stop_timeout_the_docs_give_is_the_compose_grace_period() -> None:
    grace_s = load_compose()["services"]["gateway"]["stop_grace_period"].rstrip("s")
    for path in (DOCKERFILE, REPO / "docs" / "deployment.md"):
        timeouts = set(re.findall(r"docker stop -t (\d+)", path.read_text()))
        assert timeouts == {grace_s}, f"{path.name}: docker stop -t {sorted(timeouts)}, compose waits {grace_s} s"


def test_compose_holds_no_secrets() -> None:
    text = COMPOSE.read_text() + COMPOSE_GPU.read_text()
    for match in re.finditer(r"^\s*([A-Z0-9_]*(?:KEY|PASSWORD|TOKEN|SECRET)[A-Z0-9_]*):\s*(.*)$", text, re.M):
        name, value = match.groups()
        assert re.fullmatch(r"\$\{[A-Z0-9_]+(:?-)?\}", value.strip().strip('"')), (
            f"{name} must come from the environment (${{VAR}} / ${{VAR:-}}), not a literal: {value}"
        )
    assert "ZIPGATE_API_KEY" in text


def test_grafana_is_an_anonymous_read_only_viewer_with_the_dashboard_provisioned() -> None:
    grafana = load_compose()["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_AUTH_DISABLE_LOGIN_FORM"] == "true" and env["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"] if volume.startswith("./"))
    for source in mounts:
        assert (REPO / source).is_dir(), source
    provider = yaml.safe_load((REPO / "docker/grafana/provisioning/dashboards/zipgate.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert mounts["./docker/grafana/dashboards"] == dashboards_dir
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dashboards_dir}/zipgate.json"
    (datasource,) = yaml.safe_load((REPO / "docker/grafana/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    (variable,) = [v for v in load_dashboard()["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == datasource["uid"] and variable["query"] == datasource["type"]
    prometheus_port = load_compose()["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"


def test_gpu_override_reserves_gpus_for_the_cuda_gateway(clean_env: pytest.MonkeyPatch) -> None:
    gateway = load_compose(COMPOSE_GPU)["services"]["gateway"]
    (device,) = gateway["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gateway["build"]["args"]["VARIANT"] == "cuda"
    merged = {**load_compose()["services"]["gateway"]["environment"], **gateway["environment"]}
    settings = settings_from_env({k: interpolate(str(v)) for k, v in merged.items()}, clean_env)
    assert settings.devices == "auto"


# --- Prometheus and Grafana ---------------------------------------------------------------------------


def test_prometheus_config_is_valid_and_scrapes_the_gateway_service() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "zipgate"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    gateway = load_compose()["services"][host]
    assert gateway["ports"][0].endswith(f":{port}") and job.get("metrics_path", "/metrics") == "/metrics"


def test_every_dashboard_query_names_only_metrics_the_gateway_exports(exported_names: set[str]) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    known = exported_names | recorded_metric_names()  # the rule file's recorded series are Prometheus's own
    for query in queries:
        names = promql_metric_names(to_promql(query.expr))
        assert names, f"{query.panel}: no metric in {query.expr!r}"
        assert names <= known, f"{query.panel}: {sorted(names - known)} are neither exported nor recorded"


def test_promql_metric_names_sees_through_functions_and_matchers() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, stage) (rate(zipgate_x_bucket{stage=~"a|b", le!="1e3"}[5m]))) '
        "/ on (pod) group_left zipgate_y or vector(0)"
    )
    assert promql_metric_names(expr) == {"zipgate_x_bucket", "zipgate_y"}
    assert promql_metric_names("sum(rate(zipgate_typo_total[1m]))") == {"zipgate_typo_total"}


def test_dashboard_covers_what_operators_need(exported_names: set[str]) -> None:
    queries = dashboard_queries()
    used = set().union(*(promql_metric_names(to_promql(q.expr)) for q in queries))
    for metric in (
        "zipgate_requests_total",
        "zipgate_stage_duration_seconds_bucket",
        "zipgate_queue_depth",
        "zipgate_batch_size_bucket",
        "zipgate_images_purified_total",
        "zipgate_upstream_duration_seconds_bucket",
        "zipgate_upstream_requests_total",
        "zipgate_dropped_images_total",
        "zipgate_shadow_disagreements_total",
        "zipgate_shadow_comparisons_total",
    ):
        assert metric in used, f"no panel shows {metric}"
    exprs = " ".join(q.expr for q in queries)
    assert "429" in exprs and all(f"histogram_quantile({q}," in exprs for q in ("0.5", "0.95", "0.99"))
    # `or vector(0)` hides a broken query behind a flat zero: only rare-event counters may use it.
    padded = {
        promql_metric_names(q.expr.removesuffix(RARE_EVENT_SUFFIX)).pop()
        for q in queries
        if q.expr.endswith(RARE_EVENT_SUFFIX)
    }
    # Shadow disagreements are rare events too: a (raw, purified) series is born at its first disagreement.
    assert padded == {"zipgate_oom_splits_total", "zipgate_batch_failures_total", "zipgate_shadow_disagreements_total"}
    for panel in load_dashboard()["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
