"""The manifests and the services agree: names, ports, probes, secrets, files.

Expected names come from :class:`bitmesh.settings.Settings` itself (its
fields and aliases), from the protos (health service names) and from
:mod:`bitmesh.jobs.plumbing` (Celery queues), never from a list kept here, so
renaming a setting or a queue without the manifests fails a test.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

import pytest
import yaml

from bitmesh.jobs.plumbing import TRAINING_QUEUES, WORKER_QUEUES, worker_queues_option
from bitmesh.rpc.server import refuse_insecure_bind
from bitmesh.settings import SERVICES, Settings
from tests.unit.deploy.manifests import (
    K8S,
    OVERLAYS,
    REPO,
    Doc,
    component,
    configmap_data,
    containers,
    env_of,
    named,
    of_kind,
    pod_spec,
    pod_template,
    proto_service_name,
    render,
    secret_refs,
    service_deployments,
    settings_env_names,
    settings_from_env,
    workloads,
)

pytestmark = pytest.mark.unit

# Environment variables in the manifests that are not bitmesh settings, each
# allowed only where it is read: by Redis itself, or by Celery.
FOREIGN_ENV = {
    "redis": {"REDIS_PASSWORD", "REDISCLI_AUTH"},
    "worker": {"REMAP_SIGTERM"},
}
# Workloads that serve no gRPC and call none, and so mount no TLS files (they
# still read the shared ConfigMap, which names them). The worker is one: it
# trains and runs proxy trials in-process and talks only to Redis, so a
# user's model running there cannot read the services' TLS key (issue 16).
NO_TLS = {"redis", "gc", "worker"}
# Secrets the operator provides to the overlays that do not generate them,
# with the keys read; docs/deploy.md must tell how to make each.
OPERATOR_SECRETS = {
    "bitmesh-auth": {"token"},
    "bitmesh-tenants": {"tokens"},
    "bitmesh-tls": {"tls.crt", "tls.key", "ca.crt"},
    "bitmesh-redis": {"password", "url", "address"},
}
CERT_MANAGER_KEYS = {"tls.crt", "tls.key", "ca.crt"}


def _container_env(docs: tuple[Doc, ...], container: Doc) -> dict[str, str]:
    """The environment a container starts with (secrets as placeholders)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(named(docs, "ConfigMap", ref["name"])["data"])
    for item in env_of(container):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            placeholder = f"<{ref['name']}/{ref['key']}>"
            if item["name"] == "REDIS_URL":
                placeholder = "redis://:secret@bitmesh-redis:6379/0"
            env[item["name"]] = placeholder
    return env


def _settings_of(docs: tuple[Doc, ...], container: Doc, mp: pytest.MonkeyPatch) -> Settings:
    return settings_from_env(_container_env(docs, container), mp)


def _health_port(settings: Settings) -> int:
    assert "health_port" in Settings.model_fields, (
        "the manifests set BITMESH_HEALTH_PORT (a plaintext health-only port for the "
        "kubelet's gRPC probes) but bitmesh.settings.Settings has no `health_port: int = 0`"
    )
    port: int = settings.health_port  # type: ignore[attr-defined]
    return port


def _port(container: Doc, name: str) -> int:
    (port,) = [p["containerPort"] for p in container.get("ports", []) if p["name"] == name]
    return int(port)


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> tuple[Doc, ...]:
    return render(request.param)


# -- names -----------------------------------------------------------------
def test_every_configmap_key_is_a_setting(docs: tuple[Doc, ...]) -> None:
    unknown = set(configmap_data(docs)) - settings_env_names()
    assert not unknown, f"ConfigMap keys that no Settings field reads: {sorted(unknown)}"


def test_every_env_var_is_a_setting_or_read_where_it_is_set(docs: tuple[Doc, ...]) -> None:
    known = settings_env_names()
    for workload in workloads(docs):
        allowed = known | FOREIGN_ENV.get(component(workload), set())
        for container in containers(workload):
            names = {e["name"] for e in env_of(container)}
            assert names <= allowed, (workload["metadata"]["name"], sorted(names - allowed))


def test_env_names_come_from_settings() -> None:
    """The expected names really are derived (and REDIS_URL keeps its name)."""
    names = settings_env_names()
    assert {"REDIS_URL", "BITMESH_AUTH_TOKEN", "BITMESH_SOLVER_PORT"} <= names
    assert len(names) >= len(Settings.model_fields)


