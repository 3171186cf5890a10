#!/usr/bin/env bash
# The container as users run it: build the image (Dockerfile, a tiny model baked), run the
# participant and group levels of the embedded demo inside it exactly as CircleCI does
# (--read-only, --tmpfs /tmp, --network none, an unknown uid), and diff the sorted output list
# against .circleci/demo_outputs.txt.
#
#     bash tests/container/smoke.sh        # exit 0 passed, 1 failed, 77 skipped (reason printed)
#
# Engine: $CONTAINER_ENGINE, else docker when its daemon answers, else podman. What this script
# adapts to the machine it runs on (never the Dockerfile): for podman, a containers.conf of its
# own (runc when crun cannot run on a hybrid cgroup tree; ulimits no higher than this shell's,
# which a sandbox may not let a container raise); the build on the host network with the host's
# CA bundle for pip (a TLS-inspecting proxy); the PyTorch index: PyTorch's CPU index when it
# answers, else PyPI (a bigger image, the same test); the base image: python:3.11-slim when it
# can be pulled, else a Debian bookworm base made with mmdebstrap (its python3 is 3.11).
# Environment: KEEP_IMAGE=1 keeps the image (else everything the build made is removed at exit);
# SMOKE_NEED_GB overrides the free space required; SMOKE_DIR (default a temporary folder) holds the
# outputs and logs.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TAG=localhost/bids_vlm:smoke
WORK=${SMOKE_DIR:-$(mktemp -d /tmp/bids_vlm_smoke.XXXXXX)}
mkdir -p "$WORK"
skip() { echo "container smoke test SKIPPED: $*"; exit 77; }
fail() { echo "container smoke test FAILED: $*"; exit 1; }

pick_engine() {
    if [ -n "${CONTAINER_ENGINE:-}" ]; then echo "$CONTAINER_ENGINE"; return; fi
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then echo docker; return; fi
    if command -v podman >/dev/null 2>&1; then echo podman; return; fi
    echo ""
}
ENGINE=$(pick_engine)
[ -n "$ENGINE" ] || skip "no container engine (docker with a running daemon, or podman)"

RUN_OPTS=()
BUILD_OPTS=(--network host)
if [ "$ENGINE" = podman ]; then
    conf="$WORK/containers.conf"
    {
        echo "[containers]"
        echo "default_ulimits = [\"nofile=$(ulimit -Sn):$(ulimit -Hn)\", \"nproc=4096:4096\"]"
        if command -v runc >/dev/null 2>&1; then printf '[engine]\nruntime = "runc"\n'; fi
    } > "$conf"
    export CONTAINERS_CONF="$conf"
fi
# pip inside a podman build trusts the host's CA bundle (and so a TLS-inspecting proxy);
# docker build has no -v: it uses its daemon's network as it is
for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [ "$ENGINE" = podman ] && [ -f "$bundle" ]; then
        printf '[global]\ncert = /etc/ssl/certs/host-ca.crt\n' > "$WORK/pip.conf"
        BUILD_OPTS+=(-v "$bundle:/etc/ssl/certs/host-ca.crt:ro" -v "$WORK/pip.conf:/etc/pip.conf:ro")
        break
    fi
done

base_image() {
    if "$ENGINE" pull -q python:3.11-slim >/dev/null 2>&1; then echo python:3.11-slim; return; fi
    local base=localhost/bids_vlm-base:bookworm
    if "$ENGINE" image inspect "$base" >/dev/null 2>&1; then echo "$base"; return; fi
    command -v mmdebstrap >/dev/null 2>&1 || return 1
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$WORK/base.tar" >&2 || return 1
    "$ENGINE" import "$WORK/base.tar" "$base" >/dev/null || return 1
    rm -f "$WORK/base.tar"
    echo "$base"
}
BASE=$(base_image) || skip "cannot pull python:3.11-slim nor make a Debian base with mmdebstrap"
"$ENGINE" run --rm "${RUN_OPTS[@]}" "$BASE" python --version >/dev/null 2>&1 ||
    skip "$ENGINE cannot run a container here ($("$ENGINE" run --rm "$BASE" true 2>&1 | tail -1))"

# Disk: the build holds the venv several times over (build stage, runtime stage, each layer's
# container and its commit): 38 GB at the peak with PyPI's CUDA torch (a 7 GB image; measured
# with podman's overlay driver), proportionally less with PyTorch's CPU wheels. A machine with
# less free space skips, saying so, instead of failing half-way with ENOSPC.
store=$("$ENGINE" info --format '{{.Store.GraphRoot}}' 2>/dev/null ||
    "$ENGINE" info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib)
