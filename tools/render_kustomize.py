"""Render a kustomize directory offline, for the subset of kustomize that zipgate's `k8s/` uses.

`kubectl kustomize` is not installed where the tests run, so this renders a base, its components
and an overlay into plain objects that the tests then validate. It does what `kustomize build`
does for the features below and refuses every other kustomization field with a message (a
silently ignored field would make the rendered output, and so the tests, lie):

- `resources`: YAML files (one or many documents) and directories holding a kustomization;
- `components`: directories holding a `kind: Component` kustomization; a component's resources
  join the including kustomization's, then its transformers run on everything accumulated so far;
- `patches`: strategic-merge patches, from a file (`path`) or inline (`patch`), matched by kind
  and name, or by an explicit `target` (kind, name, namespace, group, version);
- `labels`: `pairs` added to `metadata.labels` (and with `includeTemplates`, to pod templates);
  `includeSelectors: true` is refused: selectors are written out in the base on purpose;
- `namespace`: set on every namespaced object;
- `images`: `name` → `newName` / `newTag` / `digest` in `containers` and `initContainers`.

Order, as in kustomize: resources, components, then this kustomization's patches, labels,
namespace and images. Output order is kustomize's "legacy" kind order (namespaces and config
before workloads).

Usage:
    python tools/render_kustomize.py k8s/overlays/cpu > cpu.yaml
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZE_API_VERSIONS = ("kustomize.config.k8s.io/v1beta1", "kustomize.config.k8s.io/v1alpha1")
SUPPORTED_FIELDS = frozenset(
    {"apiVersion", "kind", "metadata", "resources", "components", "patches", "labels", "namespace", "images"})
# Kinds without a namespace (the ones a deployment repository plausibly holds).
CLUSTER_SCOPED_KINDS = frozenset({
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume",
    "StorageClass", "PriorityClass", "IngressClass", "RuntimeClass", "APIService",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "ClusterIssuer",
})
# kustomize's legacy output order; kinds not listed follow, in input order.
LEGACY_ORDER = (
    "Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
    "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap", "Secret",
    "Endpoints", "Service", "LimitRange", "PriorityClass", "PersistentVolume", "PersistentVolumeClaim",
    "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget",
)
# Strategic-merge list keys (Kubernetes' patchMergeKey) by field name; other lists are replaced.
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
    "volumes": "name", "volumeMounts": "mountPath", "imagePullSecrets": "name", "hostAliases": "ip",
}
PORT_MERGE_KEYS = ("containerPort", "port")  # container ports, then Service ports
POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})
UNSUPPORTED_DIRECTIVES = ("$setElementOrder", "$retainKeys", "$deleteFromPrimitiveList")
_IMAGE_PATTERN = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>\S+))?$")

Resource = dict[str, Any]


class KustomizeError(ValueError):
    """The kustomization is invalid or uses a feature this renderer does not implement."""


@dataclass(frozen=True)
class ResourceId:
    """What identifies an object for patching and duplicate checks: group/kind, namespace, name."""

    api_group: str
    kind: str
    name: str
    namespace: str | None

    @classmethod
    def of(cls, resource: Resource) -> ResourceId:
        """The id of one object (the group is the apiVersion without its version)."""
        api_version = str(resource.get("apiVersion", ""))
        group = api_version.rpartition("/")[0]
        metadata = resource.get("metadata") or {}
        return cls(group, str(resource.get("kind", "")), str(metadata.get("name", "")), metadata.get("namespace"))

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind}.{self.api_group or 'core'} {where}{self.name}"


def render(directory: Path | str) -> list[Resource]:
    """Build a kustomization directory into its objects, like `kustomize build DIR`.

    Args:
        directory: a directory holding `kustomization.yaml` (kind Kustomization).

    Returns:
        The rendered objects, in kustomize's legacy kind order.

    Raises:
        KustomizeError: a missing file, a bad field, a duplicate object, a patch that matches
            nothing, or a kustomize feature this renderer does not implement.
    """
    resources = _build(Path(directory), expect_kind="Kustomization", visiting=())
    _check_unique(resources)
    return _legacy_sorted(resources)


def render_yaml(directory: Path | str) -> str:
    """`render` as one multi-document YAML string."""
    return yaml.safe_dump_all(render(directory), sort_keys=False, default_flow_style=False)


def _build(directory: Path, expect_kind: str, visiting: tuple[Path, ...]) -> list[Resource]:
    directory = directory.resolve()
    if directory in visiting:
        chain = " -> ".join(str(p) for p in (*visiting, directory))
        raise KustomizeError(f"kustomization cycle: {chain}")
    visiting = (*visiting, directory)
    spec = _read_kustomization(directory, expect_kind)
    resources: list[Resource] = []
    for entry in spec.get("resources") or []:
        resources.extend(_load_resource_entry(directory, entry, visiting))
    for entry in spec.get("components") or []:
        resources = _apply_component(directory / entry, resources, visiting)
    _check_unique(resources)
    return _transform(directory, spec, resources)


def _apply_component(directory: Path, resources: list[Resource], visiting: tuple[Path, ...]) -> list[Resource]:
    """A component adds its resources, then runs its own transformers over everything so far."""
    spec = _read_kustomization(directory, "Component")
    accumulated = list(resources)
    for entry in spec.get("resources") or []:
        accumulated.extend(_load_resource_entry(directory.resolve(), entry, (*visiting, directory.resolve())))
    for entry in spec.get("components") or []:
        accumulated = _apply_component(directory / entry, accumulated, visiting)
    return _transform(directory, spec, accumulated)


def _transform(directory: Path, spec: dict[str, Any], resources: list[Resource]) -> list[Resource]:
    for patch_entry in spec.get("patches") or []:
        _apply_patch_entry(directory, patch_entry, resources)
    for label_entry in spec.get("labels") or []:
        _apply_labels(label_entry, resources, directory)
    if spec.get("namespace"):
        _apply_namespace(str(spec["namespace"]), resources)
    for image_entry in spec.get("images") or []:
        _apply_image(image_entry, resources, directory)
    return resources


def _read_kustomization(directory: Path, expect_kind: str) -> dict[str, Any]:
    found = [directory / name for name in KUSTOMIZATION_FILES if (directory / name).is_file()]
    if not found:
        raise KustomizeError(f"{directory}: no kustomization.yaml (expected one of {', '.join(KUSTOMIZATION_FILES)})")
    if len(found) > 1:
        raise KustomizeError(f"{directory}: more than one kustomization file: {[p.name for p in found]}")
    spec = yaml.safe_load(found[0].read_text(encoding="utf-8")) or {}
    if not isinstance(spec, dict):
        raise KustomizeError(f"{found[0]}: must be a mapping")
    kind = spec.get("kind", "Kustomization")
    if kind != expect_kind:
        raise KustomizeError(f"{found[0]}: kind is {kind!r}, expected {expect_kind!r} here "
                             "(resources and overlays are Kustomizations, components are Components)")
    if spec.get("apiVersion", KUSTOMIZE_API_VERSIONS[0]) not in KUSTOMIZE_API_VERSIONS:
        raise KustomizeError(f"{found[0]}: apiVersion {spec.get('apiVersion')!r} is not a kustomize API version")
    unsupported = sorted(set(spec) - SUPPORTED_FIELDS)
    if unsupported:
        raise KustomizeError(f"{found[0]}: field(s) {unsupported} are not implemented by tools/render_kustomize.py; "
                             f"use only {sorted(SUPPORTED_FIELDS - {'apiVersion', 'kind', 'metadata'})} or extend it")
    return spec


def _load_resource_entry(directory: Path, entry: Any, visiting: tuple[Path, ...]) -> list[Resource]:
    if not isinstance(entry, str) or "://" in entry or entry.startswith("github.com/"):
        raise KustomizeError(f"{directory}: resource {entry!r} must be a local file or directory (no remote bases)")
    path = directory / entry
    if path.is_dir():
        return _build(path, expect_kind="Kustomization", visiting=visiting)
    if not path.is_file():
        raise KustomizeError(f"{directory}: resource {entry!r} does not exist")
    return _read_objects(path)


def _read_objects(path: Path) -> list[Resource]:
    objects = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    for doc in objects:
        if not isinstance(doc, dict) or not doc.get("kind") or not (doc.get("metadata") or {}).get("name"):
            raise KustomizeError(f"{path}: every document must be an object with kind and metadata.name")
        if doc["kind"].endswith("List"):
            raise KustomizeError(f"{path}: List kinds are not supported; write one document per object")
    return objects


def _check_unique(resources: list[Resource]) -> None:
    seen: set[ResourceId] = set()
    for resource in resources:
        rid = ResourceId.of(resource)
        if rid in seen:
            raise KustomizeError(f"may not add resource with an already registered id: {rid}")
        seen.add(rid)


def _legacy_sorted(resources: list[Resource]) -> list[Resource]:
    rank = {kind: i for i, kind in enumerate(LEGACY_ORDER)}
    return sorted(resources, key=lambda r: rank.get(r["kind"], len(LEGACY_ORDER)))  # stable: input order within a kind


# --- patches -------------------------------------------------------------------------------


def _apply_patch_entry(directory: Path, entry: Any, resources: list[Resource]) -> None:
    if not isinstance(entry, dict) or ("path" in entry) == ("patch" in entry):
        raise KustomizeError(f"{directory}: each patch needs exactly one of 'path' or 'patch', got {entry!r}")
    unknown = sorted(set(entry) - {"path", "patch", "target"})
    if unknown:
        raise KustomizeError(f"{directory}: patch options {unknown} are not implemented")
    text = (directory / entry["path"]).read_text(encoding="utf-8") if "path" in entry else entry["patch"]
    documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    for patch in documents:
        if not isinstance(patch, dict):
            raise KustomizeError(f"{directory}: only strategic-merge patches are implemented (a mapping with kind "
                                 f"and metadata.name); JSON 6902 operation lists are not: {entry!r}")
        targets = _patch_targets(patch, entry.get("target"), resources)
        if not targets:
            raise KustomizeError(f"{directory}: patch {entry.get('path') or _describe(patch)} matches no resource")
        for index in targets:
            merged = strategic_merge(resources[index], _without_identity(patch) if entry.get("target") else patch)
            resources[index] = merged


def _describe(patch: Resource) -> str:
    return f"{patch.get('kind')}/{(patch.get('metadata') or {}).get('name')}"


def _without_identity(patch: Resource) -> Resource:
    """With an explicit target the patch's own kind/name only describe it; they must not rename."""
    stripped = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
    if "metadata" in stripped:
        stripped["metadata"] = {k: v for k, v in stripped["metadata"].items() if k not in ("name", "namespace")}
    return stripped


