#!/bin/bash
# Pull-and-unpack benchmark from a loopback registry, side by side:
#   lamina pull (release build, fresh --root each run)
#   ctr images pull --plain-http (containerd with a temp config/root, started per run)
#   skopeo copy docker:// oci: + umoci unpack
# on the images built by /work/shared/bench/bench-images.sh (bench/debian: 1 layer,
# bench/python: 2 layers). Prints the median wall time of $RUNS runs
# per tool, the ratios containerd/lamina and skopeo+umoci/lamina (higher = lamina
# faster), and the median CPU seconds (user+sys; for containerd: ctr plus the
# daemon's CPU during the pull), which depend less on other load than wall times.
# Every run writes to a freshly made ext4 (loop device; FS=tmpfs for tmpfs): on a
# reused ext4, inodes freed by the previous run's cleanup slow down inode
# allocation of whichever tool runs next. mkfs/mount and cleanup are not timed.
# Needs root, containerd + ctr, skopeo, umoci, docker-registry, bc.
# Usage: [RUNS=5] [FS=ext4|tmpfs] [LAMINA=bin] [LAMINA_BASE=bin] bench/pull-bench.sh [IMAGE...]
#   (default images: bench/debian bench/python)
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
PORT=${PORT:-5000}
RUNS=${RUNS:-5}
BENCH_IMAGES=${BENCH_IMAGES:-/work/shared/bench/bench-images.sh}
IMAGES=("$@"); [ ${#IMAGES[@]} -gt 0 ] || IMAGES=(bench/debian bench/python)
REG=127.0.0.1:$PORT

PORT=$PORT bash "$BENCH_IMAGES" >/dev/null
# LAMINA=/path/to/lamina benchmarks that binary instead of building one.
if [ -z "${LAMINA:-}" ]; then
  (cd "$HERE" && cargo build -q --release -p lamina)
  LAMINA=$HERE/target/release/lamina
fi
W=$(mktemp -d /tmp/pull-bench.XXXX)
MNT=$W/mnt; mkdir -p "$MNT"
FS=${FS:-ext4}
CTD_PID=
cleanup() { [ -n "$CTD_PID" ] && kill "$CTD_PID" 2>/dev/null; wait 2>/dev/null; umount -R "$MNT" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
fresh_fs() {
  if [ "$FS" = tmpfs ]; then mount -t tmpfs -o size=6g tmpfs "$MNT"
  else truncate -s 6G "$W/fs.img" && mkfs.ext4 -q -F "$W/fs.img" && mount -o loop "$W/fs.img" "$MNT"; fi
  sync
}
drop_fs() { umount -R "$MNT" 2>/dev/null || umount -l "$MNT"; rm -f "$W/fs.img"; }

now() { date +%s.%N; }
TCK=$(getconf CLK_TCK)
# CPU seconds (user+sys) of a running process, from /proc.
proc_cpu() { awk -v t="$TCK" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
# Runs a command, appending its user+sys CPU seconds (children included) to $W/cpu.
timed() { /usr/bin/time -f '%U %S' -o "$W/time.out" "$@" && awk '{print $1 + $2}' "$W/time.out" >> "$W/cpu"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

run_lamina() { # image [binary]
  fresh_fs
  local s e; s=$(now)
  : > "$W/cpu"; timed "${2:-$LAMINA}" --root "$MNT/lamina" pull "$REG/$1" >/dev/null
  e=$(now); drop_fs; echo "$(echo "$e - $s" | bc) $(paste -sd+ "$W/cpu" | bc)"
}

start_containerd() {
  local d=$MNT/ctd; mkdir -p "$d"
  cat > "$d/config.toml" <<CFG
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$d/sock"
[ttrpc]
  address = "$d/sock.ttrpc"
[debug]
  address = "$d/debug.sock"
[metrics]
  address = ""
CFG
  containerd --config "$d/config.toml" >"$d/log" 2>&1 &
  CTD_PID=$!
  for _ in $(seq 1 100); do ctr --address "$d/sock" version >/dev/null 2>&1 && return; sleep 0.1; done
  echo "containerd did not start: $(tail -5 "$d/log")" >&2; exit 1
}
stop_containerd() { kill "$CTD_PID"; wait "$CTD_PID" 2>/dev/null || true; CTD_PID=; }

run_ctr() { # image
  fresh_fs; start_containerd
  local s e c0 c1; c0=$(proc_cpu "$CTD_PID"); s=$(now)
  : > "$W/cpu"; timed ctr --address "$MNT/ctd/sock" images pull --plain-http "$REG/$1" >/dev/null
  e=$(now); c1=$(proc_cpu "$CTD_PID"); echo "$c1 - $c0" | bc >> "$W/cpu"
  stop_containerd; drop_fs; echo "$(echo "$e - $s" | bc) $(paste -sd+ "$W/cpu" | bc)"
}

run_skopeo_umoci() { # image
  fresh_fs
  local d=$MNT/su; mkdir -p "$d"
  local s e; s=$(now)
  : > "$W/cpu"; timed skopeo copy -q --src-tls-verify=false "docker://$REG/$1" "oci:$d/oci:latest"
  timed umoci unpack --image "$d/oci:latest" "$d/bundle" >/dev/null
  e=$(now); drop_fs; echo "$(echo "$e - $s" | bc) $(paste -sd+ "$W/cpu" | bc)"
}

# LAMINA_BASE=/path/to/older/lamina adds that binary to the interleaved runs
# (an A/B of two lamina builds under the same load) and prints its row.
TOOLS=(lamina ctr skopeo_umoci)
run_lamina_base() { run_lamina "$1" "$LAMINA_BASE"; }
[ -z "${LAMINA_BASE:-}" ] || TOOLS+=(lamina_base)

printf '%-14s %10s %10s %14s %12s %14s   %s\n' image lamina containerd skopeo+umoci ctr/lamina skopeo/lamina "cpu-s lamina/containerd/skopeo+umoci"
for img in "${IMAGES[@]}"; do
  for tool in "${TOOLS[@]}"; do : > "$W/$tool.times"; done
  # Interleaved, so that a change in machine load hits every tool alike.
  for _ in $(seq 1 "$RUNS"); do
    for tool in "${TOOLS[@]}"; do "run_$tool" "$img:latest" >> "$W/$tool.times"; done
  done
  col() { awk -v c="$1" '{print $c}' "$W/$2.times" | median; }
  if [ -n "${LAMINA_BASE:-}" ]; then
    b=$(col 1 lamina_base); l=$(col 1 lamina)
    printf '%-14s %9.2fs (LAMINA_BASE; LAMINA is %.2fx faster; cpu-s %.2f vs %.2f)\n' "$img" "$b" \
      "$(echo "$b / $l" | bc -l)" "$(col 2 lamina_base)" "$(col 2 lamina)"
  fi
  l=$(col 1 lamina); c=$(col 1 ctr); s=$(col 1 skopeo_umoci)
  printf '%-14s %9.2fs %9.2fs %13.2fs %11.2fx %13.2fx   %.2f/%.2f/%.2f\n' "$img" "$l" "$c" "$s" \
    "$(echo "$c / $l" | bc -l)" "$(echo "$s / $l" | bc -l)" "$(col 2 lamina)" "$(col 2 ctr)" "$(col 2 skopeo_umoci)"
done
