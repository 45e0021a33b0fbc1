#!/usr/bin/env bash
# Installs what msrnn needs to build, test and benchmark, from Debian's packages (apt-get).
# Installs only what is missing; needs root or sudo when something is.
set -euo pipefail

packages=(cmake make g++ clang libclang-rt-dev libeigen3-dev libgtest-dev libbenchmark-dev gnuplot-nox
  nlohmann-json3-dev time python3)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
# Node.js and npm run llama.cpp (node-llama-cpp) in the test that reads msrnn-convert's files;
# Debian's are installed only where the machine has none.
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]} > 0)); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "error: need root or sudo to install ${missing[*]}" >&2; exit 2; }
    sudo=sudo
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# llama.cpp as the npm package node-llama-cpp ships it prebuilt (linux-x64, CPU only; ~85 MB),
# pinned by tests/llama_cpp/package-lock.json, in build/node-llama-cpp (or $MSRNN_NODE_LLAMA_CPP).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
node_dir=${MSRNN_NODE_LLAMA_CPP:-$root/build/node-llama-cpp}
if ! cmp -s "$root/tests/llama_cpp/package-lock.json" "$node_dir/package-lock.json" ||
    [[ ! -f $node_dir/node_modules/node-llama-cpp/package.json ]]; then
  echo "setup: installing node-llama-cpp in $node_dir"
  mkdir -p "$node_dir"
  cp "$root/tests/llama_cpp/package.json" "$root/tests/llama_cpp/package-lock.json" "$node_dir/"
  # (npm install, not npm ci: the lock leaves out other platforms' optional packages, which npm ci
  # would want listed.)
  (cd "$node_dir" && npm install --omit=optional --no-audit --no-fund --loglevel=error >/dev/null) || {
    echo "error: setup: npm could not install node-llama-cpp in $node_dir" >&2; exit 2; }
fi
