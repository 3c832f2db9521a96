"""The Dockerfiles, read statically (no Docker engine runs here).

Checked: pinned base image, non-root user, built-in health check, installs
pinned by requirements.lock and limited to bitmesh's extras, the ports the
services listen on, and, for real, that the solver image's install pulls no
torch (from the installed packages' metadata offline, and from pip's own
resolver against the package index).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bitmesh.settings import SERVICES, Settings
from tests.unit.deploy.manifests import DOCKER, REPO, of_kind, render

pytestmark = pytest.mark.unit

DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
TORCH_FAMILY = {"torch", "torchvision", "triton", "nvidia-cudnn-cu13", "nvidia-cublas"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    result = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
    return result


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :]


def pip_installs(instructions: list[Instruction]) -> list[str]:
    return [
        part.strip()
        for ins in instructions
        if ins.keyword == "RUN"
        for part in ins.args.split("&&")
        if part.strip().startswith("pip install")
    ]


def installed_extras(path: Path) -> set[str]:
    (install,) = pip_installs(parse(path))
    (target,) = re.findall(r'"\.\[([a-z_,]+)\]"', install)
    return set(target.split(","))


def test_there_are_three_images() -> None:
    assert {p.name for p in DOCKERFILES} == {
        "solver.Dockerfile",
        "ml.Dockerfile",
        "proxy-nas.Dockerfile",
    }


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_is_pinned(path: Path) -> None:
    instructions = parse(path)
    args = dict(
        ins.args.split("=", 1) for ins in instructions if ins.keyword == "ARG" and "=" in ins.args
    )
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", args["PYTHON_IMAGE"])
    stages: set[str] = set()
    for ins in instructions:
        if ins.keyword == "FROM":
            image, *rest = ins.args.split()
            assert image == "${PYTHON_IMAGE}" or image in stages, image
            if rest:
                stages.add(rest[-1])


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_a_non_root_user_with_a_health_check(path: Path) -> None:
    final = final_stage(parse(path))
    (user,) = [ins.args for ins in final if ins.keyword == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"USER {user} is not a numeric non-root id"
    (check,) = [ins.args for ins in final if ins.keyword == "HEALTHCHECK"]
    script = re.search(r"(/opt/bitmesh/\S+\.py)", check)  # not read here: inside the image
    assert script, check
    copies = [ins.args.split() for ins in final if ins.keyword == "COPY"]
    copied = {dest: src for *_, src, dest in copies}
    assert script.group(1) in copied
    assert (REPO / copied[script.group(1)]).is_file()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_installs_are_pinned_and_limited_to_bitmesh(path: Path) -> None:
    for install in pip_installs(parse(path)):
        assert "--constraint requirements.lock" in install, install
        words = [w for w in install.split()[2:] if not w.lstrip('"').startswith(("-", "$"))]
        targets = [w for w in words if w not in {"requirements.lock"}]
        assert len(targets) == 1 and re.fullmatch(r'"\.\[[a-z_,]+\]"', targets[0]), install
    extras = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    assert installed_extras(path) <= extras - {"all", "dev"}


def _served_by(path: Path) -> set[str]:
    """Services the manifests run from the image this Dockerfile builds."""
    image = f"bitmesh/{path.name.removesuffix('.Dockerfile')}"
    served = set()
    for deployment in of_kind(render("dev"), "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            command = container["command"]
            if container["image"].split(":")[0] == image and command[:2] == ["python", "-m"]:
                served.add(command[2].removesuffix("_svc"))
    return served


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_exposes_the_ports_of_its_services(path: Path) -> None:
    final = final_stage(parse(path))
    exposed = {int(p) for ins in final if ins.keyword == "EXPOSE" for p in ins.args.split()}
    served = _served_by(path)
    assert served and served <= set(SERVICES)
    defaults = Settings()
    assert exposed == {defaults.port_of(s) for s in served}  # type: ignore[arg-type]
    (cmd,) = [json.loads(ins.args) for ins in final if ins.keyword == "CMD"]
    assert cmd[:2] == ["python", "-m"] and cmd[2] in {f"{s}_svc" for s in served}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_lets_the_copied_sources_in(path: Path) -> None:
    ignore = Path(f"{path}.dockerignore").read_text().split()
    assert "**" in ignore, "the context should start from nothing"
    for ins in parse(path):
        if ins.keyword == "COPY" and not ins.args.startswith("--from"):
            *sources, _ = ins.args.split()
            for source in sources:
                wanted = source + ("/" if (REPO / source).is_dir() else "")
                assert f"!{wanted}" in ignore, f"{source} is copied but ignored"


def test_solver_image_installs_the_solver_extra_only() -> None:
    assert installed_extras(DOCKER / "solver.Dockerfile") == {"solver"}
    assert not any("torch" in i for i in pip_installs(parse(DOCKER / "solver.Dockerfile")))


def _closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution a set of requirements pulls in (installed metadata)."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        seen.add(name)
        for text in metadata.requires(requirement.name) or []:
            child = Requirement(text)
            marker_env = [{"extra": e} for e in requirement.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in marker_env):
                todo.append(child)
    return {s for s in seen if "[" not in s}


def test_solver_install_pulls_no_torch_offline() -> None:
    """Walk the dependency metadata of the pinned, installed versions."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in installed_extras(DOCKER / "solver.Dockerfile"):
        texts += project["optional-dependencies"][extra]
    closure = _closure([Requirement(t) for t in texts])
    assert "ortools" in closure and "grpcio" in closure  # the walk did reach the leaves
    assert not closure & TORCH_FAMILY, sorted(closure & TORCH_FAMILY)
    assert not any(n.startswith("nvidia-") for n in closure)


@pytest.mark.slow
def test_solver_install_pulls_no_torch_per_pip(tmp_path: Path) -> None:
    """pip's resolver, run exactly as the Dockerfile runs it, installs no torch."""
    (install,) = pip_installs(parse(DOCKER / "solver.Dockerfile"))
    # Build arguments left at their defaults (empty): ${ARG:+...} is nothing.
    args = re.sub(r"\$\{[A-Z_]+:\+[^}]*\}", "", install).split()[2:]
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-build-isolation",
            "--quiet",
            "--report",
            str(report),
            *[a.strip('"') for a in args],
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0 and re.search(
        r"NewConnectionError|Temporary failure in name resolution|Network is unreachable",
        done.stderr,
    ):
        pytest.skip(f"NO PACKAGE INDEX: pip could not reach it: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    names = {
        canonicalize_name(i["metadata"]["name"]) for i in json.loads(report.read_text())["install"]
    }
    assert "ortools" in names and "bitmesh" in names
    assert not names & TORCH_FAMILY, sorted(names & TORCH_FAMILY)
    assert not any(n.startswith("nvidia-") for n in names)
