#!/bin/bash
# containerd with lamina as its snapshotter vs containerd's own overlayfs
# snapshotter, on the same image: `ctr images pull` and `ctr run --rm` of the
# python image from the shared bench images (bench/python: Debian minbase +
# python3, two layers).
#
# Each measurement starts from a fresh containerd root and a fresh lamina
# store (so each pull fetches and unpacks everything), after a `sync` so
# the previous measurement's writeback does not land on it. The first run
# after the pull mounts a new container on fresh layers (cold), the second
# does it again (warm). Rounds alternate the order: odd rounds measure
# overlayfs first, even rounds lamina first; medians are printed per order
# and over all rounds, so a drift on the machine shows as a gap between
# the two orders instead of hiding in one side.
#
# CPU seconds: containerd, its shims, runc, the container, ctr, `lamina
# serve` and its FUSE servers all run in one cpuacct cgroup per
# measurement; its usage is the CPU the whole stack spent.
#
# The start is split with timestamps from containerd's events (`ctr events`),
# lamina's own tracing (each snapshot call logs its latency, and the FUSE
# mount it makes ahead) and a wrapper around `lamina-overlayfs` that records
# when `mount.fuse3` started it and when the mount was ready:
#   ctr->prepare   ctr starts .. /snapshot/prepare (client, image lookup, Prepare)
#   prepare(ls)    lamina's own time in Prepare (its log)
#   mount+create   /snapshot/prepare .. /tasks/create (shim, rootfs mount, runc create)
#   fuse           FUSE mounts: with fuse3 specs (older lamina) every mount.fuse3
#                  exec .. mount ready of the run, summed (part of mount+create);
#                  with mounted-ahead overlays the one mount lamina made in
#                  Prepare (part of prepare(ls))
#   start          /tasks/create .. /tasks/start (runc start)
#   process        /tasks/start .. /tasks/exit (python runs: reads through the mount)
#   teardown       /tasks/exit .. ctr returns (task delete, unmount, snapshot remove)
#
#   bench/containerd-bench.sh      # ROUNDS=7 DRIVERS="fuse" PORT=5000 BUILD=1
#
# Targets (issue 6): pull ratio <= 1.0, start (run) ratio <= 1.2.
# Needs root, containerd + runc, cgroup v1 cpuacct or v2, and the bench
# registry (BENCH_IMAGES=/work/shared/bench/bench-images.sh starts it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-7}
DRIVERS=${DRIVERS:-"fuse"}
PORT=${PORT:-5000}
BUILD=${BUILD:-1}
BENCH_IMAGES=${BENCH_IMAGES:-/work/shared/bench/bench-images.sh}
IMAGE=127.0.0.1:$PORT/bench/python:latest

if ! curl -sf "http://127.0.0.1:$PORT/v2/bench/python/tags/list" >/dev/null; then
  PORT=$PORT bash "$BENCH_IMAGES" >&2
fi
[ "$BUILD" = 1 ] && [ -z "${LAMINA_BIN:-}" ] && cargo build --release -q -p lamina --bins
BIN=${LAMINA_BIN:-$PWD/target/release} # LAMINA_BIN: another build, e.g. a baseline

W=$(mktemp -d /var/tmp/lamina-ctd-bench.XXXXXX)
mkdir -p "$W/bin" "$W/data"
# The FUSE mount timer: mount.fuse3 finds this first on the PATH.
cat > "$W/bin/lamina-overlayfs" <<EOF
#!/bin/bash
s=\$EPOCHREALTIME
"$BIN/lamina-overlayfs" "\$@"; rc=\$?
echo "\$s \$EPOCHREALTIME \$rc" >> "$W/fuse-spawn.log"
exit \$rc
EOF
chmod +x "$W/bin/lamina-overlayfs"
export PATH="$W/bin:$BIN:$PATH"

