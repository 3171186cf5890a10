#!/usr/bin/env bash
# The CUDA checks in one go, on a GPU machine without internet whose Python already has torch
# and the scientific stack: `bash benchmarks/cuda_check.sh` from the repository root.
# Installs the wheels of .whl/ (bids_vlm's other import-time dependencies) into /tmp/site, then
# runs benchmarks/cuda_check.py, the CUDA tests and the association benchmark on CUDA, each
# under its own time limit (under 6 minutes in all). Output goes to $OUT/cuda_check.log too
# when $OUT is set. Exit status: the number of parts that failed. DEVICE=cpu: a dry run of
# this script on a machine without a GPU (not a check).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH=/tmp/site:$PWD NIPYPE_NO_ET=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
FAILED=()

part() {  # part NAME SECONDS COMMAND...: run it under a time limit, note a failure
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "=== $name (limit ${limit} s): $*"
    timeout -k 3 "$limit" "$@"
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || FAILED+=("$name:$rc")
}

main() {
    nvidia-smi -L || echo "no nvidia-smi"
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch",
        torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
    if "$PY" -m pip --version >/dev/null 2>&1; then
        part wheels 20 "$PY" -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    else  # no pip: a wheel is a zip file laid out for site-packages
        part wheels 20 "$PY" -c 'import sys, zipfile
for w in sys.argv[1:]: zipfile.ZipFile(w).extractall("/tmp/site")' .whl/*.whl
    fi
    part imports 30 "$PY" -c 'import nibabel, nilearn.glm.first_level, open_clip, himalaya.ridge
import bids_vlm.models, bids_vlm.encoding.ridge; print("imports ok")'
    part cuda_check 170 "$PY" benchmarks/cuda_check.py --device "$DEVICE"
    part pytest_cuda 60 "$PY" -m pytest -q -x -p no:cacheprovider -k cuda -rs \
        tests/backends tests/stats/test_association.py tests/models/test_models.py
    part bench_association 60 "$PY" benchmarks/bench_association.py --device "$DEVICE" \
        --frames 1000 --ans 8192 --voxels 60000 --block-size 512 --mem-ans 1024 \
        --mem-voxels 200000
    echo "=== failed parts: ${#FAILED[@]} ${FAILED[*]:-}"
    return "${#FAILED[@]}"
}

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    main 2>&1 | tee -a "$OUT/cuda_check.log"
    exit "${PIPESTATUS[0]}"
fi
main
