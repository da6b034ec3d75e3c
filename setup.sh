#!/usr/bin/env bash
# One-step set-up on a fresh machine: the offline Fashion-MNIST files (Debian's
# dataset-fashion-mnist, where apt is available) and the pinned Python packages.
set -euo pipefail
cd "$(dirname "$0")"
if command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; then
    echo "Installed dataset-fashion-mnist."
  else
    echo "Could not install dataset-fashion-mnist; tfds will download Fashion-MNIST instead." >&2
  fi
fi
# The pinned versions, and this checkout (editable) with its test extra.
python3 -m pip install -q -r requirements.txt -e ".[test]"
