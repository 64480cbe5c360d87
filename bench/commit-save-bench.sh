#!/bin/bash
# lamina commit vs `umoci repack`, and lamina save vs `skopeo copy oci: docker-archive:`,
# on the same data. Prints seconds and ratios (targets: commit >= 5x, save >= 4x faster).
#
# Usage: bench/commit-save-bench.sh [LAMINA_BINARY]
# Needs root, umoci, skopeo, bc, and the bench images from /work/shared/bench/bench-images.sh
# (an OCI layout at ${IMAGES:-/tmp/bench-images/oci} with tags `debian` and `python`; the script
# runs bench-images.sh when the layout is missing).
#
# The change (same for both tools), added to a container of bench/debian:
#   5,000 new files (4 KiB each, in 50 dirs), a 1 GiB sparse file (4 data blocks),
#   32 MiB of random data.
# umoci gets it in an unpacked bundle (`umoci unpack` then write into rootfs/); lamina gets
# it in a container's upper dir (what a mount of the container would have written).
set -eu
LAMINA=${1:-$(cd "$(dirname "$0")/.." && pwd)/target/release/lamina}
IMAGES=${IMAGES:-/tmp/bench-images/oci}
[ -x "$LAMINA" ] || { echo "build it first: cargo build --release -p lamina ($LAMINA missing)"; exit 1; }
if [ ! -f "$IMAGES/index.json" ]; then
  WORK=$(dirname "$IMAGES") /work/shared/bench/bench-images.sh
fi
W=$(mktemp -d /tmp/commit-save-bench.XXXX)
trap 'rm -rf "$W"' EXIT
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
ratio() { echo "scale=1; $1 / $2" | bc; }

make_change() { # DIR
  local d=$1 i j
  for i in $(seq 1 50); do
    mkdir -p "$d/bench/files/d$i"
    for j in $(seq 1 100); do head -c 4096 /dev/zero | tr '\0' "$((i % 10))" > "$d/bench/files/d$i/f$j"; done
  done
  truncate -s 1G "$d/bench/sparse.img"
  for off in 0 256 512 1023; do
    printf 'block at %s MiB' "$off" | dd of="$d/bench/sparse.img" bs=1M seek="$off" conv=notrunc status=none
  done
  head -c 33554432 /dev/urandom > "$d/bench/random.bin"
}

echo "== commit: umoci repack vs lamina commit (5,000 files + 1 GiB sparse + 32 MiB random)"
cp -a "$IMAGES" "$W/layout"
umoci unpack --image "$W/layout:debian" "$W/bundle" >/dev/null
make_change "$W/bundle/rootfs"
drop; s=$(now); umoci repack --image "$W/layout:debian" "$W/bundle" >/dev/null; e=$(now)
t_umoci=$(echo "$e - $s" | bc)

R="$W/store"
skopeo copy -q "oci:$IMAGES:debian" "docker-archive:$W/debian.tar:bench/debian:latest"
skopeo copy -q "oci:$IMAGES:python" "docker-archive:$W/python.tar:bench/python:latest"
"$LAMINA" --root "$R" load -i "$W/debian.tar" >/dev/null
"$LAMINA" --root "$R" load -i "$W/python.tar" >/dev/null
rm -f "$W/debian.tar" "$W/python.tar"
cid=$("$LAMINA" --root "$R" create bench/debian:latest)
upper="$R/containers/$cid/upper"
[ -d "$upper" ] || upper=$(find "$R/containers" -maxdepth 2 -name upper -path "*$cid*" | head -1)
make_change "$upper"
drop; s=$(now); "$LAMINA" --root "$R" commit "$cid" bench/committed:latest >/dev/null; e=$(now)
t_lamina=$(echo "$e - $s" | bc)
printf "umoci repack   %6.2f s\nlamina commit  %6.2f s\ncommit speedup %sx (target >= 5x)\n" "$t_umoci" "$t_lamina" "$(ratio "$t_umoci" "$t_lamina")"

echo "== save: skopeo copy oci: docker-archive: vs lamina save (bench/python)"
du -sh "$IMAGES/blobs" | sed 's/^/layout size: /'
rm -f "$W/skopeo.tar"
drop; s=$(now); skopeo copy -q "oci:$IMAGES:python" "docker-archive:$W/skopeo.tar:bench/python:latest"; e=$(now)
t_skopeo=$(echo "$e - $s" | bc)
drop; s=$(now); "$LAMINA" --root "$R" save bench/python:latest -o "$W/lamina.tar"; e=$(now)
t_save=$(echo "$e - $s" | bc)
ls -l "$W/skopeo.tar" "$W/lamina.tar" | awk '{print $5, $9}'
printf "skopeo copy    %6.2f s\nlamina save    %6.2f s\nsave speedup   %sx (target >= 4x)\n" "$t_skopeo" "$t_save" "$(ratio "$t_skopeo" "$t_save")"
