#!/usr/bin/env bash
# Installs Debian's dataset-fashion-mnist (70,000 images, 30 MB) when it is missing; says how to get the data otherwise.
set -euo pipefail
target=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
[ -f "$target" ] && exit 0
if [ -n "${REPROCLS_DATA:-}" ] && { [ -d "$REPROCLS_DATA/FashionMNIST/raw" ] || [ -f "$REPROCLS_DATA/train-images-idx3-ubyte.gz" ]; }; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="none"; fi
if [ "$sudo" != "none" ] && command -v apt-get >/dev/null; then
  echo "installing Debian's dataset-fashion-mnist ..."
  $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  [ -f "$target" ] && exit 0
fi
cat >&2 <<MSG
Fashion-MNIST is missing and could not be installed here (needs apt-get and root or sudo).
Get it one of these ways, then run make again:
  - sudo apt-get install dataset-fashion-mnist        (Debian/Ubuntu)
  - put the four *-ubyte.gz files of https://github.com/zalandoresearch/fashion-mnist in a folder
    and export REPROCLS_DATA=/that/folder
  - on a machine with a network: add data.download=true to the train command
MSG
exit 1
