#!/usr/bin/env bash
# What only the test suite needs beyond scripts/setup.sh (which it runs first). scripts/test.sh runs this;
# scripts/demo.sh does not (the KServe venv alone takes half of a first set-up's time and 1.5 GB).
#
# Debian's Chromium with chromedriver, headless, for the /ui browser test (tests/test_ui_browser.py).
# Debian's Alertmanager, delivering the backdoor-target alert to a gateway (tests/test_alertmanager_targets.py).
#
# KServe's real ModelServer, for the protocol-conformance tests (tests/test_kserve_upstream.py), in a venv
# of its own, .venv-kserve:
# kserve's pins (uvicorn[standard] brings uvloop, plus pandas, grpcio) must not change the gateway's test
# environment. The tests start tests/kserve_vendor.py in it as a process. Soft: if it cannot be built,
# those tests skip with this reason and the rest of the setup stands.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/setup_lib.sh

if command -v chromedriver >/dev/null 2>&1; then
  step "Debian packages (Chromium, chromedriver): present"
else
  apt_install chromium chromium-driver
fi

if command -v prometheus-alertmanager >/dev/null 2>&1; then
  step "Debian package prometheus-alertmanager: present"
else
  apt_install prometheus-alertmanager
fi

KSERVE_REQUIREMENT="kserve==0.21.0"
KSERVE_VENV=".venv-kserve"
kserve_stamp="$KSERVE_VENV/.zipgate-ready"
kserve_want="$KSERVE_REQUIREMENT $TORCH_REQUIREMENT pyproject:$(sha256sum pyproject.toml | cut -c1-16)"
build_kserve_venv() {
  rm -f "$kserve_stamp"
  { [ -x "$KSERVE_VENV/bin/python" ] || "$PYTHON" -m venv "$KSERVE_VENV"; } &&
    install_torch "$KSERVE_VENV" &&
    step "installing $KSERVE_REQUIREMENT into $KSERVE_VENV (about 2 minutes the first time)" &&
    "$KSERVE_VENV/bin/pip" install -q "$KSERVE_REQUIREMENT" -e . &&
    "$KSERVE_VENV/bin/python" -c "import kserve, service.demo.predictor" &&
    echo "$kserve_want" > "$kserve_stamp"
}
if [ "$(cat "$kserve_stamp" 2>/dev/null)" = "$kserve_want" ]; then
  step "KServe venv $KSERVE_VENV: ready"
else
  build_kserve_venv || echo "setup: WARNING: the KServe venv ($KSERVE_VENV) could not be built;" \
    "the KServe conformance tests will skip" >&2
fi
