#!/bin/bash
# Overlay benchmark: kernel overlayfs vs fuse-overlayfs vs lamina-overlayfs over
# the same lower dirs, via ../shared/bench/overlay-bench.sh; prints a table with
# ratios (lamina / kernel and lamina / fuse-overlayfs), median of RUNS runs.
#
# lamina runs two ways where the kernel can do FUSE-over-io_uring
# (/sys/module/fuse/parameters/enable_uring exists): `lamina-uring`
# (-o uring=on) and `lamina-devfuse` (-o uring=off), one after the other in
# every run (A/B back to back, so a loaded machine hits both alike). The
# script sets enable_uring=Y for its run and restores the old value on exit.
# Without FUSE io_uring only the lamina-devfuse row is measured.
#
# Usage: bench/overlay-bench.sh [LOWER1:LOWER2...]
#   default lowers: a Debian + python3 tree (/var/tmp/lamina-test-debian, built by
#   the tests with debootstrap). Env: RUNS (default 3), SHARED_BENCH (path to the
#   shared script), LAMINA_OVERLAYFS (binary; default: release build of this repo),
#   WORKFS=journal (see below).
#
# WORKFS=journal runs every pass of the shared script with its /tmp (where it
# puts the upper dirs, the work dirs and the 1 GiB file) on a fresh ext4 with a
# journal: a loop device (direct I/O, so no double caching) in a private mount
# namespace. Why: an ext4 without a journal (the root fs of our VMs) does not
# reuse an inode freed in the last 5 minutes, and skipping each one costs a
# buffer-cache lookup per new inode (`recently_deleted` in ext4's ialloc). The
# shared script deletes each driver's 20k small files right before the next
# driver creates its own, so the create row of every driver but the first in a
# pass measures those skips (the same 5k creates: kernel overlayfs 0.46 s
# first, 2.5-3.2 s right after another run). With a journal ext4 skips nothing.
# Targets (issue 4): every row faster than fuse-overlayfs; data rows (read_*,
# write_*, copyup_*) within 1.1x of kernel; metadata rows within 2x; creation
# (create_*) within 3x.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
LOWERS=${1:-/var/tmp/lamina-test-debian}
RUNS=${RUNS:-3}
SHARED=${SHARED_BENCH:-$here/../shared/bench/overlay-bench.sh}
if [ -z "${LAMINA_OVERLAYFS:-}" ]; then
  (cd "$here" && cargo build --release -q -p lamina --bin lamina-overlayfs)
  LAMINA_OVERLAYFS=$here/target/release/lamina-overlayfs
fi
[ -x "$SHARED" ] || { echo "shared bench script not found: $SHARED" >&2; exit 1; }

param=/sys/module/fuse/parameters/enable_uring
modes=(devfuse)
if [ -e "$param" ]; then
  old=$(cat "$param")
  echo Y > "$param"
  modes=(uring devfuse)
else
  echo "this kernel has no FUSE io_uring ($param missing): lamina over /dev/fuse only" >&2
fi

# One wrapper per mode: the shared script names a row after its program.
# (Under /var/tmp: with WORKFS=journal the shared script sees another /tmp.)
wrappers=$(mktemp -d /var/tmp/ovbench-wrap.XXXX)
out=$(mktemp)
pass=$(mktemp)
dev=
cleanup() {
  rm -rf "$wrappers" "$out" "$pass"
  [ -n "$dev" ] && losetup -d "$dev"
  [ -n "${old:-}" ] && echo "$old" > "$param"
  true
}
trap cleanup EXIT
for m in "${modes[@]}"; do
  opt=off; [ "$m" = uring ] && opt=on
  printf '#!/bin/sh\nexec "%s" -o uring=%s "$@"\n' "$LAMINA_OVERLAYFS" "$opt" > "$wrappers/lamina-$m"
  chmod +x "$wrappers/lamina-$m"
done

# One pass of the shared script (kernel, fuse-overlayfs, then the given lamina
# wrapper), its rows to stdout.
shared_pass() {
  if [ "${WORKFS:-}" != journal ]; then
    bash "$SHARED" "$LOWERS" "$1"
    return
  fi
  local img
  img=$(mktemp /var/tmp/ovbench-fs.XXXX)
  truncate -s 8G "$img"
  dev=$(losetup --direct-io=on -f --show "$img")
  rm -f "$img" # its space comes back when the loop device goes
  mkfs.ext4 -q -F "$dev"
  unshare -m --propagation private bash -c 'mount "$1" /tmp && shift && exec bash "$@"' _ \
    "$dev" "$SHARED" "$LOWERS" "$1"
  losetup -d "$dev"
  dev=
}

for i in $(seq 1 "$RUNS"); do
  for m in "${modes[@]}"; do
    echo "run $i/$RUNS (lamina-$m) ..." >&2
    shared_pass "$wrappers/lamina-$m" > "$pass"
    cat "$pass" >&2
    cat "$pass" >> "$out"
  done
done
awk '
  function median(a, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  {
    d = $1; if (d == "kernel-overlayfs") d = "kernel";
    for (f = 2; f <= NF; f++) {
      split($f, kv, "="); k = kv[1];
      if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
      cnt[d, k]++; val[d, k, cnt[d, k]] = kv[2] + 0
    }
  }
  function ratio(a, b) { return (a > 0 && b > 0) ? sprintf("%9.2fx", a / b) : sprintf("%10s", "-") }
  END {
    printf "%-16s %8s %8s %8s %8s %10s %10s %10s %10s\n", "test (s, median)", "kernel", "fuse-ovl",
      "l-uring", "l-devfuse", "uring/kern", "devf/kern", "uring/fovl", "devf/fovl"
    split("kernel fuse-overlayfs lamina-uring lamina-devfuse", ds, " ")
    for (i = 1; i <= nk; i++) {
      k = order[i]
      for (j = 1; j <= 4; j++) {
        n = cnt[ds[j], k]; delete tmp
        for (r = 1; r <= n; r++) tmp[r] = val[ds[j], k, r]
        m[ds[j]] = n ? median(tmp, n) : -1
      }
      printf "%-16s %8.3f %8.3f %8.3f %8.3f %s %s %s %s\n", k, m["kernel"], m["fuse-overlayfs"],
        m["lamina-uring"], m["lamina-devfuse"],
        ratio(m["lamina-uring"], m["kernel"]), ratio(m["lamina-devfuse"], m["kernel"]),
        ratio(m["lamina-uring"], m["fuse-overlayfs"]), ratio(m["lamina-devfuse"], m["fuse-overlayfs"])
    }
    print "(-1 / - : not measured; lamina-uring is measured only where the kernel has FUSE io_uring)"
  }' "$out"
