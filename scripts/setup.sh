#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine: the Fashion-MNIST package, Chromium (the web page's
# browser test drives it), a virtual environment in .venv with torch, and hashindex itself
# (editable, with the test extras).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -x /usr/bin/chromium ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist chromium >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision are pinned to a matching pair (timm needs torchvision); override with
# TORCH_PACKAGES="torch==X torchvision==Y" for another platform or CUDA build.
if [ -z "${TORCH_PACKAGES:-}" ]; then
  case "$(uname -m)" in
    aarch64) TORCH_PACKAGES="torch==2.9.1 torchvision==0.24.1" ;;
    *) TORCH_PACKAGES="torch==2.14.1 torchvision==0.29.1" ;;
  esac
fi
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || .venv/bin/python -m pip install -q $TORCH_PACKAGES
.venv/bin/python -m pip install -q -e '.[dev]'
echo "set-up done: .venv/bin/hashindex --help"