# One cpuacct cgroup per measurement (v1 hierarchy, else v2).
if [ -d /sys/fs/cgroup/cpuacct ]; then
  CGROOT=/sys/fs/cgroup/cpuacct; CGREL=lamina-ctd-bench-$$
  cpu_ns() { cat "$CGROOT/$CGREL/$1/cpuacct.usage"; }
else
  CGROOT=/sys/fs/cgroup; CGREL=lamina-ctd-bench-$$
  echo +cpu > "$CGROOT/cgroup.subtree_control" 2>/dev/null || true
  cpu_ns() { awk '$1=="usage_usec"{print $2*1000}' "$CGROOT/$CGREL/$1/cpu.stat"; }
fi
mkdir -p "$CGROOT/$CGREL"

SERVE_PID=; CTD_PID=; EV_PID=
stop_all() {
  for p in $EV_PID $CTD_PID $SERVE_PID; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  EV_PID=; CTD_PID=; SERVE_PID=
  { grep -E " $W/" /proc/mounts || true; } | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
cleanup() {
  stop_all
  find "$CGROOT/$CGREL" -depth -mindepth 1 -type d -exec rmdir {} + 2>/dev/null || true
  rmdir "$CGROOT/$CGREL" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

ctr_() { ctr --address "$W/ctd/c.sock" --namespace bench "$@"; }
# Runs a command inside cgroup $CG (under $CGREL). The daemons are started
# with `sh -c "$INCG" ... &` itself, not through the function, so that `$!`
# is their pid (sh execs them) and stop_all can stop them.
INCG='echo $$ > "$0/cgroup.procs" && exec "$@"'
incg() { sh -c "$INCG" "$CGROOT/$CGREL/$CG" "$@"; }

start() { # driver
  stop_all
  rm -rf "$W/ctd" "$W/lamina" "$W"/*.sock "$W/serve.log" "$W/events.log" "$W/fuse-spawn.log"
  mkdir -p "$W/ctd" "$W/lamina" "$CGROOT/$CGREL/$CG"
  LAMINA_LOG=lamina::service=debug NO_COLOR=1 sh -c "$INCG" "$CGROOT/$CGREL/$CG" "$BIN/lamina" --root "$W/lamina" serve --driver "$1" \
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
  sh -c "$INCG" "$CGROOT/$CGREL/$CG" containerd --config "$W/ctd/config.toml" 2>"$W/ctd.log" &
  CTD_PID=$!
  for _ in $(seq 100); do
    if [ -S "$W/snap.sock" ] && ctr_ version >/dev/null 2>&1; then
      ctr_ events > "$W/events.log" 2>/dev/null &
      EV_PID=$!
      sleep 0.2 # subscribed before anything happens
      return 0
    fi
    sleep 0.1
  done
  echo "containerd or lamina serve did not start" >&2; tail "$W/serve.log" "$W/ctd.log" >&2; exit 1
}

# Seconds since UTC midnight, from `date +%s.%N` or a containerd /
# tracing timestamp ("HH:MM:SS.frac" is all it looks at).
sod() { awk -v t="$1" 'BEGIN { printf "%.6f", t % 86400 }'; }
ev_sod() { # event-name id-substring -> seconds since midnight of its first line
  awk -v ev="$1" -v id="$2" '$6 == ev && index($0, id) { split($2, a, ":"); printf "%.6f", a[1]*3600 + a[2]*60 + a[3]; exit }' "$W/events.log"
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
put() { echo "$3" >> "$W/data/$1.$2"; } # label metric value

run_one() { # label snapshotter id metric-prefix
  local label=$1 sn=$2 id=$3 m=$4 c0 c1 t0 t1 out
  : > "$W/fuse-spawn.log"
  sync
  c0=$(cpu_ns "$CG"); t0=$(date +%s.%N)
  out=$(incg ctr --address "$W/ctd/c.sock" --namespace bench run --rm --snapshotter "$sn" \
    --cgroup "/$CGREL/$CG/$id" "$IMAGE" "$id" python3 -c 'print("ok")' 2>&1) || true
  t1=$(date +%s.%N); c1=$(cpu_ns "$CG")
  if [ "$out" != ok ]; then
    # Counted and shown, not timed: a failed start is not a fast one.
    echo "$label $id: the container failed: $out" >&2
    put "$label" fail x
    return
  fi
  put "$label" "$m" "$(echo "$t1 - $t0" | bc)"
  put "$label" "$m.cpu" "$(echo "($c1 - $c0) / 1000000000" | bc -l)"
  sleep 0.3 # events flushed
  local s0 e_prep e_create e_start e_exit s1 prep_us fuse
  s0=$(sod "$t0"); s1=$(sod "$t1")
  e_prep=$(ev_sod /snapshot/prepare "\"$id\""); e_create=$(ev_sod /tasks/create "\"$id\"")
  e_start=$(ev_sod /tasks/start "\"$id\""); e_exit=$(ev_sod /tasks/exit "\"$id\"")
  if [ -n "$e_prep" ] && [ -n "$e_create" ] && [ -n "$e_start" ] && [ -n "$e_exit" ]; then
    put "$label" "$m.ctr_prepare" "$(echo "$e_prep - $s0" | bc)"
    put "$label" "$m.mount_create" "$(echo "$e_create - $e_prep" | bc)"
    put "$label" "$m.start" "$(echo "$e_start - $e_create" | bc)"
    put "$label" "$m.process" "$(echo "$e_exit - $e_start" | bc)"
    put "$label" "$m.teardown" "$(echo "$s1 - $e_exit" | bc)"
  fi
  prep_us=$(sed 's/\x1b\[[0-9;]*m//g' "$W/serve.log" |
    awk -v k="/$id\"" '/snapshot call done/ && /op="prepare"/ && index($0, k) { for (i = 1; i <= NF; i++) if ($i ~ /^elapsed_us=/) { sub("elapsed_us=", "", $i); print $i / 1e6 } }' | tail -1)
  [ -n "$prep_us" ] && put "$label" "$m.prepare_ls" "$prep_us"
  # FUSE mounts started by mount.fuse3 (fuse3 specs: all of this run's),
  # else the one lamina mounted ahead in Prepare (the last in its log).
  fuse=$(awk '{ t += $2 - $1 } END { if (NR) printf "%.6f\n", t }' "$W/fuse-spawn.log")
  [ -z "$fuse" ] && fuse=$(sed 's/\x1b\[[0-9;]*m//g' "$W/serve.log" |
    awk '/FUSE overlay mounted ahead/ { for (i = 1; i <= NF; i++) if ($i ~ /^elapsed_us=/) { sub("elapsed_us=", "", $i); v = $i / 1e6 } } END { if (v != "") print v }')
  [ -n "$fuse" ] && put "$label" "$m.fuse" "$fuse"
  return 0
}

measure() { # label snapshotter driver round
  local label=$1 sn=$2 driver=$3 r=$4 c0 c1 t0 t1 ord
  ord=$([ $((r % 2)) = 1 ] && echo ofirst || echo lfirst)
  CG=$label-$r
  start "$driver"
  sync
  c0=$(cpu_ns "$CG"); t0=$(date +%s.%N)
  incg ctr --address "$W/ctd/c.sock" --namespace bench images pull --plain-http --snapshotter "$sn" "$IMAGE" >/dev/null 2>&1
  t1=$(date +%s.%N); c1=$(cpu_ns "$CG")
  put "$label" pull "$(echo "$t1 - $t0" | bc)"
  put "$label" "pull.$ord" "$(echo "$t1 - $t0" | bc)"
  put "$label" pull.cpu "$(echo "($c1 - $c0) / 1000000000" | bc -l)"
  run_one "$label" "$sn" "b$r" run1
  run_one "$label" "$sn" "c$r" run2
  tail -1 "$W/data/$label.run1" 2>/dev/null | sed "s/^/$label round $r run1 /" >&2 || true
  [ -f "$W/data/$label.run1" ] && put "$label" "run1.$ord" "$(tail -1 "$W/data/$label.run1")"
  stop_all
}

LAMINA_LABELS=$(for d in $DRIVERS; do echo "lamina-$d"; done)
LABELS="overlayfs $LAMINA_LABELS"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="overlayfs $LAMINA_LABELS"; else order="$LAMINA_LABELS overlayfs"; fi
  for label in $order; do
    if [ "$label" = overlayfs ]; then measure overlayfs overlayfs kernel "$r"
    else measure "$label" lamina "${label#lamina-}" "$r"; fi
  done
  echo "round $r of $ROUNDS done" >&2
done

m() { if [ -s "$W/data/$1.$2" ]; then median < "$W/data/$1.$2"; else echo nan; fi; }
count() { if [ -f "$W/data/$1.$2" ]; then wc -l < "$W/data/$1.$2"; else echo 0; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b == 0) print "  n/a"; else printf "%5.2fx", a / b }'; }

echo
echo "containerd $(containerd --version | awk '{print $3}'), image $IMAGE, $ROUNDS rounds, load $(cut -d' ' -f1-3 /proc/loadavg)"
for label in $LABELS; do
  echo "$label raw: pull $(tr '\n' ' ' < "$W/data/$label.pull")| run(cold) $(tr '\n' ' ' < "$W/data/$label.run1" 2>/dev/null)"
done
printf '\n%-14s %8s %8s %8s %8s %8s %8s %8s %8s\n' "median (s)" pull pull-cpu \
  "pull/o1" "pull/l1" run-cold cold-cpu run-warm warm-cpu
for label in $LABELS; do
  printf '%-14s %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f\n' "$label" \
    "$(m "$label" pull)" "$(m "$label" pull.cpu)" "$(m "$label" pull.ofirst)" "$(m "$label" pull.lfirst)" \
    "$(m "$label" run1)" "$(m "$label" run1.cpu)" "$(m "$label" run2)" "$(m "$label" run2.cpu)"
done
echo "(pull/o1: rounds that measured overlayfs first; pull/l1: lamina first)"

printf '\nstart, split (median s)  %-10s %-10s %-10s %-10s %-10s %-10s %-10s\n' \
  ctr-\>prep prep\(ls\) mount+crt fuse start process teardown
for label in $LABELS; do
  for run in run1 run2; do
    printf '%-14s %-9s' "$label" "$([ $run = run1 ] && echo cold || echo warm)"
    for part in ctr_prepare prepare_ls mount_create fuse start process teardown; do
      printf ' %-10.4f' "$(m "$label" "$run.$part")"
    done
    echo
  done
done

echo
for label in $LAMINA_LABELS; do
  fails=$(count "$label" fail); ofails=$(count overlayfs fail)
  echo "$label / overlayfs:" \
    "pull $(ratio "$(m "$label" pull)" "$(m overlayfs pull)") (target <= 1.00;" \
    "overlayfs-first $(ratio "$(m "$label" pull.ofirst)" "$(m overlayfs pull.ofirst)")," \
    "lamina-first $(ratio "$(m "$label" pull.lfirst)" "$(m overlayfs pull.lfirst)"))" \
    "| start cold $(ratio "$(m "$label" run1)" "$(m overlayfs run1)") (target <= 1.20;" \
    "overlayfs-first $(ratio "$(m "$label" run1.ofirst)" "$(m overlayfs run1.ofirst)")," \
    "lamina-first $(ratio "$(m "$label" run1.lfirst)" "$(m overlayfs run1.lfirst)"))" \
    "| start warm $(ratio "$(m "$label" run2)" "$(m overlayfs run2)")" \
    "| CPU pull $(ratio "$(m "$label" pull.cpu)" "$(m overlayfs pull.cpu)") cold $(ratio "$(m "$label" run1.cpu)" "$(m overlayfs run1.cpu)")" \
    "| failed starts $fails (overlayfs $ofails)"
done
