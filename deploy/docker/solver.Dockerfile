# syntax=docker/dockerfile:1.7
# The solver service: torch-free and small. It installs bitmesh with the
# [solver] extra only (OR-Tools, matplotlib, numba), every version pinned by
# requirements.lock, and fails the build if torch slipped in.
#
#   docker build -f deploy/docker/solver.Dockerfile -t bitmesh/solver:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# A folder or URL of wheels to install from instead of the package index
# (scripts/images.sh serves the lock's wheels on loopback).
ARG PIP_FIND_LINKS=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY bitmesh ./bitmesh
COPY solver_svc ./solver_svc
RUN pip install --constraint requirements.lock \
      ${PIP_FIND_LINKS:+--no-index --find-links "$PIP_FIND_LINKS"} ".[solver]" \
 && pip check \
 && if python -c "import torch" 2>/dev/null; then echo "torch leaked into the solver image" >&2; exit 1; fi

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 bitmesh \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/bitmesh --create-home \
      --shell /usr/sbin/nologin bitmesh \
 && mkdir -p /var/lib/bitmesh/artifacts \
 && chown -R 10001:10001 /var/lib/bitmesh
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/bitmesh/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/bitmesh \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    BITMESH_HOST=0.0.0.0 \
    BITMESH_ARTIFACT_ROOT=/var/lib/bitmesh/artifacts
USER 10001:10001
WORKDIR /home/bitmesh
EXPOSE 50052
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD ["python", "/opt/bitmesh/healthcheck.py"]
CMD ["python", "-m", "solver_svc"]
