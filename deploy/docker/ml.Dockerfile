# syntax=docker/dockerfile:1.7
# The ML image: the sensitivity service, the trainer's gRPC front and the
# Celery workers (training and proxy trials). bitmesh with the [ml,jobs]
# extras, every version pinned by requirements.lock. torch is PyPI's CUDA
# build: its CUDA libraries come as pip wheels, and the node's NVIDIA driver
# comes in through the NVIDIA container toolkit, so a slim Python base serves
# both CPU and GPU nodes.
#
#   docker build -f deploy/docker/ml.Dockerfile -t bitmesh/ml:0.1.0 .
#
# The same image runs as (Kubernetes sets the command):
#   python -m sensitivity_svc                               (default)
#   python -m trainer_svc
#   celery -A trainer_svc.celery_app worker --queues=... --loglevel=INFO --concurrency=1
#     (the queues: WORKER_QUEUES in bitmesh/jobs/plumbing.py)
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
COPY sensitivity_svc ./sensitivity_svc
COPY trainer_svc ./trainer_svc
COPY proxy_nas_svc ./proxy_nas_svc
RUN pip install --constraint requirements.lock \
      ${PIP_FIND_LINKS:+--no-index --find-links "$PIP_FIND_LINKS"} ".[ml,jobs]" \
 && pip check

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
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    BITMESH_HOST=0.0.0.0 \
    BITMESH_ARTIFACT_ROOT=/var/lib/bitmesh/artifacts
USER 10001:10001
WORKDIR /home/bitmesh
EXPOSE 50051 50053
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["python", "/opt/bitmesh/healthcheck.py"]
CMD ["python", "-m", "sensitivity_svc"]
