#!/usr/bin/env bash
# Idempotent machine + project set-up: Debian packages the tests and demo need, then .venv
# with the pinned Python dependencies (constraints.txt). Safe to run again; does little when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
DEB_PACKAGES=(espeak-ng libespeak-ng1 ffmpeg redis-server prometheus g++)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "setup: need root (or sudo) to install ${missing[*]}; install them and re-run" >&2
      exit 1
    }
    SUDO="sudo -n"
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Package post-install scripts must not try to start daemons: the tests start their own.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && made_policy=1
  fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$made_policy" = 1 ] && $SUDO rm -f "$policy"
fi

stamp=.venv/.talkingface-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python dependencies (pinned by constraints.txt)"
  .venv/bin/python -m pip install -q --upgrade "pip<27" "setuptools<81" wheel
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
  echo "$want" >"$stamp"
fi
# The face models (three Apache-2.0 .tflite files out of the pinned mediapipe wheel, checked by
# sha256) into the cache; a no-op when they are there. docs/ingest.md, "Face models".
.venv/bin/python -m talkingface.face.models
# The renderer's CPU hash-grid kernel, compiled once into torch's extension cache (about a
# minute the first time; the renderer falls back to pure PyTorch where it cannot build).
.venv/bin/python -m talkingface.render.kernels

echo "setup: ok ($(.venv/bin/python --version), talkingface $(.venv/bin/python -c 'import talkingface; print(talkingface.__version__)'))"
