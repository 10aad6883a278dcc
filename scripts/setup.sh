#!/usr/bin/env bash
# Set up a fresh machine for the gateway and the demo: Debian packages (data, Prometheus for the tests),
# a venv with torch and the project. Prints one line per step; re-running skips what is already there.
# What only the test suite needs (Chromium, the KServe venv) is scripts/setup_tests.sh's, which scripts/test.sh
# runs; scripts/demo.sh runs only this.
#
# Environment:
#   PYTHON           interpreter the venv is made from (default: python3)
#   TORCH_INDEX_URL  where torch comes from (default: PyTorch's CPU index). On a CUDA machine name the
#                    CUDA build's index, e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_lib.sh

need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt_install "${need_apt[@]}"
else
  step "Debian packages (Fashion-MNIST, Prometheus): present"
fi

if [ -x .venv/bin/python ]; then
  step "venv .venv: present"
else
  step "creating the venv .venv"
  "$PYTHON" -m venv .venv
fi
install_torch .venv

# `pip install -e` takes ~10 s even when nothing changed: skip it while pyproject.toml (the dependencies)
# is the one installed last. The editable install finds new modules under service/ without a re-run.
project_stamp=".venv/.zipgate-installed"
project_want="pyproject:$(sha256sum pyproject.toml | cut -c1-16) torch:$TORCH_REQUIREMENT"
if [ "$(cat "$project_stamp" 2>/dev/null)" = "$project_want" ] && [ -x .venv/bin/zipgate ]; then
  step "zipgate and its dependencies: installed, pyproject.toml unchanged"
else
  step "installing zipgate and its dependencies (pip install -e '.[dev]'; about 2 minutes the first time)"
  rm -f "$project_stamp"
  .venv/bin/pip install -q -e ".[dev]"
  echo "$project_want" > "$project_stamp"
fi
step "ready: .venv/bin/zipgate"
