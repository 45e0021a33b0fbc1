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
if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "setup: installing ${missing[*]}"
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "error: need root or sudo to install ${missing[*]}" >&2; exit 2; }
  sudo=sudo
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