def _patch_targets(patch: Resource, target: dict[str, Any] | None, resources: list[Resource]) -> list[int]:
    if target is None:
        if not patch.get("kind") or not (patch.get("metadata") or {}).get("name"):
            raise KustomizeError(f"a patch without a target needs kind and metadata.name: {patch!r}")
        wanted = ResourceId.of(patch)
        return [i for i, r in enumerate(resources)
                if _matches(ResourceId.of(r), kind=wanted.kind, name=wanted.name, namespace=wanted.namespace,
                            group=wanted.api_group if patch.get("apiVersion") else None)]
    unknown = sorted(set(target) - {"kind", "name", "namespace", "group", "version"})
    if unknown:
        raise KustomizeError(f"patch target fields {unknown} are not implemented (labelSelector, "
                             "annotationSelector): target by kind and name")
    return [i for i, r in enumerate(resources)
            if _matches(ResourceId.of(r), kind=target.get("kind"), name=target.get("name"),
                        namespace=target.get("namespace"), group=target.get("group"))
            and (target.get("version") is None or str(r.get("apiVersion", "")).endswith("/" + target["version"])
                 or r.get("apiVersion") == target["version"])]


def _matches(rid: ResourceId, *, kind: str | None, name: str | None, namespace: str | None,
             group: str | None) -> bool:
    return ((kind is None or rid.kind == kind) and (name is None or re.fullmatch(name, rid.name) is not None)
            and (namespace is None or rid.namespace == namespace) and (group is None or rid.api_group == group))


