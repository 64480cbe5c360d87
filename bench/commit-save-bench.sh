#!/bin/bash
# lamina commit vs `umoci repack`, and lamina save vs `skopeo copy oci: docker-archive:`,
# on the same data. Prints seconds (best of $RUNS, page cache dropped before each run)
# and ratios (targets: commit >= 5x, save >= 4x faster).
#
# Usage: bench/commit-save-bench.sh [LAMINA_BINARY]     (default: target/release/lamina)
# Needs root, umoci, skopeo, bc, and the bench images of /work/shared/bench/bench-images.sh
# (an OCI layout at ${IMAGES:-/tmp/bench-images/oci} with tags `debian` and `python`; the
# script runs bench-images.sh when it is missing).
#
# The change (same for both tools) on top of bench/debian:
#   5,000 new files (4 KiB each, in 50 dirs), a 1 GiB sparse file (4 data blocks),
#   32 MiB of random data.
# umoci gets it in an unpacked bundle (`umoci unpack`, then written into rootfs/); lamina gets
# it in a fresh container's upper dir (what a mount of the container would have written).
# lamina's images are loaded from OCI archives, so their blobs stay compressed as pulled.
set -eu
LAMINA=${1:-$(cd "$(dirname "$0")/.." && pwd)/target/release/lamina}
IMAGES=${IMAGES:-/tmp/bench-images/oci}
RUNS=${RUNS:-3}
[ -x "$LAMINA" ] || { echo "build it first: cargo build --release -p lamina ($LAMINA missing)"; exit 1; }
if [ ! -f "$IMAGES/index.json" ]; then
  WORK=$(dirname "$IMAGES") /work/shared/bench/bench-images.sh
fi
W=$(mktemp -d /tmp/commit-save-bench.XXXX)
trap 'rm -rf "$W"' EXIT
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
min() { printf '%s\n' "$@" | sort -g | head -1; }
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

R="$W/store"
for t in debian python; do
  skopeo copy -q "oci:$IMAGES:$t" "oci-archive:$W/$t.tar:bench/$t:latest"
  "$LAMINA" --root "$R" load -i "$W/$t.tar" >/dev/null
  rm -f "$W/$t.tar"
done

echo "== commit: umoci repack vs lamina commit (5,000 files + 1 GiB sparse + 32 MiB random), best of $RUNS"
mkdir -p "$W/change" && make_change "$W/change"
t_umoci=(); t_lamina=()
for run in $(seq 1 "$RUNS"); do
  rm -rf "$W/layout" "$W/bundle"
  cp -a "$IMAGES" "$W/layout"
  umoci unpack --image "$W/layout:debian" "$W/bundle" >/dev/null
  cp -a "$W/change/bench" "$W/bundle/rootfs/"
  drop; s=$(now); umoci repack --image "$W/layout:debian" "$W/bundle" >/dev/null; e=$(now)
  t_umoci+=("$(echo "$e - $s" | bc)")

  cid=$("$LAMINA" --root "$R" create bench/debian:latest)
  cp -a "$W/change/bench" "$R/containers/$cid/upper/"
  drop; s=$(now); "$LAMINA" --root "$R" commit "$cid" "bench/committed:$run" >/dev/null; e=$(now)
  t_lamina+=("$(echo "$e - $s" | bc)")
  # the next run must unpack its layer again, as the first did
  "$LAMINA" --root "$R" rmi "bench/committed:$run" >/dev/null
  "$LAMINA" --root "$R" rm "$cid" >/dev/null
  "$LAMINA" --root "$R" gc >/dev/null
done
echo "umoci repack runs: ${t_umoci[*]}"
echo "lamina commit runs: ${t_lamina[*]}"
bu=$(min "${t_umoci[@]}"); bl=$(min "${t_lamina[@]}")
printf "umoci repack   %6.2f s\nlamina commit  %6.2f s\ncommit speedup %sx (target >= 5x)\n" "$bu" "$bl" "$(ratio "$bu" "$bl")"

echo "== save: skopeo copy oci: docker-archive: vs lamina save (bench/python), best of $RUNS"
du -sh "$IMAGES/blobs" | sed 's/^/layout (debian + python) blobs: /'
t_skopeo=(); t_save=()
for run in $(seq 1 "$RUNS"); do
  rm -f "$W/skopeo.tar" "$W/lamina.tar"
  drop; s=$(now); skopeo copy -q "oci:$IMAGES:python" "docker-archive:$W/skopeo.tar:bench/python:latest"; e=$(now)
  t_skopeo+=("$(echo "$e - $s" | bc)")
  drop; s=$(now); "$LAMINA" --root "$R" save bench/python:latest -o "$W/lamina.tar"; e=$(now)
  t_save+=("$(echo "$e - $s" | bc)")
done
ls -l "$W/skopeo.tar" "$W/lamina.tar" | awk '{print "  " $5 " bytes  " $9}'
echo "skopeo copy runs: ${t_skopeo[*]}"
echo "lamina save runs: ${t_save[*]}"
bs=$(min "${t_skopeo[@]}"); bl=$(min "${t_save[@]}")
printf "skopeo copy    %6.2f s\nlamina save    %6.2f s\nsave speedup   %sx (target >= 4x)\n" "$bs" "$bl" "$(ratio "$bs" "$bl")"
