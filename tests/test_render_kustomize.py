"""tools/render_kustomize.py: the kustomize subset behaves as `kustomize build` does, and refuses the rest."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest
import yaml

from tools.render_kustomize import KustomizeError, main, render, strategic_merge

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      tolerations: [{key: a, operator: Exists}]
      containers:
        - name: main
          image: registry.local:5000/web:1.0
          env: [{name: A, value: "1"}, {name: B, value: "2"}]
          ports: [{name: http, containerPort: 8080}]
          resources: {requests: {cpu: "1"}}
        - name: sidecar
          image: sidecar:2
"""
CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {MODE: cpu, DEBUG: "0"}
"""
NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata: {name: apps}
"""


def write(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (relative path → text) under `root` and return `root`."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text))
    return root


def by_kind(objects: list[dict], kind: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(tmp_path, {
        "base/deployment.yaml": DEPLOYMENT,
        "base/all.yaml": CONFIGMAP + "---\n" + NAMESPACE,
        "base/kustomization.yaml": """\
            resources: [deployment.yaml, all.yaml]
            namespace: apps
        """,
    }) / "base"


def test_resources_namespace_and_legacy_order(base: Path) -> None:
    objects = render(base)
    assert [o["kind"] for o in objects] == ["Namespace", "ConfigMap", "Deployment"]
    assert "namespace" not in objects[0]["metadata"]  # cluster-scoped
    assert objects[1]["metadata"]["namespace"] == objects[2]["metadata"]["namespace"] == "apps"


def test_overlay_strategic_merge_patch(base: Path) -> None:
    overlay = write(base.parent, {
        "overlay/kustomization.yaml": """\
            resources: [../base]
            patches:
              - path: patch.yaml
              - patch: |
                  apiVersion: v1
                  kind: ConfigMap
                  metadata: {name: settings}
                  data: {MODE: gpu, DEBUG: null}
        """,
        "overlay/patch.yaml": """\
            apiVersion: apps/v1
            kind: Deployment
            metadata: {name: web}
            spec:
              template:
                spec:
                  tolerations: [{key: gpu, operator: Exists}]
                  containers:
                    - name: main
                      env: [{name: B, value: "20"}, {name: C, value: "3"}]
                      resources: {limits: {nvidia.com/gpu: 1}}
                    - name: sidecar
                      $patch: delete
        """,
    }) / "overlay"
    objects = render(overlay)
    pod = by_kind(objects, "Deployment")["spec"]["template"]["spec"]
    (main_container,) = pod["containers"]  # the sidecar was deleted by its merge key
    assert main_container["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "20"},
                                     {"name": "C", "value": "3"}]
    assert main_container["resources"] == {"requests": {"cpu": "1"}, "limits": {"nvidia.com/gpu": 1}}
    assert main_container["ports"] == [{"name": "http", "containerPort": 8080}]  # untouched
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]  # no merge key: replaced
    assert by_kind(objects, "ConfigMap")["data"] == {"MODE": "gpu"}  # null deletes the key
    assert by_kind(objects, "Deployment")["metadata"]["namespace"] == "apps"  # the base's transformers ran


def test_components_see_accumulated_resources_and_parent_patches_see_theirs(base: Path) -> None:
    root = write(base.parent, {
        "comp/kustomization.yaml": """\
            apiVersion: kustomize.config.k8s.io/v1alpha1
            kind: Component
            resources: [extra.yaml]
            patches:
              - patch: |
                  kind: ConfigMap
                  metadata: {name: settings}
                  data: {FROM_COMPONENT: "yes"}
            images:
              - {name: registry.local:5000/web, newTag: "2.0"}
        """,
        "comp/extra.yaml": """\
            apiVersion: v1
            kind: Service
            metadata: {name: web}
            spec: {selector: {app: web}, ports: [{port: 80}]}
        """,
        "overlay/kustomization.yaml": """\
            resources: [../base]
            components: [../comp]
            namespace: prod
            labels:
              - pairs: {tier: front}
                includeTemplates: true
            patches:
              - patch: |
                  apiVersion: v1
                  kind: Service
                  metadata: {name: web}
                  spec: {ports: [{port: 80, targetPort: http}]}
        """,
    })
    objects = render(root / "overlay")
    assert by_kind(objects, "ConfigMap")["data"]["FROM_COMPONENT"] == "yes"
    assert by_kind(objects, "Service")["spec"]["ports"] == [{"port": 80, "targetPort": "http"}]
    assert by_kind(objects, "Service")["metadata"]["namespace"] == "prod"  # overlay namespace wins
    deployment = by_kind(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local:5000/web:2.0"
    assert deployment["spec"]["template"]["spec"]["containers"][1]["image"] == "sidecar:2"
    assert deployment["metadata"]["labels"] == {"app": "web", "tier": "front"}
    assert deployment["spec"]["template"]["metadata"]["labels"] == {"app": "web", "tier": "front"}
    assert deployment["spec"]["selector"]["matchLabels"] == {"app": "web"}  # selectors untouched


def test_patch_with_target_applies_to_every_match(base: Path) -> None:
    overlay = write(base.parent, {"o/kustomization.yaml": """\
        resources: [../base]
        patches:
          - target: {kind: Deployment, name: "w.*"}
            patch: |
              kind: Deployment
              metadata: {name: ignored-with-a-target}
              spec: {replicas: 3}
    """}) / "o"
    deployment = by_kind(render(overlay), "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["metadata"]["name"] == "web"


@pytest.mark.parametrize(("kustomization", "message"), [
    ("resources: [../base]\ncommonLabels: {a: b}\n", "not implemented"),
    ("resources: [../base]\nlabels: [{pairs: {a: b}, includeSelectors: true}]\n", "includeSelectors"),
    ("resources: [../base]\npatches: [{patch: '[{op: add, path: /x, value: 1}]', target: {kind: Deployment}}]\n",
     "JSON 6902"),
    ('resources: [../base]\npatches: [{patch: "{kind: Deployment, metadata: {name: nope}}"}]\n', "matches no resource"),
    ("resources: [../base/deployment.yaml, ../base/deployment.yaml]\n", "already registered"),
    ("resources: [https://example.com/base]\n", "local file or directory"),
    ("resources: [missing.yaml]\n", "does not exist"),
    ("resources: [.]\n", "cycle"),
    ("kind: Component\nresources: [../base]\n", "expected 'Kustomization'"),
])
def test_refuses_what_it_does_not_implement(base: Path, kustomization: str, message: str) -> None:
    overlay = write(base.parent, {"bad/kustomization.yaml": kustomization}) / "bad"
    with pytest.raises(KustomizeError, match=message):
        render(overlay)


def test_strategic_merge_replace_directive_and_ports_by_port() -> None:
    assert strategic_merge({"a": {"x": 1, "y": 2}}, {"a": {"$patch": "replace", "z": 3}}) == {"a": {"z": 3}}
    service_ports = [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]
    assert strategic_merge({"ports": service_ports}, {"ports": [{"port": 443, "name": "tls"}]}) == {
        "ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "tls"}]}
    assert strategic_merge({"args": ["a", "b"]}, {"args": ["c"]}) == {"args": ["c"]}


def test_command_line_writes_multi_document_yaml(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(base)]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in documents] == ["Namespace", "ConfigMap", "Deployment"]
    assert main([str(base.parent / "nowhere")]) == 2
    assert "no kustomization.yaml" in capsys.readouterr().err
