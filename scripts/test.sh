#!/usr/bin/env bash
# Installs everything lamina's tests need on a fresh Debian machine (as root),
# builds the workspace and runs every test. This is the one test command.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  pkg-config libssl-dev libfuse3-dev fuse3 protobuf-compiler   # building
  docker-registry apache2-utils openssl                          # registry tests (htpasswd, token issuer key)
  skopeo umoci                                                   # interop judges
  fuse-overlayfs attr acl pigz zstd bc                           # overlay comparison, fixtures
  containerd runc                                                # snapshotter tests
  podman conmon                                                  # peer: mount_program, save/load
  debootstrap                                                    # a real Debian rootfs
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
if ! command -v pjdfstest >/dev/null; then
  cargo install --locked pjdfstest
fi
export PATH="$HOME/.cargo/bin:$PATH"
# pjdfstest needs a `tests` user and group.
getent group tests >/dev/null || groupadd tests
getent passwd tests >/dev/null || useradd -g tests -M -s /usr/sbin/nologin tests

# Let FUSE servers use the kernel's FUSE-over-io_uring (lamina's fast path,
# see docs/overlay.md) so the whole suite runs over it; the tests that pass
# `uring=off` keep the /dev/fuse path covered.
uring=/sys/module/fuse/parameters/enable_uring
if [ -w "$uring" ]; then echo Y > "$uring"; fi

cargo build --workspace --bins
cargo test --workspace -- "$@"