while [ ! -d "$store" ] && [ "$store" != / ]; do store=$(dirname "$store"); done
free_gb() { df -Pk "$1" | awk 'NR == 2 { printf "%d", $4 / 1048576 }'; }
TORCH_INDEX=https://download.pytorch.org/whl/cpu
python3 -c "import urllib.request; urllib.request.urlopen('$TORCH_INDEX/torch/', timeout=20)" \
    >/dev/null 2>&1 || TORCH_INDEX=https://pypi.org/simple
NEED_GB=${SMOKE_NEED_GB:-12}
[ "$TORCH_INDEX" = https://pypi.org/simple ] && NEED_GB=${SMOKE_NEED_GB:-40}
[ "$(free_gb "$store")" -ge "$NEED_GB" ] ||
    skip "$(free_gb "$store") GB free under $store; building the image needs about $NEED_GB GB"
# what this build leaves behind (the image, its stages' untagged images) is removed at exit:
# repeated builds must not fill the disk; images that were there before are never touched
before=$("$ENGINE" images -a -q --no-trunc | sort -u)
cleanup() {
    [ "${KEEP_IMAGE:-0}" = 1 ] && return
    "$ENGINE" rmi -f "$TAG" >/dev/null 2>&1
    comm -13 <(echo "$before") <("$ENGINE" images -a -q --no-trunc | sort -u) |
        xargs -r "$ENGINE" rmi -f >/dev/null 2>&1 || true
}
trap cleanup EXIT
echo "building $TAG with $ENGINE (base $BASE, torch from $TORCH_INDEX); log: $WORK/build.log"
"$ENGINE" build "${BUILD_OPTS[@]}" -t "$TAG" --build-arg BASE_IMAGE="$BASE" \
    --build-arg TORCH_INDEX="$TORCH_INDEX" --build-arg MODELS=tiny-clip "$REPO" \
    > "$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; fail "the image does not build"; }

DEMO="$REPO/bids_vlm/data/demo/haxby2001"
OUT="$WORK/out"
rm -rf "$OUT" && mkdir -p "$OUT" && chmod 777 "$OUT"
docker_run() {  # CircleCI's docker run: read-only, tmpfs /tmp, no network, a uid with no user
    "$ENGINE" run --rm --read-only --tmpfs /tmp --network none -u 4321:4321 "${RUN_OPTS[@]}" \
        -v "$DEMO:/data:ro" -v "$OUT:/out" "$TAG" "$@"
}
ARGS=(--participant-label 1 --models tiny-clip --text-template "a photo of a {trial_type}" -w /tmp/work)
docker_run /data /out participant "${ARGS[@]}" > "$WORK/participant.log" 2>&1 ||
    { tail -30 "$WORK/participant.log"; fail "the participant level failed in the container"; }
docker_run /data /out group "${ARGS[@]}" > "$WORK/group.log" 2>&1 ||
    { tail -30 "$WORK/group.log"; fail "the group level failed in the container"; }
# the image's default model is the one it baked (here tiny-clip), and it says it is random
"$ENGINE" run --rm --network none "${RUN_OPTS[@]}" --entrypoint python "$TAG" -c \
    "from bids_vlm.cli.parser import build_parser as p; import sys; d = p().get_default('models'); sys.exit(d != ['tiny-clip'])" ||
    fail "the image's default --models is not the model it baked"
grep -q "random weights" "$WORK/participant.log" ||
    fail "a run with a random-weight model does not say so in the log"
bash "$REPO/.circleci/list_outputs.sh" "$OUT" > "$WORK/outputs.txt"
diff -u "$REPO/.circleci/demo_outputs.txt" "$WORK/outputs.txt" ||
    fail "the container's outputs differ from .circleci/demo_outputs.txt"
# Singularity / Apptainer from an archive of the image (no Docker daemon needed), where present
SIF_TOOL=$(command -v apptainer || command -v singularity || true)
if [ -n "$SIF_TOOL" ]; then
    "$ENGINE" save --format docker-archive -o "$WORK/bids_vlm.tar" "$TAG" &&
        "$SIF_TOOL" build "$WORK/bids_vlm.sif" "docker-archive://$WORK/bids_vlm.tar" > "$WORK/sif.log" 2>&1 &&
        "$SIF_TOOL" run --cleanenv "$WORK/bids_vlm.sif" --version | grep -q "^bids_vlm " ||
        fail "the SIF built from the image's docker-archive does not run bids_vlm (see $WORK/sif.log)"
    rm -f "$WORK/bids_vlm.tar" "$WORK/bids_vlm.sif"
    echo "$(basename "$SIF_TOOL"): the SIF built from the docker-archive runs bids_vlm"
else
    echo "no apptainer or singularity here: the SIF build from the docker-archive was not tried"
fi
echo "container smoke test passed ($ENGINE, base $BASE): $(wc -l < "$WORK/outputs.txt") outputs as listed"
