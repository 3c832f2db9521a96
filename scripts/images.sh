#!/usr/bin/env bash
# Build the three images for real, then run the manifest smoke test against
# containers of them (host networking: all traffic stays on loopback).
#
#   scripts/images.sh            # base (if missing), wheels, images, smoke test
#   scripts/images.sh --no-test  # build only
#
# No image is pulled. The base is Debian bookworm built here with debootstrap
# and `docker import` (python3 3.11, venv, passwd, CA certificates) and named
# bitmesh/base:bookworm; the Dockerfiles take it as their PYTHON_IMAGE build
# argument (FROM ${PYTHON_IMAGE}). The lock's wheels are downloaded once into
# build/wheels and served to the builds on loopback (PIP_FIND_LINKS), so no
# wheel lands in a build context or a layer.
#
# Needs Debian's docker.io and debootstrap (installed when missing, as root)
# and a dockerd (started here when none answers, with its log and pid under
# build/docker/). Disk: the wheels 3.2 GB; the images 13 GB of
# /var/lib/docker (two CUDA torch environments of 6.1 GiB), and the build
# stages as much again until `docker image prune -f` (run at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh

BASE=${BITMESH_BASE_IMAGE:-bitmesh/base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=build
mkdir -p "$WORK/docker" "$WORK/wheels"

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "images: installing $2 from Debian packages" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2
  fi
}
need dockerd docker.io
need debootstrap debootstrap

if ! docker info >/dev/null 2>&1; then
  echo "images: starting dockerd (log: $WORK/docker/dockerd.log)" >&2
  # Host networking only: no bridge, no iptables rules on this machine.
  nohup dockerd --iptables=false --bridge=none >"$WORK/docker/dockerd.log" 2>&1 &
  echo $! >"$WORK/docker/dockerd.pid"
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null
fi

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  rootfs=$(mktemp -d /var/tmp/bitmesh-rootfs.XXXXXX)
  echo "images: debootstrap bookworm into $rootfs" >&2
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,passwd,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$WORK/docker/debootstrap.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$BASE"
  rm -rf "$rootfs"
fi

# The lock's wheels, for this machine's Python 3.11 (the base's is 3.11 too),
# plus what building bitmesh itself needs, plus async-timeout: redis-py needs
# it below Python 3.11.3, and Debian bookworm's python3 is 3.11.2 (the lock
# was resolved on a newer 3.11, where it is not needed).
.venv/bin/python -m pip download -q --only-binary=:all: -d "$WORK/wheels" \
  -r requirements.lock "setuptools>=69" wheel "async-timeout>=4.0.3" 2> >(grep -v "is ignored: it is neither" >&2)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$WORK/wheels" \
  >"$WORK/docker/wheels-http.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
  sleep 0.1
done

# The tag the manifests deploy (deploy/k8s/base/kustomization.yaml's images).
tag_of() {
  .venv/bin/python -c "
import sys, yaml
images = yaml.safe_load(open('deploy/k8s/base/kustomization.yaml'))['images']
print(next(i['newTag'] for i in images if i['name'] == sys.argv[1]))" "$1"
}

# A build context with only what the image's .dockerignore lets in (the
# engine's classic builder reads no per-Dockerfile ignore file).
context_of() {
  local dockerfile=$1
  .venv/bin/python - "$dockerfile" <<'EOF'
import sys, tarfile, io
from pathlib import Path

dockerfile = Path(sys.argv[1])
allowed = [
    line[1:].rstrip("/")
    for line in Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    if line.startswith("!")
]
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.GNU_FORMAT) as tar:
    tar.add(str(dockerfile), arcname="Dockerfile")
    for entry in allowed:
        for path in [Path(entry), *sorted(Path(entry).rglob("*"))]:
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                tar.add(str(path), arcname=str(path), recursive=False)
EOF
}

for name in solver ml proxy-nas; do
  image="bitmesh/$name:$(tag_of "bitmesh/$name")"
  echo "images: building $image" >&2
  start=$(date +%s)
  context_of "deploy/docker/$name.Dockerfile" | DOCKER_BUILDKIT=0 docker build -q \
    --network host \
    --build-arg PYTHON_IMAGE="$BASE" \
    --build-arg PIP_FIND_LINKS="http://127.0.0.1:$port/" \
    -t "$image" - >/dev/null
  size=$(docker image inspect "$image" --format '{{.Size}}')
  echo "images: $image built in $(( $(date +%s) - start )) s, $(( size / 1024 / 1024 )) MiB" >&2
done

# The build stages (each as large as its image) are of no further use.
docker image prune -f >/dev/null

if [ "${1:-}" = "--no-test" ]; then
  exit 0
fi
echo "images: the manifest smoke test against containers of these images" >&2
PYTHONPATH="$PWD" .venv/bin/python -m pytest -q -p no:cacheprovider -rs \
  tests/integration/deploy/test_manifest_smoke.py -k containers
