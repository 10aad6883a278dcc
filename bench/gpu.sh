#!/usr/bin/env bash
# One-command GPU benchmark (issue 18; docs/benchmarks.md, "GPU benchmark"): picks a Python that has
# torch and diffusers, prints the machine, and runs bench/gpu.py with this script's arguments.
#
#   bash bench/gpu.sh                         # on a GPU: the full run, under 8 minutes
#   bash bench/gpu.sh --device cpu --tiny     # the whole path on a CPU, in seconds
#   bash bench/gpu.sh --prepare-wheels        # here, before a device run: diffusers as wheels in .whl/
#
# Installs nothing from a registry on the device machine (none is reachable there). Its python3 has a
# CUDA torch but no diffusers: carry the wheels that --prepare-wheels saves (`carry: [".whl"]`); they
# go into a private folder on PYTHONPATH, never into the system's site-packages.
# Environment: GPU_BENCH_TIMEOUT_S (the Python run's hard limit, default 450), OUT (when set, the
# report and a log are written there as they are measured).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
WHEELS=.whl
SITE="${TMPDIR:-/tmp}/zipgate-gpu-site"

if [ "${1:-}" = "--prepare-wheels" ]; then
  # diffusers and the two of its needs that the device image lacks, at the versions of this venv.
  versions=$(.venv/bin/python - <<'PY'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("diffusers", "importlib_metadata", "lazy-importer")))
PY
  ) || { echo "gpu.sh: .venv/bin/python cannot read the versions; run scripts/setup.sh first" >&2; exit 1; }
  mkdir -p "$WHEELS"
  # shellcheck disable=SC2086  # $versions is a list of requirements
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" $versions || exit 1
  exclude=.git/info/exclude
  if [ -d .git ] && ! grep -qx "/$WHEELS/" "$exclude" 2>/dev/null; then
    mkdir -p .git/info && echo "/$WHEELS/" >> "$exclude"  # untracked, never committed
  fi
  ls -l "$WHEELS"
  echo "gpu.sh: wheels ready; carry \"$WHEELS\" in the device run"
  exit 0
fi

want_cuda=1
for arg in "$@"; do
  case "$arg" in --device=cpu) want_cuda=0 ;; esac
done
prev=""
for arg in "$@"; do
  [ "$prev" = "--device" ] && [ "$arg" = "cpu" ] && want_cuda=0
  prev="$arg"
done

# probe PYTHON: prints "<torch version> <cuda|nocuda> <diffusers|nodiffusers>", or fails without torch.
probe() {
  "$1" - 2>/dev/null <<'PY'
import importlib.util
import torch
cuda = "cuda" if torch.cuda.is_available() else "nocuda"
has_diffusers = importlib.util.find_spec("diffusers") is not None
print(torch.__version__, cuda, "diffusers" if has_diffusers else "nodiffusers")
PY
}

install_wheels() {
  compgen -G "$WHEELS/*.whl" >/dev/null || return 1
  echo "gpu.sh: installing the carried wheels ($(ls "$WHEELS" | tr '\n' ' ')) into $SITE"
  "$1" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || return 1
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
}

# The repo's venv if it works, else python3; on a GPU run, one whose torch sees CUDA comes first.
PY=""
candidates=()
[ -x .venv/bin/python ] && candidates+=(.venv/bin/python)
command -v python3 >/dev/null && candidates+=(python3)
for pass in cuda any; do
  [ "$pass" = cuda ] && [ "$want_cuda" = 0 ] && continue
  for candidate in "${candidates[@]}"; do
    found=$(probe "$candidate") || { echo "gpu.sh: $candidate: no working torch"; continue; }
    echo "gpu.sh: $candidate: torch $found"
    [ "$pass" = cuda ] && [[ "$found" != *" cuda "* ]] && continue
    if [[ "$found" == *nodiffusers ]]; then
      install_wheels "$candidate" || { echo "gpu.sh: $candidate lacks diffusers and no $WHEELS/*.whl to install"; continue; }
      found=$(probe "$candidate") && [[ "$found" == *" diffusers" ]] || continue
    fi
    PY="$candidate"
    break 2
  done
done
if [ -z "$PY" ]; then
  echo "gpu.sh: no Python with torch and diffusers found. On the device machine, carry diffusers:" >&2
  echo "  here: bash bench/gpu.sh --prepare-wheels; then run with carry [\".whl\"]" >&2
  exit 1
fi
echo "gpu.sh: using $PY ($(command -v "$PY")), torch $(probe "$PY")"
if [ "$want_cuda" = 1 ] && [[ "$(probe "$PY")" != *" cuda "* ]]; then
  echo "gpu.sh: WARNING: this torch sees no CUDA device; bench/gpu.py will refuse to run (for a CPU smoke run pass --device cpu --tiny)"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
  --format=csv 2>/dev/null

args=()
[ -n "${OUT:-}" ] && args+=(--out "$OUT/gpu.md")  # a later --out in "$@" wins
limit="${GPU_BENCH_TIMEOUT_S:-450}"
if [ -n "${OUT:-}" ]; then
  timeout -k 10 "$limit" "$PY" bench/gpu.py "${args[@]}" "$@" 2>&1 | tee "$OUT/gpu.log"
else
  timeout -k 10 "$limit" "$PY" bench/gpu.py "${args[@]}" "$@"
fi
status=$?
[ "$status" -eq 124 ] && echo "gpu.sh: the run passed its ${limit} s limit; the report holds what was measured"
exit "$status"
