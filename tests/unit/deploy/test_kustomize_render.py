"""Every overlay renders and every object is valid for Kubernetes 1.32.

Core kinds are validated strictly (unknown fields are errors) against the
OpenAPI schemas kubernetes-validate ships for that version; the custom
resources (cert-manager, KEDA) against the parts of their CRDs the manifests
use, since their schemas are not shipped offline.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.unit.deploy.manifests import K8S_SCHEMA_VERSION, OVERLAYS, Doc, of_kind, render

pytestmark = pytest.mark.unit

_REF = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("cert-manager.io/v1", "Issuer"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "selfSigned": {"type": "object"},
                    "ca": {
                        "type": "object",
                        "required": ["secretName"],
                        "properties": {"secretName": {"type": "string"}},
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            }
        },
    },
    ("cert-manager.io/v1", "Certificate"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["secretName", "issuerRef"],
                "properties": {
                    "secretName": {"type": "string"},
                    "isCA": {"type": "boolean"},
                    "commonName": {"type": "string"},
                    "duration": {"type": "string", "pattern": r"^\d+h$"},
                    "renewBefore": {"type": "string", "pattern": r"^\d+h$"},
                    "dnsNames": {"type": "array", "items": {"type": "string"}},
                    "ipAddresses": {"type": "array", "items": {"type": "string"}},
                    "usages": {
                        "type": "array",
                        "items": {"enum": ["server auth", "client auth", "digital signature"]},
                    },
                    "privateKey": {
                        "type": "object",
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "size": {"type": "integer"},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                        },
                        "additionalProperties": False,
                    },
                    "issuerRef": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                        },
                    },
                },
                "additionalProperties": False,
            }
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["alert", "expr"],
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "expr": {"type": "string"},
                                            "for": {"type": "string", "pattern": r"^\d+[smh]$"},
                                            "labels": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                            "annotations": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                        },
                                        "additionalProperties": False,
                                    },
                                },
                            },
                            "additionalProperties": False,
                        },
                    }
                },
                "additionalProperties": False,
            }
        },
    },
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "properties": {
                                "parameter": {"type": "string"},
                                "name": {"type": "string"},
                                "key": {"type": "string"},
                            },
                            "additionalProperties": False,
                        },
                    }
                },
                "additionalProperties": False,
            }
        },
    },
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": _REF,
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"type": "string"},
                                # KEDA trigger metadata values are all strings.
                                "metadata": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                                "authenticationRef": _REF,
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            }
        },
    },
}


def validate(doc: Doc) -> None:
    """Raise when ``doc`` is not a valid object of the stated Kubernetes version."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[key])
        return
    kubernetes_validate.validate(doc, K8S_SCHEMA_VERSION, strict=True)


def test_there_are_overlays_to_render() -> None:
    assert {"dev", "gpu"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid(overlay: str) -> None:
    docs = render(overlay)
    assert docs, f"overlay {overlay} rendered nothing"
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_names_are_unique_and_namespaced(overlay: str) -> None:
    docs = render(overlay)
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "two objects share a kind and name"
    (namespace,) = of_kind(docs, "Namespace")
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace["metadata"]["name"], doc["kind"]


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["spec"].update(replicas="one"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(portz=[]),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"].update(
            tls=True
        ),
    ],
    ids=["wrong-type", "unknown-field", "grpc-probe-has-no-tls"],
)
def test_validation_catches_a_broken_object(break_it: Any) -> None:
    """The checker can fail: a Deployment broken on purpose is refused."""
    (deployment, *_) = of_kind(render("dev"), "Deployment")
    broken = copy.deepcopy(deployment)
    validate(broken)
    break_it(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)


def test_crd_validation_catches_a_broken_object() -> None:
    (scaled,) = of_kind(render("gpu"), "ScaledObject")
    broken = copy.deepcopy(scaled)
    broken["spec"]["triggers"][0]["metadata"]["listLength"] = 1  # KEDA wants a string
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