def strategic_merge(original: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes strategic-merge patch, the subset kustomize uses for overlays.

    Maps merge key by key (a null value deletes the key; `$patch: replace` replaces the map);
    lists of maps whose field has a merge key (`containers` by name, `volumeMounts` by
    mountPath, `ports` by containerPort or port, see MERGE_KEYS) merge item by item (an item
    with `$patch: delete` removes its match); every other list and scalar is replaced.

    Args:
        original: the object (not modified).
        patch: the patch.
        field: the name of the field being merged (chooses the list merge key).

    Returns:
        The merged copy.

    Raises:
        KustomizeError: a patch directive this implementation does not know.
    """
    if isinstance(patch, dict):
        for directive in UNSUPPORTED_DIRECTIVES:
            if any(key.startswith(directive) for key in patch):
                raise KustomizeError(f"strategic-merge directive {directive} is not implemented")
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        if "$patch" in patch:
            raise KustomizeError(f"'$patch: {patch['$patch']}' on a map is not implemented (only 'replace')")
        if not isinstance(original, dict):
            return _strip_directives(patch)
        merged = copy.deepcopy(original)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = strategic_merge(None, value, key)
        return merged
    if isinstance(patch, list):
        merge_key = _list_merge_key(field, original, patch)
        if merge_key is None or not isinstance(original, list):
            return [_strip_directives(item) for item in patch]
        return _merge_keyed_list(original, patch, merge_key, field)
    return copy.deepcopy(patch)


def _list_merge_key(field: str, original: Any, patch: list[Any]) -> str | None:
    items = (original if isinstance(original, list) else []) + patch
    if not items or not all(isinstance(item, dict) for item in items):
        return None  # lists of scalars are replaced, as in Kubernetes
    if field == "ports":
        return next((key for key in PORT_MERGE_KEYS if all(key in item for item in items)), None)
    return MERGE_KEYS.get(field)


def _merge_keyed_list(original: list[Any], patch: list[Any], merge_key: str, field: str) -> list[Any]:
    merged = copy.deepcopy(original)
    for item in patch:
        if merge_key not in item:
            raise KustomizeError(f"an item of list '{field}' in a patch lacks its merge key '{merge_key}': {item!r}")
        position = next((i for i, old in enumerate(merged) if old.get(merge_key) == item[merge_key]), None)
        if item.get("$patch") == "delete":
            if position is not None:
                merged.pop(position)
            continue
        if position is None:
            merged.append(_strip_directives(item))
        else:
            merged[position] = strategic_merge(merged[position], item, field)
    return merged


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if k != "$patch" and v is not None}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


# --- labels, namespace, images ----------------------------------------------------------------


def _apply_labels(entry: Any, resources: list[Resource], directory: Path) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("pairs"), dict):
        raise KustomizeError(f"{directory}: each labels entry needs a 'pairs' mapping, got {entry!r}")
    unknown = sorted(set(entry) - {"pairs", "includeSelectors", "includeTemplates"})
    if unknown:
        raise KustomizeError(f"{directory}: labels options {unknown} are not implemented")
    if entry.get("includeSelectors"):
        raise KustomizeError(f"{directory}: labels with includeSelectors: true are not implemented; selectors are "
                             "immutable on Deployments, so write them out in the base")
    pairs = {str(k): str(v) for k, v in entry["pairs"].items()}
    for resource in resources:
        resource.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if entry.get("includeTemplates") and resource["kind"] in POD_TEMPLATE_KINDS:
            template = resource.setdefault("spec", {}).setdefault("template", {})
            template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _apply_namespace(namespace: str, resources: list[Resource]) -> None:
    for resource in resources:
        if resource["kind"] not in CLUSTER_SCOPED_KINDS:
            resource.setdefault("metadata", {})["namespace"] = namespace


def _apply_image(entry: Any, resources: list[Resource], directory: Path) -> None:
    if not isinstance(entry, dict) or "name" not in entry:
        raise KustomizeError(f"{directory}: each images entry needs a 'name', got {entry!r}")
    unknown = sorted(set(entry) - {"name", "newName", "newTag", "digest"})
    if unknown:
        raise KustomizeError(f"{directory}: images options {unknown} are not implemented")
    for container in _containers(resources):
        image = str(container.get("image", ""))
        parsed = _IMAGE_PATTERN.match(image)
        if parsed is None or parsed["name"] != entry["name"]:
            continue
        name = entry.get("newName", parsed["name"])
        if "digest" in entry:
            container["image"] = f"{name}@{entry['digest']}"
        else:
            tag = entry.get("newTag", parsed["tag"])
            digest = parsed["digest"] if "newTag" not in entry else None
            container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _containers(value: Any) -> Iterator[dict[str, Any]]:
    """Every container and init container anywhere in the objects (pod specs, templates, CRDs)."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key in ("containers", "initContainers") and isinstance(child, list):
                yield from (c for c in child if isinstance(c, dict))
            else:
                yield from _containers(child)
    elif isinstance(value, list):
        for child in value:
            yield from _containers(child)


def main(argv: list[str] | None = None) -> int:
    """Command line: render DIR to stdout as multi-document YAML."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a kustomization directory, e.g. k8s/overlays/cpu")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(render_yaml(args.directory))
    except KustomizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
