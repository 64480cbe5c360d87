#!/bin/bash
# Layer unpack speed: lamina vs `pigz -dc | tar -x` vs `umoci unpack`, on one
# realistic gzip layer (default: a few /usr trees of this machine, several
# hundred MB uncompressed; LAYER_SRC overrides, relative to /).
# Prints seconds (best of RUNS, warm page cache) and ratios to pigz|tar.
# Every run writes to a freshly made file system (FS=ext4 on a loop device, the
# default, or FS=tmpfs): on a reused ext4 without journal, inodes freed in the
# last minutes make inode allocation quadratic, which would punish whichever
# tool runs after a deletion.
# Needs root (owners, devices), pigz, umoci; builds lamina in release mode.
#   WORK=/tmp/lamina-unpack-bench RUNS=3 bench/unpack-bench.sh
set -eu
cd "$(dirname "$0")/.."
W=${WORK:-/tmp/lamina-unpack-bench}
RUNS=${RUNS:-3}
LAYER_SRC=${LAYER_SRC:-"usr/bin usr/include usr/lib/python3.11 usr/share/perl"}
mkdir -p "$W"

cargo build --release -q -p lamina -p lamina-store --example unpack_layer
LAMINA=$PWD/target/release/lamina
UNPACK=$PWD/target/release/examples/unpack_layer

if [ ! -f "$W/layer.tar.gz" ]; then
  echo "building $W/layer.tar.gz from /{${LAYER_SRC// /,}}" >&2
  # shellcheck disable=SC2086
  tar -C / --numeric-owner --xattrs -cf "$W/layer.tar" $LAYER_SRC 2>/dev/null || true
  pigz -c "$W/layer.tar" > "$W/layer.tar.gz"
fi
[ -f "$W/layer.tar.zst" ] || zstd -q -T0 -3 -o "$W/layer.tar.zst" "$W/layer.tar"
if [ ! -f "$W/oci/index.json" ]; then
  rm -rf "$W/oci"
  umoci init --layout "$W/oci" && umoci new --image "$W/oci:bench"
  umoci raw add-layer --image "$W/oci:bench" "$W/layer.tar"
fi
echo "layer: $(du -h "$W/layer.tar.gz" | cut -f1) gzip, $(du -h "$W/layer.tar" | cut -f1) tar," \
  "$(tar -tf "$W/layer.tar" | wc -l) entries"

FS=${FS:-ext4}
MNT=$W/mnt
mkdir -p "$MNT"
fresh_fs() {
  if [ "$FS" = tmpfs ]; then
    mount -t tmpfs -o size=8g tmpfs "$MNT"
  else
    rm -f "$W/fs.img" && truncate -s 8G "$W/fs.img"
    mkfs.ext4 -q -F "$W/fs.img" && mount -o loop "$W/fs.img" "$MNT"
  fi
}
drop_fs() { umount "$MNT"; rm -f "$W/fs.img"; }
trap 'umount "$MNT" 2>/dev/null || true' EXIT

# best_of FUNCTION: runs FUNCTION RUNS times, each on a fresh file system
# mounted at $MNT; prints "WALL CPU" (seconds) of the run with the best wall
# time. CPU is user+sys of every process involved (less sensitive to other
# load on the machine than wall time). mkfs and sync are not timed.
best_of() {
  local best="" cpu=""
  for _ in $(seq "$RUNS"); do
    fresh_fs; sync
    local out e u s
    out=$(/usr/bin/time -f '%e %U %S' bash -c "$1" 2>&1 >/dev/null | tail -1)
    read -r e u s <<<"$out"
    drop_fs
    if [ -z "$best" ] || [ "$(echo "$e < $best" | bc)" = 1 ]; then best=$e; cpu=$(echo "$u + $s" | bc); fi
  done
  echo "$best $cpu"
}

tar_x() { mkdir -p "$MNT/out" && pigz -dc "$W/layer.tar.gz" | tar -x --numeric-owner --xattrs --xattrs-include='*' -C "$MNT/out"; }
umoci_x() { umoci unpack --image "$W/oci:bench" "$MNT/out"; }
lamina_lib() { mkdir -p "$MNT/out" && "$UNPACK" "$W/layer.tar.gz" "$MNT/out"; }
lamina_import() { "$LAMINA" --root "$MNT/root" import "$W/layer.tar.gz" bench:latest; }
tar_zst() { mkdir -p "$MNT/out" && zstd -q -dc "$W/layer.tar.zst" | tar -x --numeric-owner --xattrs --xattrs-include='*' -C "$MNT/out"; }
lamina_zst() { mkdir -p "$MNT/out" && "$UNPACK" "$W/layer.tar.zst" "$MNT/out"; }
export W MNT UNPACK LAMINA
export -f tar_x umoci_x lamina_lib lamina_import tar_zst lamina_zst

t_tar=$(best_of tar_x)
t_umoci=$(best_of umoci_x)
t_lib=$(best_of lamina_lib)
if "$LAMINA" --root "$W/probe" import "$W/layer.tar.gz" probe:latest >/dev/null 2>&1; then
  t_import=$(best_of lamina_import)
else
  t_import=""
fi
rm -rf "$W/probe"
z_tar=$(best_of tar_zst)
z_lib=$(best_of lamina_zst)

read -r t_tar c_tar <<<"$t_tar"
read -r t_umoci c_umoci <<<"$t_umoci"
read -r t_lib c_lib <<<"$t_lib"
ratio() { echo "scale=2; $1 / $t_tar" | bc; }
printf '%-34s %8s %8s %8s\n' "unpack of one gzip layer" wall-s "x tar" cpu-s
printf '%-34s %8.2f %8s %8.2f\n' "pigz -dc | tar -x" "$t_tar" 1.00 "$c_tar"
printf '%-34s %8.2f %8s %8.2f\n' "umoci unpack" "$t_umoci" "$(ratio "$t_umoci")" "$c_umoci"
printf '%-34s %8.2f %8s %8.2f\n' "lamina unpack (library)" "$t_lib" "$(ratio "$t_lib")" "$c_lib"
if [ -n "$t_import" ]; then
  read -r t_import c_import <<<"$t_import"
  printf '%-34s %8.2f %8s %8.2f\n' "lamina import (blob + unpack + db)" "$t_import" "$(ratio "$t_import")" "$c_import"
else
  echo "lamina import: not available in this build"
fi
read -r z_tar zc_tar <<<"$z_tar"
read -r z_lib zc_lib <<<"$z_lib"
printf '%-34s %8.2f %8s %8.2f\n' "zstd -dc | tar -x (zstd layer)" "$z_tar" 1.00 "$zc_tar"
printf '%-34s %8.2f %8s %8.2f\n' "lamina unpack (zstd layer)" "$z_lib" "$(echo "scale=2; $z_lib / $z_tar" | bc)" "$zc_lib"
# Peak memory of the library unpack (must not grow with the layer).
fresh_fs; mkdir -p "$MNT/out"
rss=$(/usr/bin/time -f %M "$UNPACK" "$W/layer.tar.gz" "$MNT/out" 2>&1 >/dev/null | tail -1)
drop_fs
echo "lamina unpack peak RSS: $((rss / 1024)) MiB for a $(( $(stat -c %s "$W/layer.tar") >> 20 )) MiB layer"
echo "targets: lamina <= 1.30 x tar, lamina < umoci"
