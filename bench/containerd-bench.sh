#!/bin/bash
# containerd with lamina as its snapshotter vs containerd's own overlayfs
# snapshotter, on the same image: `ctr images pull` and `ctr run --rm` of the
# python image from the shared bench images (bench/python: Debian minbase +
# python3, two layers). Every round starts from a fresh containerd root and a
# fresh lamina store, so each pull fetches and unpacks everything; the first
# run after the pull mounts a new container (cold), the second is warm.
# Prints medians and lamina/overlayfs ratios (< 1: lamina faster).
#
#   bench/containerd-bench.sh            # ROUNDS=3 DRIVERS="fuse kernel" PORT=5000
#
# Needs root, containerd + runc, and the bench registry
# (BENCH_IMAGES=/work/shared/bench/bench-images.sh starts it if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DRIVERS=${DRIVERS:-"fuse kernel"}
PORT=${PORT:-5000}
BENCH_IMAGES=${BENCH_IMAGES:-/work/shared/bench/bench-images.sh}
IMAGE=127.0.0.1:$PORT/bench/python:latest

if ! curl -sf "http://127.0.0.1:$PORT/v2/bench/python/tags/list" >/dev/null; then
  PORT=$PORT bash "$BENCH_IMAGES" >&2
fi
cargo build --release -q -p lamina --bins
BIN=$PWD/target/release
export PATH="$BIN:$PATH" # lamina-overlayfs for mount.fuse3, for containerd and ctr

W=$(mktemp -d /var/tmp/lamina-ctd-bench.XXXXXX)
SERVE_PID=; CTD_PID=
cleanup() {
  [ -n "$CTD_PID" ] && kill "$CTD_PID" 2>/dev/null && wait "$CTD_PID" 2>/dev/null || true
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null || true
  grep -E " $W/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

now() { date +%s.%N; }
ctr_() { ctr --address "$W/ctd/c.sock" --namespace bench "$@"; }

start() { # driver
  cleanup_round
  mkdir -p "$W/ctd" "$W/lamina"
  "$BIN/lamina" --root "$W/lamina" serve --driver "$1" \
    --snapshotter-socket "$W/snap.sock" --api-socket "$W/api.sock" 2>"$W/serve.log" &
  SERVE_PID=$!
  cat > "$W/ctd/config.toml" <<EOF
version = 2
root = "$W/ctd/root"
state = "$W/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$W/ctd/c.sock"
[ttrpc]
  address = "$W/ctd/c.sock.ttrpc"
[debug]
  address = "$W/ctd/debug.sock"
[proxy_plugins.lamina]
  type = "snapshot"
  address = "$W/snap.sock"
EOF
  containerd --config "$W/ctd/config.toml" 2>"$W/ctd.log" &
  CTD_PID=$!
  for _ in $(seq 100); do
    [ -S "$W/snap.sock" ] && ctr_ version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "containerd or lamina serve did not start" >&2; tail "$W/serve.log" "$W/ctd.log" >&2; exit 1
}

cleanup_round() {
  [ -n "$CTD_PID" ] && { kill "$CTD_PID" 2>/dev/null; wait "$CTD_PID" 2>/dev/null || true; }
  [ -n "$SERVE_PID" ] && { kill "$SERVE_PID" 2>/dev/null; wait "$SERVE_PID" 2>/dev/null || true; }
  CTD_PID=; SERVE_PID=
  { grep -E " $W/" /proc/mounts || true; } | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$W/ctd" "$W/lamina" "$W"/*.sock
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

round() { # label snapshotter driver round
  local label=$1 sn=$2 driver=$3 r=$4
  start "$driver"
  t0=$(now); ctr_ images pull --plain-http --snapshotter "$sn" "$IMAGE" >/dev/null 2>&1; t1=$(now)
  out1=$(ctr_ run --rm --snapshotter "$sn" "$IMAGE" "b$r" python3 -c 'print("ok")' 2>&1) || true; t2=$(now)
  out2=$(ctr_ run --rm --snapshotter "$sn" "$IMAGE" "c$r" python3 -c 'print("ok")' 2>&1) || true; t3=$(now)
  cleanup_round
  echo "$t1 - $t0" | bc >> "$W/$label.pull"
  if [ "$out1" != ok ] || [ "$out2" != ok ]; then
    # Counted and shown, not timed: a failed start is not a fast one.
    echo "$label round $r: a container failed: $out1 / $out2" >&2
    echo x >> "$W/$label.fail"
    return
  fi
  echo "$t2 - $t1" | bc >> "$W/$label.run1"
  echo "$t3 - $t2" | bc >> "$W/$label.run2"
}

# Rounds interleave the snapshotters, so a busy moment on the machine does
# not land on one of them only.
LABELS="overlayfs $(for d in $DRIVERS; do echo "lamina-$d"; done)"
for label in $LABELS; do : > "$W/$label.pull"; : > "$W/$label.run1"; : > "$W/$label.run2"; : > "$W/$label.fail"; done
for r in $(seq "$ROUNDS"); do
  round overlayfs overlayfs kernel "$r"
  for d in $DRIVERS; do round "lamina-$d" lamina "$d" "$r"; done
done

echo
for label in $LABELS; do
  echo "$label rounds: pull $(tr '\n' ' ' < "$W/$label.pull")| run(cold) $(tr '\n' ' ' < "$W/$label.run1")"
done
printf '\n%-18s %10s %10s %10s   (seconds, median of %s; ratio = lamina / overlayfs)\n' \
  snapshotter pull "run(cold)" "run(warm)" "$ROUNDS"
for label in $LABELS; do
  fails=$(cat "$W/$label.fail" 2>/dev/null | wc -l)
  p=$(median < "$W/$label.pull"); r1=$(median < "$W/$label.run1"); r2=$(median < "$W/$label.run2")
  printf '%-18s %10.3f %10.3f %10.3f' "$label" "$p" "$r1" "$r2"
  if [ "$label" != overlayfs ]; then
    P=$(median < "$W/overlayfs.pull"); R1=$(median < "$W/overlayfs.run1"); R2=$(median < "$W/overlayfs.run2")
    printf '   ratios pull %.2fx  run(cold) %.2fx  run(warm) %.2fx' \
      "$(echo "$p / $P" | bc -l)" "$(echo "$r1 / $R1" | bc -l)" "$(echo "$r2 / $R2" | bc -l)"
  fi
  if [ "$fails" -gt 0 ]; then
    printf '   (%s of %s rounds had a failed container start)' "$fails" "$ROUNDS"
  fi
  echo
done
