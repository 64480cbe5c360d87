#!/bin/bash
# Overlay benchmark: kernel overlayfs vs fuse-overlayfs vs lamina-overlayfs over
# the same lower dirs, via ../shared/bench/overlay-bench.sh; prints a table with
# ratios (lamina / kernel and lamina / fuse-overlayfs), median of RUNS runs.
#
# Usage: bench/overlay-bench.sh [LOWER1:LOWER2...]
#   default lowers: a Debian + python3 tree (/var/tmp/lamina-test-debian, built by
#   the tests with debootstrap). Env: RUNS (default 3), SHARED_BENCH (path to the
#   shared script), LAMINA_OVERLAYFS (binary; default: release build of this repo).
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
out=$(mktemp)
for i in $(seq 1 "$RUNS"); do
  echo "run $i/$RUNS ..." >&2
  bash "$SHARED" "$LOWERS" "$LAMINA_OVERLAYFS" | tee -a "$out" >&2
done
awk -v runs="$RUNS" '
  function median(a, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  {
    d = $1; if (d == "kernel-overlayfs") d = "kernel"; else if (d != "fuse-overlayfs") d = "lamina";
    for (f = 2; f <= NF; f++) {
      split($f, kv, "="); k = kv[1];
      if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
      cnt[d, k]++; val[d, k, cnt[d, k]] = kv[2] + 0
    }
  }
  END {
    printf "%-18s %9s %9s %9s %11s %11s\n", "test (s, median)", "kernel", "fuse-ovl", "lamina", "lam/kernel", "lam/fuseovl"
    for (i = 1; i <= nk; i++) {
      k = order[i]
      for (d in drivers) delete drivers[d]
      split("kernel fuse-overlayfs lamina", ds, " ")
      for (j = 1; j <= 3; j++) {
        n = cnt[ds[j], k]; delete tmp
        for (r = 1; r <= n; r++) tmp[r] = val[ds[j], k, r]
        m[ds[j]] = n ? median(tmp, n) : -1
      }
      printf "%-18s %9.3f %9.3f %9.3f %10.2fx %10.2fx\n", k, m["kernel"], m["fuse-overlayfs"], m["lamina"],
        (m["kernel"] > 0 ? m["lamina"] / m["kernel"] : 0), (m["fuse-overlayfs"] > 0 ? m["lamina"] / m["fuse-overlayfs"] : 0)
    }
  }' "$out"
rm -f "$out"
