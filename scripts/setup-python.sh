#!/usr/bin/env bash
# Creates the pinned Python venvs the interop tests drive, inside the build tree:
#   target/py/bt10  bittensor 10.5.0 (legacy Axon/Dendrite)
#   target/py/bt11  bittensor 11.3.0 (http_auth / btauth/1)
# Idempotent: a venv is rebuilt only when its requirements file changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
for name in bt10 bt11; do
  req="$root/python/requirements-$name.txt"
  dir="$root/target/py/$name"
  stamp="$dir/.requirements.sha256"
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$dir/bin/python" ]; then
    echo "python venv $name: up to date"
    continue
  fi
  echo "python venv $name: pip is installing $(grep -c "==" "$req") pinned packages of $(basename "$req") ($(grep -i "^bittensor==" "$req")) into target/py/$name (a minute or two, quiet)"
  rm -rf "$dir"
  "$py" -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req"
  echo "$want" > "$stamp"
done
