# Shared by scripts/setup.sh and scripts/setup_tests.sh (sourced, not run): progress lines and torch.

PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# torch, explicitly the build of TORCH_INDEX_URL (PyTorch's CPU index unless set): a plain
# `pip install torch` from PyPI is a multi-GB CUDA build. PyTorch names each index after its build and
# tags the wheels in it with it (.../whl/cpu holds torch-2.13.0+cpu), so the requirement pins that tag.
TORCH_VERSION="2.13.0"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
TORCH_INDEX_URL="${TORCH_INDEX_URL%/}"  # .../whl/cu128/ names the same index
TORCH_REQUIREMENT="torch==${TORCH_VERSION}+${TORCH_INDEX_URL##*/}"

step() {
  echo "setup: $*"
}

# apt_install PACKAGE...: Debian packages, with sudo unless root.
apt_install() {
  step "installing Debian packages: $* (apt-get; a minute or more)"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# install_torch VENV: TORCH_REQUIREMENT into VENV unless that exact build is there. Local first: the
# pinned build from the sources pip is configured with (a wheel cache in its find-links, say, as on CI
# machines without PyTorch's index); only when they do not hold it does pip add TORCH_INDEX_URL.
install_torch() {
  local venv="$1" have
  have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
  if [ "torch==$have" = "$TORCH_REQUIREMENT" ]; then
    step "torch $have in $venv: present"
    return 0
  fi
  step "installing $TORCH_REQUIREMENT into $venv (about 200 MB; a minute or more)"
  "$venv/bin/pip" install -q "$TORCH_REQUIREMENT" 2>/dev/null ||
    "$venv/bin/pip" install -q --extra-index-url "$TORCH_INDEX_URL" "$TORCH_REQUIREMENT"
}
