#!/usr/bin/env bash
# Set up a fresh machine: Debian packages (data; Prometheus and Chromium for the tests), a venv, the project.
# Idempotent: re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium chromium-driver)  # headless, for the /ui browser test
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned to the CPU build: otherwise pip may pull a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"

# KServe's real ModelServer, for the protocol-conformance tests (tests/test_kserve_upstream.py), in a venv
# of its own: kserve's pins (uvicorn[standard] brings uvloop, plus pandas, grpcio) must not change the
# gateway's test environment. The tests start tests/kserve_vendor.py in it as a process. Soft: if it
# cannot be built, those tests skip with this reason and the rest of the setup stands.
KSERVE_REQUIREMENT="kserve==0.21.0"
KSERVE_VENV=".venv-kserve"
kserve_stamp="$KSERVE_VENV/.zipgate-ready"
kserve_want="$KSERVE_REQUIREMENT torch==2.13.0 pyproject:$(sha256sum pyproject.toml | cut -c1-16)"
build_kserve_venv() {
  rm -f "$kserve_stamp"
  { [ -x "$KSERVE_VENV/bin/python" ] || "$PYTHON" -m venv "$KSERVE_VENV"; } &&
    { "$KSERVE_VENV/bin/python" -c "import torch" 2>/dev/null || "$KSERVE_VENV/bin/pip" install -q "torch==2.13.0"; } &&
    "$KSERVE_VENV/bin/pip" install -q "$KSERVE_REQUIREMENT" -e . &&
    "$KSERVE_VENV/bin/python" -c "import kserve, service.demo.predictor" &&
    echo "$kserve_want" > "$kserve_stamp"
}
if [ "$(cat "$kserve_stamp" 2>/dev/null)" != "$kserve_want" ]; then
  build_kserve_venv || echo "setup.sh: WARNING: the KServe venv ($KSERVE_VENV) could not be built;" \
    "the KServe conformance tests will skip" >&2
fi