def test_each_service_reads_its_settings_and_token(
    docs: tuple[Doc, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    deployments = service_deployments(docs)
    assert set(deployments) == set(SERVICES)
    for service, deployment in deployments.items():
        (container,) = containers(deployment)
        settings = _settings_of(docs, container, monkeypatch)
        assert settings.host == "0.0.0.0", service
        assert settings.auth_token, f"{service}: no token: authentication would be off"
        assert settings.tls_cert_file and settings.tls_key_file, f"{service}: TLS is off"
        assert settings.redis_url, service
        assert not settings.allow_insecure, f"{service}: BITMESH_ALLOW_INSECURE in a manifest"
        # The service would start, guarded (the token file is a mounted
        # Secret, not here: test_each_service_reads_a_mounted_token_file).
        refuse_insecure_bind(settings.model_copy(update={"token_file": None}))


# -- ports and probes ------------------------------------------------------
def test_service_ports_match_settings(
    docs: tuple[Doc, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    for service, deployment in service_deployments(docs).items():
        (container,) = containers(deployment)
        settings = _settings_of(docs, container, monkeypatch)
        assert container["command"] == ["python", "-m", f"{service}_svc"]
        assert _port(container, "grpc") == settings.port_of(service)
        assert _port(container, "metrics") == settings.metrics_port > 0
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(settings.metrics_port)
        svc = named(docs, "Service", deployment["metadata"]["name"])
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert ports["grpc"]["port"] == settings.port_of(service)
        assert ports["grpc"]["targetPort"] == "grpc"
        assert "health" not in ports, "the plaintext health port must not be exposed"


def test_probes_are_native_grpc_on_the_health_port(
    docs: tuple[Doc, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    for service, deployment in service_deployments(docs).items():
        (container,) = containers(deployment)
        health_port = _health_port(_settings_of(docs, container, monkeypatch))
        assert _port(container, "health") == health_port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == health_port, (service, probe)
        # Readiness asks for the service itself (NOT_SERVING on shutdown).
        assert container["readinessProbe"]["grpc"]["service"] == proto_service_name(service)
        assert container["livenessProbe"]["grpc"].get("service", "") == ""


def test_peer_addresses_point_at_the_services(
    docs: tuple[Doc, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    deployments = service_deployments(docs)
    (container,) = containers(deployments["solver"])
    settings = _settings_of(docs, container, monkeypatch)
    for service, deployment in deployments.items():
        host, _, port = settings.address_of(service).rpartition(":")
        svc = named(docs, "Service", host)
        assert svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert int(port) == settings.port_of(service)


# -- secrets and files -----------------------------------------------------
def test_referenced_secrets_exist_or_are_documented(docs: tuple[Doc, ...]) -> None:
    produced: set[tuple[str, str]] = set()
    for secret in of_kind(docs, "Secret"):
        keys = {*secret.get("data", {}), *secret.get("stringData", {})}
        produced |= {(secret["metadata"]["name"], k) for k in keys}
    for cert in of_kind(docs, "Certificate"):
        produced |= {(cert["spec"]["secretName"], k) for k in CERT_MANAGER_KEYS}
    guide = (REPO / "docs" / "deploy.md").read_text()
    for name, key in secret_refs(docs):
        if (name, key) in produced:
            continue
        assert key in OPERATOR_SECRETS.get(name, set()), f"secret {name}/{key} comes from nowhere"
        assert name in guide and key in guide, f"docs/deploy.md does not say how to make {name}"


def test_generated_redis_url_matches_the_password(docs: tuple[Doc, ...]) -> None:
    import base64

    secrets = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == "bitmesh-redis"]
    for secret in secrets:
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert f":{data['password']}@" in data["url"]
        assert data["url"].split("@")[1].startswith("bitmesh-redis:6379")


def test_tls_and_artifact_paths_are_mounted(
    docs: tuple[Doc, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    for workload in workloads(docs):
        if component(workload) == "redis":
            continue
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        (container,) = pod_spec(workload)["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        settings = _settings_of(docs, container, monkeypatch)
        tls_files = (settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
        if component(workload) in NO_TLS:
            mounted = {v.get("secret", {}).get("secretName") for v in volumes.values()}
            assert "bitmesh-tls" not in mounted, f"{component(workload)} mounts the TLS key"
        for path in () if component(workload) in NO_TLS else tls_files:
            assert path, "a TLS file setting is empty"
            folder, filename = posixpath.split(path)
            secret = volumes[mounts[folder]["name"]]["secret"]
            assert filename in {i["path"] for i in secret["items"]}
            assert mounts[folder]["readOnly"] is True
        artifacts = volumes[mounts[settings.artifact_root]["name"]]
        claim = artifacts["persistentVolumeClaim"]["claimName"]
        named(docs, "PersistentVolumeClaim", claim)


def test_each_service_reads_a_mounted_token_file(
    docs: tuple[Doc, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """BITMESH_TOKEN_FILE names a file of a mounted Secret (read-only) in every
    service, and no pod that serves no gRPC mounts the tenants' tokens."""
    for workload in workloads(docs):
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        if component(workload) in NO_TLS:
            mounted = {v.get("secret", {}).get("secretName") for v in volumes.values()}
            assert "bitmesh-tenants" not in mounted, f"{component(workload)} mounts the tokens"
            continue
        (container,) = containers(workload)
        settings = _settings_of(docs, container, monkeypatch)
        assert settings.token_file, f"{component(workload)}: no BITMESH_TOKEN_FILE"
        folder, filename = posixpath.split(settings.token_file)
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[folder]["readOnly"] is True
        secret = volumes[mounts[folder]["name"]]["secret"]
        assert filename in {i["path"] for i in secret["items"]}


# -- shutdown, limits, security --------------------------------------------
def test_grace_period_covers_the_drain(
    docs: tuple[Doc, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    for deployment in service_deployments(docs).values():
        (container,) = containers(deployment)
        settings = _settings_of(docs, container, monkeypatch)
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        period = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert period >= pre_stop + settings.grace_seconds + 5


def test_every_container_has_requests_and_limits(docs: tuple[Doc, ...]) -> None:
    for workload in workloads(docs):
        for container in containers(workload):
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), workload["metadata"]["name"]


def test_pods_run_locked_down(docs: tuple[Doc, ...]) -> None:
    for workload in workloads(docs):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec.get("automountServiceAccountToken") is False
        assert not any("hostPath" in v for v in spec.get("volumes", []))
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]


def test_only_the_mesh_may_reach_redis(docs: tuple[Doc, ...]) -> None:
    policies = [
        p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == "bitmesh-redis"
    ]
    redis = [w for w in workloads(docs) if component(w) == "redis"]
    assert len(policies) == len(redis), "an in-cluster Redis needs its NetworkPolicy"
    for policy, statefulset in zip(policies, redis, strict=True):
        labels = pod_template(statefulset)["metadata"]["labels"]
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector.items() <= labels.items()
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        pod_rules = [
            f["podSelector"]["matchLabels"]
            for rule in policy["spec"]["ingress"]
            for f in rule["from"]
            if "podSelector" in f
        ]
        assert len(pod_rules) == 1
        allowed = pod_rules[0].items()
        for workload in workloads(docs):
            pod_labels = pod_template(workload)["metadata"]["labels"].items()
            uses_redis = any(
                e["name"] == "REDIS_URL" for c in containers(workload) for e in env_of(c)
            )
            if component(workload) != "redis":
                assert (allowed <= pod_labels) == uses_redis, workload["metadata"]["name"]
        for rule in policy["spec"]["ingress"]:
            assert all(set(f) <= {"podSelector", "namespaceSelector"} for f in rule["from"])
            assert not any(f == {"namespaceSelector": {}} for f in rule["from"])


def test_redis_persists_with_aof(docs: tuple[Doc, ...]) -> None:
    for statefulset in of_kind(docs, "StatefulSet"):
        (container,) = containers(statefulset)
        args = container["args"]
        assert args[args.index("--appendonly") + 1] == "yes"
        assert "--requirepass" in args
        (claim,) = statefulset["spec"]["volumeClaimTemplates"]
        data_mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert data_mount[claim["metadata"]["name"]] == args[args.index("--dir") + 1]


_REDIS_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}
_K8S_UNITS = {
    "": 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
}


def _bytes(value: str, units: dict[str, int]) -> int:
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", value)
    assert match and match.group(2) in units, f"cannot read the size {value!r}"
    return int(match.group(1)) * units[match.group(2)]


def test_redis_has_a_maxmemory_under_its_limit_and_never_evicts(docs: tuple[Doc, ...]) -> None:
    for statefulset in of_kind(docs, "StatefulSet"):
        (container,) = containers(statefulset)
        args = container["args"]
        assert "--maxmemory" in args, "Redis without maxmemory grows until the kernel kills it"
        ceiling = _bytes(args[args.index("--maxmemory") + 1].lower(), _REDIS_UNITS)
        limit = _bytes(container["resources"]["limits"]["memory"], _K8S_UNITS)
        # Headroom for the AOF rewrite's fork, client buffers, fragmentation.
        assert 0 < ceiling <= 0.8 * limit, (ceiling, limit)
        # Any evicting policy could drop job records and queued tasks.
        assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


def test_redis_memory_alert_reads_metrics_the_services_export() -> None:
    from prometheus_client import CollectorRegistry

    from bitmesh.rpc.metrics import RedisMemoryCollector

    registry = CollectorRegistry()
    registry.register(RedisMemoryCollector(lambda: {"used_memory": 1, "maxmemory": 2}))
    exported = {m.name for m in registry.collect()}
    rules = [
        rule
        for rule_doc in of_kind(render("gpu"), "PrometheusRule")
        for group in rule_doc["spec"]["groups"]
        for rule in group["rules"]
    ]
    assert rules, "the gpu overlay has no alert on Redis' memory"
    for rule in rules:
        used = set(re.findall(r"bitmesh_[a-z_]+", rule["expr"]))
        assert used and used <= exported, (rule["alert"], sorted(used - exported))


def test_gc_runs_on_a_schedule_with_the_mesh_settings(
    docs: tuple[Doc, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitmesh.cli.main import build_parser

    cron_jobs = [w for w in of_kind(docs, "CronJob") if component(w) == "gc"]
    assert len(cron_jobs) == 1, "no CronJob runs `bitmesh gc`"
    (cron,) = cron_jobs
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = containers(cron)
    assert container["command"][:2] == ["bitmesh", "gc"]
    build_parser().parse_args(container["command"][1:])  # a command the CLI has
    settings = _settings_of(docs, container, monkeypatch)
    assert settings.redis_url, "gc would collect against an empty SQLite store"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert settings.artifact_root in mounts
    assert pod_spec(cron)["restartPolicy"] in {"OnFailure", "Never"}


# -- Celery workers --------------------------------------------------------
def _workers(docs: tuple[Doc, ...]) -> list[Doc]:
    found = [d for d in of_kind(docs, "Deployment") if component(d) == "worker"]
    assert found, "no Celery worker Deployment"
    return found


def _assert_consumes_worker_queues(command: list[str]) -> None:
    """A worker's command consumes exactly the declared WORKER_QUEUES, in order."""
    queues = [a.split("=", 1)[1] for a in command if a.startswith("--queues=")]
    assert queues == [",".join(WORKER_QUEUES)], (
        f"the worker consumes {queues}, but bitmesh/jobs/plumbing.py sends work to "
        f"{list(WORKER_QUEUES)}: say `{worker_queues_option()}`"
    )
    assert not {"-Q", "--queues", "-X", "--exclude-queues"} & set(command)


def _assert_scales_on_training_queues(scaled: Doc) -> None:
    """One Redis list trigger per declared training queue, in order."""
    triggers = scaled["spec"]["triggers"]
    assert all(t["type"] == "redis" for t in triggers)
    lists = [t["metadata"]["listName"] for t in triggers]
    assert lists == list(TRAINING_QUEUES), (
        f"KEDA scales on {lists}, but training work waits on {list(TRAINING_QUEUES)}"
    )


def test_workers_run_the_celery_app(docs: tuple[Doc, ...]) -> None:
    from celery import Celery

    for worker in _workers(docs):
        (container,) = containers(worker)
        command = container["command"]
        assert command[:4] == ["celery", "-A", "trainer_svc.celery_app", "worker"]
        module = Path(REPO, *command[2].split(".")).with_suffix(".py")
        assert module.is_file(), f"{module} does not exist"
        _assert_consumes_worker_queues(command)
        # Extra settings after `--` must be ones Celery knows.
        extra = command[command.index("--") + 1 :]
        parsed = Celery().loader.cmdline_config_parser(extra, namespace="worker")
        soft = float(parsed["worker_soft_shutdown_timeout"])
        assert pod_spec(worker)["terminationGracePeriodSeconds"] > soft
        assert {"name": "REMAP_SIGTERM", "value": "SIGQUIT"} in container["env"]


def test_gpu_workers_ask_for_gpus_only_in_gpu_overlays() -> None:
    for overlay in OVERLAYS:
        for worker in _workers(render(overlay)):
            (container,) = containers(worker)
            resources = container["resources"]
            gpus = resources["limits"].get("nvidia.com/gpu")
            spec = pod_spec(worker)
            if overlay.startswith("gpu"):
                assert gpus == resources["requests"]["nvidia.com/gpu"] == "1"
                assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
                    spec["tolerations"]
                )
            else:
                assert gpus is None and "nodeSelector" not in spec


def test_keda_scales_the_workers_on_their_queue() -> None:
    scaled_objects = 0
    for overlay in OVERLAYS:
        docs = render(overlay)
        for scaled in of_kind(docs, "ScaledObject"):
            scaled_objects += 1
            target = named(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
            assert component(target) == "worker"
            _assert_scales_on_training_queues(scaled)
            for trigger in scaled["spec"]["triggers"]:
                named(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
            # KEDA's operator must be let through to Redis, where Redis runs here.
            for policy in of_kind(docs, "NetworkPolicy"):
                if policy["metadata"]["name"] == "bitmesh-redis":
                    sources = [f for r in policy["spec"]["ingress"] for f in r["from"]]
                    assert any(
                        f.get("namespaceSelector", {})
                        .get("matchLabels", {})
                        .get("kubernetes.io/metadata.name")
                        == "keda"
                        for f in sources
                    )
    assert scaled_objects, "no overlay scales the workers (overlays/gpu's keda.yaml)"


def test_source_manifests_name_the_declared_queues() -> None:
    """The same checks on the files as written, so they run where no kustomize
    renders the overlays (the rendered tests above skip there)."""
    (worker,) = yaml.safe_load_all((K8S / "base" / "worker.yaml").read_text())
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    _assert_consumes_worker_queues(container["command"])
    keda = list(yaml.safe_load_all((K8S / "overlays" / "gpu" / "keda.yaml").read_text()))
    (scaled,) = [d for d in keda if d["kind"] == "ScaledObject"]
    _assert_scales_on_training_queues(scaled)
    guide = (REPO / "docs" / "deploy.md").read_text()
    assert worker_queues_option() in guide, "docs/deploy.md names other worker queues"
    assert all(f"`{queue}`" in guide for queue in WORKER_QUEUES)


def test_images_are_built_here_and_pinned(docs: tuple[Doc, ...]) -> None:
    for workload in workloads(docs):
        for container in containers(workload):
            image = container["image"]
            assert re.search(r":[0-9][\w.-]*$", image), f"{image} has no pinned version tag"
            if image.startswith("bitmesh/"):
                name = image.split("/", 1)[1].split(":")[0]
                dockerfile = REPO / "deploy" / "docker" / f"{name}.Dockerfile"
                assert dockerfile.is_file(), f"no Dockerfile builds {image}"
                text = dockerfile.read_text()
                command = container["command"]
                if command[0] == "celery":
                    module = command[2].split(".")[0]
                elif command[0] == "bitmesh":  # the CLI's console script
                    module = "bitmesh"
                else:
                    module = command[-1]
                assert f"COPY {module} ./{module}" in text, f"{dockerfile.name} lacks {module}"


#: The services that start a model sandbox child (bitmesh/models/sandbox/) on
#: the first .pt2 they are sent: all but the solver, which never reads a model.
SANDBOXED = ("sensitivity", "trainer", "proxy_nas")
#: What a service keeps for itself: the trainer's and proxy's limit before the
#: sandbox (measured: 0.92 GiB peak resident, torch imported and a resnet18
#: checked at submission; the rest is for larger architectures).
SERVICE_SHARE_BYTES = 2 * 1024**3
#: The child's resident memory after its imports, before any model (measured
#: 0.79 GiB with this torch; rounded up for other builds).
CHILD_IMPORTS_BYTES = 1024**3


def test_sandbox_fits_beside_each_service(
    docs: tuple[Doc, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod that runs the sandbox holds the service, the child's imports and
    the model budget the child may add (BITMESH_SANDBOX_MEMORY_BYTES), and
    the sensitivity pod its program analyses' children and spare too: a
    limit below that is an OOM kill of the whole pod (the service with it) on
    a large but allowed program, not the child's clean RESOURCE_EXHAUSTED."""
    deployments = service_deployments(docs)
    for service in SANDBOXED:
        (container,) = containers(deployments[service])
        settings = _settings_of(docs, container, monkeypatch)
        limit = _bytes(container["resources"]["limits"]["memory"], _K8S_UNITS)
        needed = SERVICE_SHARE_BYTES + CHILD_IMPORTS_BYTES + settings.sandbox_memory_bytes
        if service == "sensitivity":  # program analyses run in children of their own
            needed += settings.analysis_max_children * (
                CHILD_IMPORTS_BYTES + settings.analysis_memory_bytes
            )
            needed += CHILD_IMPORTS_BYTES if settings.analysis_spare_child else 0
        assert limit >= needed, (service, limit / 1024**3, needed / 1024**3)
