#!/usr/bin/env bash
# Set up rtdecode on a fresh machine: a virtual environment in .venv with the CPU build of
# torch and the project installed in editable mode.  `--test` also installs what the test
# suite needs from Debian (Mosquitto broker, Xvfb, Qt's system libraries, ffmpeg).
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
extras="ml,display,mqtt"
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1; extras="$extras,test" ;;
    --gpu) extras="$extras,gpu" ;;
    *) echo "setup.sh: unknown option $arg (use --test, --gpu)" >&2; exit 2 ;;
  esac
done

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
  echo "setup.sh: installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q >/dev/null \
         && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >/dev/null; }
}

if [ "$want_test" -eq 1 ]; then
  # mosquitto: a real broker for the MQTT tests; xvfb + Qt's libraries: the display tests.
  apt_install mosquitto xvfb libegl1 libgl1 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 \
    libdbus-1-3 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch first: a bare requirement would pull a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[$extras]"
echo "setup.sh: ready (.venv)"
