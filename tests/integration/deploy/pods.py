"""Rendered manifests -> processes on one machine, as a cluster would start them.

Each Deployment (and the Redis StatefulSet) of an overlay becomes one
process: its container's command and args, with the environment Kubernetes
would give it (the ConfigMap through ``envFrom``, the Secrets through
``secretKeyRef``, ``$(VAR)`` expanded). Only what a cluster provides and one
machine does not is translated, and each translation is mechanical, so any
disagreement between the manifests and the code still fails:

- **Network.** Every pod has its own network namespace in a cluster; here all
  share loopback, so each pod's ``containerPort`` gets a free loopback port of
  its own. A ``*_PORT`` variable with a number is that pod's port of that
  number (one no ``containerPort`` declares still gets a port, which nothing
  routes to). A ``<service>:<port>`` anywhere in a value (an address, a
  ``redis://`` URL) follows the Service: its ``port`` to its ``targetPort`` to
  the selected pod's ``containerPort``, to that pod's loopback port. A bind
  address ``0.0.0.0`` becomes ``127.0.0.1``.
- **Volumes.** Each mount path is a local folder: one per
  PersistentVolumeClaim (shared by every pod that mounts it, as the
  artifact volume is), one per emptyDir, and a Secret's items written as
  files (cert-manager's Certificate becomes a throwaway CA and a certificate
  for 127.0.0.1). A :class:`Launcher` decides how a pod sees them.
- **Images.** The image's programs (``python``, ``celery``, ``bitmesh``,
  ``redis-server``) are this machine's; files the Dockerfile copies to a path
  (the health check script) are read from the repository.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.unit.deploy.manifests import (
    DOCKER,
    REPO,
    Doc,
    component,
    configmap_data,
    containers,
    named,
    of_kind,
    pod_spec,
    pod_template,
)

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (an unknown name stays as written)."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return selector.items() <= labels.items()


@dataclass
class Pod:
    """One workload's container, ready to start."""

    name: str
    component: str
    image: str
    argv: list[str]
    env: dict[str, str]
    mounts: dict[str, Path]  # mount path in the container -> local folder
    workdir: Path
    container: Doc

    def port(self, container_port: int) -> int:
        """The loopback port this pod's ``container_port`` was given."""
        return int(self.env["__port_" + str(container_port)])


