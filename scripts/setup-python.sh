#!/usr/bin/env bash
# Creates the pinned Python venvs the interop tests drive, inside the build tree:
#   target/py/bt10   bittensor 10.5.0 (legacy Axon/Dendrite)
#   target/py/bt11   bittensor 11.3.0 (http_auth / btauth/1)
#   target/py/llama  llama.cpp's OpenAI-compatible server (llama-cpp-python 0.3.36, built
#                    from source: about 4 minutes on 2 cores) and the `gguf` writer
#   target/py/openai the official `openai` SDK 3.57.0 (about 20 s)
# Usage: scripts/setup-python.sh [NAME...]   (no name: all of them)
# Idempotent: a venv is rebuilt only when its requirements (or build flags) changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
pip_flags=(--quiet --disable-pip-version-check)

# The stamp of a venv: what its requirements say (rebuilt when it changes).
stamp_of() {
  case "$1" in
    bt10 | bt11 | openai) sha256sum "$root/python/requirements-$1.txt" | cut -d' ' -f1 ;;
    llama)
      { cat "$root/python/requirements-llama-build.txt" "$root/python/requirements-llama.txt"
        echo "CMAKE_ARGS=$llama_cmake_args"; } | sha256sum | cut -d' ' -f1 ;;
    *) echo "unknown venv '$1' (bt10, bt11, llama, openai)" >&2; exit 2 ;;
  esac
}

# llama.cpp for the CPU of any x86-64 machine (the venv is shared between worktrees and CI),
# without the multimodal library the server does not load for text models.
llama_cmake_args="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"

install() {
  local name="$1" dir="$2"
  case "$name" in
    bt10 | bt11)
      echo "python venv $name: installing $(grep -i '^bittensor==' "$root/python/requirements-$name.txt")"
      "$dir/bin/pip" install "${pip_flags[@]}" --no-deps -r "$root/python/requirements-$name.txt"
      ;;
    openai)
      echo "python venv openai: installing $(grep -i '^openai==' "$root/python/requirements-openai.txt")"
      "$dir/bin/pip" install "${pip_flags[@]}" --no-deps -r "$root/python/requirements-openai.txt"
      "$dir/bin/pip" check
      ;;
    llama)
      echo "python venv llama: installing the pinned build tools"
      "$dir/bin/pip" install "${pip_flags[@]}" --no-deps -r "$root/python/requirements-llama-build.txt"
      echo "python venv llama: building $(grep -i '^llama_cpp_python==' "$root/python/requirements-llama.txt") from source (CMAKE_ARGS=$llama_cmake_args; a few minutes)"
      local started=$SECONDS
      CMAKE_ARGS="$llama_cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$dir/bin/pip" install "${pip_flags[@]}" --no-deps --no-build-isolation \
        -r "$root/python/requirements-llama.txt"
      "$dir/bin/pip" check
      echo "python venv llama: built in $((SECONDS - started)) s"
      ;;
  esac
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(bt10 bt11 llama openai)
for name in "${names[@]}"; do
  dir="$root/target/py/$name"
  stamp="$dir/.requirements.sha256"
  want="$(stamp_of "$name")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$dir/bin/python" ]; then
    echo "python venv $name: up to date"
    continue
  fi
  echo "python venv $name: creating target/py/$name (pip works quietly for a minute or more)"
  rm -rf "$dir"
  mkdir -p "$root/target/py"
  "$py" -m venv "$dir"
  install "$name" "$dir"
  echo "$want" > "$stamp"
done
