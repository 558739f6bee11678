#!/usr/bin/env bash
# Installs what overlaybd-ts needs on a fresh Debian machine (root) and builds it:
# the system libraries the native binding links, the tools tests and benches drive,
# then `npm ci` (which compiles the binding and the TypeScript).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(liblz4-dev libzstd-dev lz4 zstd e2fsprogs util-linux fuse3 nbdkit libnbd-bin docker-registry apache2-utils openssl containerd runc erofs-utils fio busybox-static attr debootstrap postgresql)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
fi
npm ci --no-audit --no-fund
