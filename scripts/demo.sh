#!/usr/bin/env bash
# The main job, offline: build lamina, make an image from files on this
# machine, serve it from a real registry on loopback, pull it into a fresh
# store and mount it. Needs root (for the mount) and Debian's docker-registry.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v docker-registry >/dev/null || {
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry
}
cargo build --release --bins
export PATH="$PWD/target/release:$PATH"

work=$(mktemp -d /tmp/lamina-demo.XXXX)
port=${PORT:-5077}
cleanup() {
  lamina --root "$work/store2" umount "$work/mnt" 2>/dev/null || true
  [ -n "${registry_pid:-}" ] && kill "$registry_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== a small root filesystem from this machine's files"
mkdir -p "$work/rootfs"
tar -C / -cf - etc/os-release usr/lib/os-release usr/bin/ls usr/bin/cat bin 2>/dev/null | tar -C "$work/rootfs" -xf - 2>/dev/null || true
for lib in $(ldd /usr/bin/ls | grep -o '/[^ ]*'); do
  mkdir -p "$work/rootfs$(dirname "$lib")"; cp -L "$lib" "$work/rootfs$lib"
done
tar -C "$work/rootfs" -czf "$work/rootfs.tar.gz" .

echo "== lamina import"
lamina --root "$work/store1" import "$work/rootfs.tar.gz" "127.0.0.1:$port/demo/small:latest"

echo "== a registry on 127.0.0.1:$port"
printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s/registry\nhttp:\n  addr: 127.0.0.1:%s\n' "$work" "$port" > "$work/registry.yml"
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.2; done

echo "== lamina push, then pull into a fresh store"
lamina --root "$work/store1" push "127.0.0.1:$port/demo/small:latest"
lamina --root "$work/store2" pull "127.0.0.1:$port/demo/small:latest"
lamina --root "$work/store2" images

echo "== lamina mount (FUSE, read-only image mount)"
mkdir -p "$work/mnt"
lamina --root "$work/store2" mount "127.0.0.1:$port/demo/small:latest" "$work/mnt"
ls -l "$work/mnt" "$work/mnt/usr/bin"
head -2 "$work/mnt/etc/os-release"
echo "== a program run from the mount"
chroot "$work/mnt" /usr/bin/ls -la /
lamina --root "$work/store2" umount "$work/mnt"
echo "== done"