@dataclass
class Cluster:
    """An overlay's objects, with loopback ports and local volumes assigned."""

    docs: tuple[Doc, ...]
    root: Path
    ports: dict[tuple[str, int], int] = field(default_factory=dict)
    tls_files: dict[str, bytes] = field(default_factory=dict)

    # -- ports -------------------------------------------------------------
    def workloads(self) -> list[Doc]:
        return of_kind(self.docs, "Deployment", "StatefulSet")

    def port_of(self, workload: str, number: int) -> int:
        key = (workload, number)
        if key not in self.ports:
            self.ports[key] = free_port()
        return self.ports[key]

    def _container_port(self, workload: Doc, target: int | str) -> int | None:
        for container in containers(workload):
            for port in container.get("ports", []):
                if target in (port["containerPort"], port.get("name")):
                    return int(port["containerPort"])
        return None

    def service_target(self, service: str, port: int) -> int | None:
        """Where ``<service>:<port>`` lands: a pod's loopback port, or None."""
        services = [s for s in of_kind(self.docs, "Service") if s["metadata"]["name"] == service]
        if not services:
            return None
        (svc,) = services
        selected = [
            w
            for w in self.workloads()
            if _labels_match(svc["spec"]["selector"], pod_template(w)["metadata"]["labels"])
        ]
        if len(selected) != 1:
            return None
        for entry in svc["spec"]["ports"]:
            if int(entry["port"]) == port:
                number = self._container_port(selected[0], entry.get("targetPort", port))
                if number is None:
                    return None
                return self.port_of(selected[0]["metadata"]["name"], number)
        return None

    def _rewrite_hosts(self, value: str) -> str:
        names = "|".join(re.escape(s["metadata"]["name"]) for s in of_kind(self.docs, "Service"))
        if not names:
            return value
        pattern = re.compile(rf"(?<![\w.-])({names})(?:\.[a-z0-9-]+)*:(\d+)(?!\d)")

        def route(match: re.Match[str]) -> str:
            target = self.service_target(match.group(1), int(match.group(2)))
            return match.group(0) if target is None else f"127.0.0.1:{target}"

        return pattern.sub(route, value)

    # -- secrets and volumes -----------------------------------------------
    def secret_data(self, name: str) -> dict[str, bytes] | None:
        """A Secret's data as the overlay provides it, or None when it does not."""
        for secret in of_kind(self.docs, "Secret"):
            if secret["metadata"]["name"] == name:
                data = {k: base64.b64decode(v) for k, v in secret.get("data", {}).items()}
                data |= {k: v.encode() for k, v in secret.get("stringData", {}).items()}
                return data
        for cert in of_kind(self.docs, "Certificate"):
            if cert["spec"]["secretName"] == name:
                return self._tls()
        return None

    def _tls(self) -> dict[str, bytes]:
        if not self.tls_files:
            from tests.integration.security.certs import make_tls_files

            files = make_tls_files(self.root / "pki")
            self.tls_files = {
                "tls.crt": files.server_cert.read_bytes(),
                "tls.key": files.server_key.read_bytes(),
                "ca.crt": files.ca_cert.read_bytes(),
            }
        return self.tls_files

    def missing(self) -> list[str]:
        """What this overlay expects the cluster (or an operator) to supply."""
        gaps = []
        for workload in self.workloads():
            for container in containers(workload):
                limits = container.get("resources", {}).get("limits", {})
                if "nvidia.com/gpu" in limits:
                    gaps.append(f"{workload['metadata']['name']} needs a GPU")
                for item in container.get("env", []):
                    ref = item.get("valueFrom", {}).get("secretKeyRef")
                    if ref and self.secret_data(ref["name"]) is None:
                        gaps.append(f"Secret {ref['name']} comes from the operator")
        if not [w for w in self.workloads() if component(w) == "redis"]:
            gaps.append("Redis runs outside the overlay")
        return sorted(set(gaps))

    def _volumes(self, workload: Doc, container: Doc) -> dict[str, Path]:
        name = workload["metadata"]["name"]
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        for claim in workload["spec"].get("volumeClaimTemplates", []):
            claim_name = claim["metadata"]["name"]
            volumes[claim_name] = {"persistentVolumeClaim": {"claimName": f"{claim_name}-{name}"}}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                folder = self.root / "claims" / volume["persistentVolumeClaim"]["claimName"]
            elif "emptyDir" in volume:
                folder = self.root / "pods" / name / "empty" / mount["name"]
            elif "secret" in volume:
                folder = self.root / "pods" / name / "secrets" / mount["name"]
                data = self.secret_data(volume["secret"]["secretName"]) or {}
                folder.mkdir(parents=True, exist_ok=True)
                for item in volume["secret"].get("items", [{"key": k, "path": k} for k in data]):
                    (folder / item["path"]).write_bytes(data[item["key"]])
            else:
                raise AssertionError(f"{name}: volume {mount['name']} of an unknown kind")
            folder.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = folder
        return mounts

    # -- pods --------------------------------------------------------------
    def _env(self, workload: Doc, container: Doc) -> dict[str, str]:
        name = workload["metadata"]["name"]
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(named(self.docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = expand(str(item["value"]), env)
                continue
            ref = item["valueFrom"].get("secretKeyRef")
            if ref:
                data = self.secret_data(ref["name"])
                assert data is not None and ref["key"] in data, f"{name}: no secret {ref}"
                env[item["name"]] = data[ref["key"]].decode()
                continue
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = named(self.docs, "ConfigMap", ref["name"])["data"][ref["key"]]
        translated = {}
        for key, value in env.items():
            if key.endswith("_PORT") and value.isdigit():
                value = str(self.port_of(name, int(value)))
            elif value == "0.0.0.0":
                value = "127.0.0.1"
            translated[key] = self._rewrite_hosts(value)
        return translated

    def pod(self, workload: Doc) -> Pod:
        (container,) = pod_spec(workload)["containers"]
        name = workload["metadata"]["name"]
        env = self._env(workload, container)
        argv = [expand(a, env) for a in [*container.get("command", []), *container.get("args", [])]]
        for port in container.get("ports", []):
            number = int(port["containerPort"])
            env[f"__port_{number}"] = str(self.port_of(name, number))
        workdir = self.root / "pods" / name / "workdir"
        workdir.mkdir(parents=True, exist_ok=True)
        return Pod(
            name=name,
            component=component(workload),
            image=container["image"],
            argv=argv,
            env=env,
            mounts=self._volumes(workload, container),
            workdir=workdir,
            container=container,
        )

    def pods(self) -> list[Pod]:
        return [self.pod(w) for w in self.workloads()]

    def cron_pods(self) -> list[Pod]:
        """The CronJobs' containers, to be run once each."""
        found = []
        for cron in of_kind(self.docs, "CronJob"):
            (container,) = pod_spec(cron)["containers"]
            name = cron["metadata"]["name"]
            workdir = self.root / "pods" / name / "workdir"
            workdir.mkdir(parents=True, exist_ok=True)
            env = self._env(cron, container)
            found.append(
                Pod(
                    name=name,
                    component=component(cron),
                    image=container["image"],
                    argv=[
                        expand(a, env) for a in [*container["command"], *container.get("args", [])]
                    ],
                    env=env,
                    mounts=self._volumes(cron, container),
                    workdir=workdir,
                    container=container,
                )
            )
        return found

    def configmap(self) -> dict[str, str]:
        return configmap_data(self.docs)


# -- starting pods ------------------------------------------------------------
def _image_files(image: str) -> dict[str, Path]:
    """Files the image's Dockerfile copies from the repository to a fixed path."""
    name = image.split("/", 1)[-1].split(":")[0]
    dockerfile = DOCKER / f"{name}.Dockerfile"
    copied: dict[str, Path] = {}
    if dockerfile.is_file():
        for line in dockerfile.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["COPY"] and len(parts) == 3 and parts[2].startswith("/"):
                copied[parts[2]] = REPO / parts[1]
    return copied


# An image's programs, as this machine runs them.
PROGRAMS: dict[str, list[str]] = {
    "python": [sys.executable],
    "celery": [sys.executable, "-m", "celery"],
    "bitmesh": [sys.executable, "-m", "bitmesh.cli.main"],
}


class Launcher(Protocol):
    def start(self, pod: Pod, log: Path) -> subprocess.Popen[bytes]: ...
    def run(
        self, pod: Pod, argv: list[str], timeout: float
    ) -> subprocess.CompletedProcess[str]: ...


def _local_path(value: str, mounts: Mapping[str, Path], files: Mapping[str, Path]) -> str:
    if value in files:
        return str(files[value])
    for mount, folder in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if value == mount or value.startswith(mount + "/"):
            return str(folder) + value[len(mount) :]
    return value


class LocalLauncher:
    """Pods as processes of this machine, on this checkout's code."""

    def cleanup(self) -> None:
        pass

    def _base_env(self) -> dict[str, str]:
        # What the image provides besides the manifest: its PATH and Python
        # settings (the Dockerfiles' ENV); caches stay the machine's, warm.
        keep = ("PATH", "HOME", "XDG_CACHE_HOME", "LANG", "TMPDIR")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env |= {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        return env

    def _translate(self, pod: Pod, argv: list[str]) -> tuple[list[str], dict[str, str]]:
        files = _image_files(pod.image)
        env = self._base_env()
        for key, value in pod.env.items():
            if not key.startswith("__"):
                env[key] = _local_path(value, pod.mounts, files)
        program, *rest = argv
        if program in PROGRAMS:
            head = PROGRAMS[program]
        else:
            found = shutil.which(program)
            assert found, f"{pod.name}: {program} is not installed here"
            head = [found]
        return [*head, *(_local_path(a, pod.mounts, files) for a in rest)], env

    def start(self, pod: Pod, log: Path) -> subprocess.Popen[bytes]:
        argv, env = self._translate(pod, pod.argv)
        with log.open("ab") as out:
            return subprocess.Popen(
                argv, cwd=pod.workdir, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def run(self, pod: Pod, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        command, env = self._translate(pod, argv)
        return subprocess.run(
            command, cwd=pod.workdir, env=env, capture_output=True, text=True, timeout=timeout
        )


class ContainerLauncher:
    """Pods of bitmesh's images as containers of the local Docker engine, with
    the host's network (every port on loopback, as for the local processes),
    the manifests' user and a read-only root, and each mount a bind mount.
    Anything else (Redis, whose image is not built here) runs as a process."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.local = LocalLauncher()
        self.names: dict[str, str] = {}

    @staticmethod
    def handles(pod: Pod) -> bool:
        return pod.image.startswith("bitmesh/")

    def _docker_args(self, pod: Pod, name: str) -> list[str]:
        security = pod.container.get("securityContext", {})
        # No --init: in a pod the program is PID 1 too, and must handle SIGTERM itself.
        args = ["docker", "run", "--rm", "--name", name, "--network", "host"]
        user = security.get("runAsUser") or 10001
        args += ["--user", f"{user}:{user}"]
        if security.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        for mount_path, folder in pod.mounts.items():
            for path in [folder, *folder.rglob("*")]:
                path.chmod(0o777 if path.is_dir() else 0o644)
            args += ["-v", f"{folder}:{mount_path}"]
        for key, value in pod.env.items():
            if not key.startswith("__"):
                args += ["-e", f"{key}={value}"]
        return args

    def start(self, pod: Pod, log: Path) -> subprocess.Popen[bytes]:
        if not self.handles(pod):
            return self.local.start(pod, log)
        name = f"bitmesh-smoke-{self.run_id}-{pod.name}"
        self.names[pod.name] = name
        program, *rest = pod.argv
        argv = [*self._docker_args(pod, name), "--entrypoint", program, pod.image, *rest]
        with log.open("ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def run(self, pod: Pod, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        if not self.handles(pod):
            return self.local.run(pod, argv, timeout)
        if pod.name in self.names:  # an exec probe, inside the running container
            command = ["docker", "exec", self.names[pod.name], *argv]
        else:  # a CronJob's one run
            name = f"bitmesh-smoke-{self.run_id}-{pod.name}"
            program, *rest = argv
            command = [*self._docker_args(pod, name), "--entrypoint", program, pod.image, *rest]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def cleanup(self) -> None:
        for name in self.names.values():
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def engine_problem(images: list[str]) -> str | None:
    """Why the images cannot run here (no engine, an image not built), or None."""
    if shutil.which("docker") is None:
        return "no docker command (scripts/images.sh installs Debian's docker.io)"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"no Docker engine answers: {info.stderr.strip()[-200:]}"
    for image in images:
        found = subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, text=True, timeout=60
        )
        if found.returncode != 0:
            return f"image {image} is not built (scripts/images.sh builds it)"
    return None


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
