#!/usr/bin/env bash
# One hash over every file that nbdev-clean / nbdev-export may rewrite (works on a dirty tree too).
cd "$(dirname "$0")/.." || exit 1
find nbs silhouette_nb -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' \
  -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
