#!/usr/bin/env bash
# Snapshots, ember beside QEMU, in one run:
#  1. restore latency: from just before the VMM process is spawned to the guest's first byte on
#     its stdout (guest/snapbench.c prints a '.' every 50 us), for 128 MiB 1 vCPU and 1 GiB
#     2 vCPUs: ember with the File and the Uffd backend (a fresh `ember --api-sock`, then
#     PUT /snapshot/load), QEMU's `-incoming "exec:cat FILE"` of the same guest, and a cold boot
#     of it under ember; then the first touches of all guest memory after the restore (128 MiB),
#     timed by the guest;
#  2. snapshot create time, Full and Diff (after the guest dirtied DIRTY_MIB), and the files'
#     apparent and allocated sizes, beside QEMU's migration to a file (stop, migrate
#     "exec:cat > FILE", bandwidth unlimited);
#  3. ember's RSS after a restore: VmRSS, RssAnon, RssFile, the guest RAM's share and the rest;
#  4. live migration: total time and the guest's downtime (the source VMM's last byte to the
#     destination's first), ember (copying guest RAM, and handing it over: --local) beside
#     QEMU's live migration over a unix socket.
# Parts whose pieces are missing (the Uffd handler, Diff snapshots, the merge tool, migration
# routes) print "n/a (reason)". Medians of RUNS interleaved runs per point.
#   bench/snapshot.sh [RUNS]      (default 7; ~4 minutes on an idle 2-core host, 15 at load 8)
# Environment: QEMU (qemu-system-x86_64); SIZES ("128:1 1024:2 128:1:0": MiB:vCPUs[:FILL], FILL
# the MiB the guest writes before it is saved, default all of its RAM); DIRTY_MIB (16);
# DIR (the snapshot files; default build/bench-snapshot, removed at the end unless KEEP=1);
# EMBER (build/ember), UFFD_HANDLER and SNAPSHOT_MERGE (default: next to EMBER); MIG_RUNS (5):
# runs of each live migration; CREATE_RUNS (5): snapshots taken of each kind, one after the
# other, from one machine.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${1:-7}
MIG_RUNS=${MIG_RUNS:-5}
CREATE_RUNS=${CREATE_RUNS:-5}
SIZES=${SIZES:-128:1 1024:2 128:1:0}
DIRTY_MIB=${DIRTY_MIB:-16}
QEMU=${QEMU:-qemu-system-x86_64}
DIR=${DIR:-build/bench-snapshot}
KEEP=${KEEP:-0}
TOUCH_MAX_MIB=128 # first touches only on guests this small: a fault costs 20-150 us here

make --no-print-directory -s all guests build/restorebench build/migratebench >/dev/null
# The Uffd handler may be built by a target of its own.
[ -x build/ember-uffd-handler ] || make --no-print-directory -s build/ember-uffd-handler >/dev/null 2>&1 || true
EMBER=$(realpath "${EMBER:-build/ember}")
TOOLS=$(dirname "$EMBER")
HANDLER=${UFFD_HANDLER:-$TOOLS/ember-uffd-handler}
MERGE=${SNAPSHOT_MERGE:-$TOOLS/ember-snapshot-merge}
GUEST=$ROOT/build/guest/snapbench.elf
BENCH=$ROOT/build/restorebench
rm -rf "$DIR"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
LOG=$DIR/vmm.log
RESULTS=$DIR/results.txt
: >"$RESULTS"

PIDS=()
cleanup() {
    local p
    for p in ${PIDS[@]+"${PIDS[@]}"}; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$KEEP" = 1 ]; then echo "files kept in $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
    echo "bench/snapshot.sh: $*" >&2
    echo "(VMM logs: $LOG; run with KEEP=1 to keep them)" >&2
    exit 1
}

# api SOCK METHOD PATH [JSON]: prints "HTTP_CODE SECONDS"; the answer's body goes to $DIR/api.body
api() {
    local args=(-s -o "$DIR/api.body" -w '%{http_code} %{time_total}\n' --unix-socket "$1" -X "$2")
    [ $# -ge 4 ] && args+=(-H 'Content-Type: application/json' -d "$4")
    curl "${args[@]}" "http://localhost$3" || echo "000 0"
}

# api_ok SOCK METHOD PATH [JSON]: the request must get 204; prints its time in ms
api_ok() {
    local code secs
    read -r code secs < <(api "$@")
    [ "$code" = 204 ] || die "$2 $3 answered $code: $(cat "$DIR/api.body" 2>/dev/null)"
    awk -v s="$secs" 'BEGIN { printf "%.1f", s * 1000 }'
}

# wait_for FILE TEXT COUNT PID: until FILE holds COUNT lines with TEXT (60 s at most)
wait_for() {
    local i n
    for ((i = 0; i < 6000; i++)); do
        n=$(grep -ac "$2" "$1" 2>/dev/null || true)
        [ "${n:-0}" -ge "$3" ] && return 0
        kill -0 "$4" 2>/dev/null || die "the VMM (pid $4) exited while waiting for '$2' in $1"
        sleep 0.01
    done
    die "no '$2' in $1 within 60 s"
}

# wait_socket PATH PID: until the VMM's API socket exists (5 s at most)
wait_socket() {
    local i
    for ((i = 0; i < 500; i++)); do
        [ -S "$1" ] && return 0
        kill -0 "$2" 2>/dev/null || die "the VMM (pid $2) exited before its socket $1 appeared"
        sleep 0.01
    done
    die "no API socket $1 within 5 s"
}

# stop PID: ends a VMM this script started (bash's "Killed" notice silenced)
stop() { { kill -9 "$1" && wait "$1"; } 2>/dev/null || true; }

# Sizes of a file in KiB: apparent and allocated (du).
sizes() { echo "$(du -k --apparent-size "$1" | cut -f1) $(du -k "$1" | cut -f1)"; }

cmdline() { # FILL
    echo "console=ttyS0 dirty_mib=$DIRTY_MIB${1:+ fill_mib=$1}"
}

# parse_size MEM:CPUS[:FILL]: sets mem, cpus, fill ("" for all RAM) and tag
parse_size() {
    IFS=: read -r mem cpus fill <<<"$1"
    [[ $mem =~ ^[0-9]+$ && $cpus =~ ^[0-9]+$ && $fill =~ ^[0-9]*$ ]] || die "bad size '$1' in SIZES"
    tag=${mem}m${cpus}c${fill:+${fill}f}
}

qemu_args() { # MEM CPUS
    echo -M microvm,x-option-roms=off,rtc=off -nodefaults -no-user-config -display none \
        -serial stdio -enable-kvm -cpu host,-arch-capabilities -device i8042 -no-reboot \
        -m "$1" -smp "$2" -kernel "$GUEST"
}

echo "# bench/snapshot.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $RUNS runs per point"
echo "# CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores; host kernel $(uname -r)"
echo "# ember: $("$EMBER" --version | head -1); QEMU: $("$QEMU" --version | head -1)"
echo "# snapshot files in $DIR ($(df -T "$DIR" | awk 'NR == 2 { print $2 }'), page cache warm)"

have_handler=0
handler_why="n/a (no $(basename "$HANDLER"): the Uffd backend is not in this build)"
if [ -x "$HANDLER" ]; then
    have_handler=1
    handler_why=""
fi

# ---- the snapshots ------------------------------------------------------------------------

# Per size: ember's Full snapshot (and Diff), QEMU's migration file; create times and sizes.
declare -A CREATE
for size in $SIZES; do
    parse_size "$size"
    echo "# preparing $mem MiB, $cpus vCPU(s), ${fill:-all} MiB filled: booting and saving under ember and QEMU" >&2

    # ember, through the API (track_dirty_pages for the Diff snapshot)
    sock=$DIR/src-$tag.sock fifo=$DIR/src-$tag.in out=$DIR/src-$tag.out
    mkfifo "$fifo"
    exec {infd}<>"$fifo"
    "$EMBER" --api-sock "$sock" <"$fifo" >"$out" 2>>"$LOG" &
    pid=$!
    PIDS+=("$pid")
    wait_socket "$sock" "$pid"
    api_ok "$sock" PUT /boot-source "{\"kernel_image_path\": \"$GUEST\", \"boot_args\": \"$(cmdline "$fill")\"}" >/dev/null
    api_ok "$sock" PUT /machine-config "{\"vcpu_count\": $cpus, \"mem_size_mib\": $mem, \"track_dirty_pages\": true}" >/dev/null
    api_ok "$sock" PUT /actions '{"action_type": "InstanceStart"}' >/dev/null
    wait_for "$out" "snapbench: ready cpus=$cpus" 1 "$pid"
    sleep 0.2
    # Full, CREATE_RUNS times (each file removed first: the host's page cache is then reused,
    # as it is for QEMU's); the last one is restored below.
    CREATE[$tag,pause]=$(api_ok "$sock" PATCH /vm '{"state": "Paused"}')
    for ((k = 1; k <= CREATE_RUNS; k++)); do
        rm -f "$DIR/$tag.state" "$DIR/$tag.mem"
        t=$(api_ok "$sock" PUT /snapshot/create \
            "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$DIR/$tag.state\", \"mem_file_path\": \"$DIR/$tag.mem\"}")
        echo "$tag create-full $k ms=$t" >>"$RESULTS"
    done
    CREATE[$tag,full_state]=$(sizes "$DIR/$tag.state")
    CREATE[$tag,full_mem]=$(sizes "$DIR/$tag.mem")

    # Diff: the guest writes DIRTY_MIB, then a Diff snapshot holds what changed since the last
    # snapshot; CREATE_RUNS times.
    for ((k = 1; k <= CREATE_RUNS; k++)); do
        api_ok "$sock" PATCH /vm '{"state": "Resumed"}' >/dev/null
        echo -n d >&"$infd"
        wait_for "$out" "snapbench: dirtied" "$k" "$pid"
        api_ok "$sock" PATCH /vm '{"state": "Paused"}' >/dev/null
        rm -f "$DIR/$tag-diff.state" "$DIR/$tag-diff.mem"
        read -r code secs < <(api "$sock" PUT /snapshot/create \
            "{\"snapshot_type\": \"Diff\", \"snapshot_path\": \"$DIR/$tag-diff.state\", \"mem_file_path\": \"$DIR/$tag-diff.mem\"}")
        if [ "$code" != 204 ]; then
            CREATE[$tag,diff]="n/a ($(sed 's/.*"fault_message":"\([^"]*\)".*/\1/' "$DIR/api.body"))"
            break
        fi
        echo "$tag create-diff $k ms=$(awk -v s="$secs" 'BEGIN { printf "%.1f", s * 1000 }')" >>"$RESULTS"
    done
    if [ -z "${CREATE[$tag,diff]:-}" ]; then
        CREATE[$tag,diff]=ok
        CREATE[$tag,diff_state]=$(sizes "$DIR/$tag-diff.state")
        CREATE[$tag,diff_mem]=$(sizes "$DIR/$tag-diff.mem")
        if [ -x "$MERGE" ]; then
            cp --sparse=always "$DIR/$tag.mem" "$DIR/$tag-merged.mem"
            t0=$(date +%s%N)
            "$MERGE" "$DIR/$tag-merged.mem" "$DIR/$tag-diff.mem" >>"$LOG" 2>&1 ||
                die "$(basename "$MERGE") failed (see $LOG)"
            CREATE[$tag,merge]=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }')
            rm -f "$DIR/$tag-merged.mem"
        else
            CREATE[$tag,merge]="n/a (no $(basename "$MERGE"))"
        fi
    fi
    stop "$pid"
    exec {infd}>&-

    # QEMU: stop, then migrate to a file. Without the global state in the stream, the
    # incoming side starts the guest when the stream ends, as a resumed restore does.
    qmp=$DIR/qsrc-$tag.qmp fifo=$DIR/qsrc-$tag.in out=$DIR/qsrc-$tag.out
    mkfifo "$fifo"
    exec {infd}<>"$fifo"
    # shellcheck disable=SC2046 # qemu_args prints plain words
    "$QEMU" $(qemu_args "$mem" "$cpus") -append "$(cmdline "$fill")" -qmp "unix:$qmp,server=on,wait=off" \
        -global migration.store-global-state=off <"$fifo" >"$out" 2>>"$LOG" &
    pid=$!
    PIDS+=("$pid")
    wait_for "$out" "snapbench: ready cpus=$cpus" 1 "$pid"
    sleep 0.2
    python3 bench/qmp-migrate.py save "$qmp" "$DIR/$tag.qemu" "$CREATE_RUNS" >"$DIR/qsave.txt" ||
        die "QEMU's migration to a file failed"
    k=0
    while read -r line; do
        k=$((k + 1))
        line=${line#migrate_ms=}
        echo "$tag create-qemu $k ms=${line%% *}" >>"$RESULTS"
    done <"$DIR/qsave.txt"
    CREATE[$tag,qemu_file]=$(sizes "$DIR/$tag.qemu")
    wait "$pid" 2>/dev/null || true
    exec {infd}>&-
done

# ---- the restores, interleaved --------------------------------------------------------------

load_body() { # STATE BACKEND_TYPE BACKEND_PATH
    echo "{\"snapshot_path\": \"$1\", \"mem_backend\": {\"backend_type\": \"$2\", \"backend_path\": \"$3\"}, \"resume_vm\": true}"
}

# one NAME TAG RUN restorebench-args...: one run, its line added to the results; a failed run
# returns 1 with restorebench's message in $DIR/one.err
one() {
    local name=$1 tag=$2 run=$3
    shift 3
    local line
    line=$("$BENCH" --log "$LOG" "$@" 2>"$DIR/one.err") || return 1
    echo "$tag $name $run $line" >>"$RESULTS"
    sleep 0.1 # the kernel's teardown of the last VM, off the next run's clock
}
failed() { die "$1, $tag, run $run: $(tr -d '\r' <"$DIR/one.err" | grep -v '^$' | tail -3)"; }

echo "# restoring: $RUNS runs of each, interleaved" >&2
for ((run = 1; run <= RUNS; run++)); do
    for size in $SIZES; do
        parse_size "$size"
        touch_arg=()
        [ "$mem" -le "$TOUCH_MAX_MIB" ] && [ -z "$fill" ] && touch_arg=(--touch)
        sock=$DIR/restore.sock
        one file "$tag" "$run" --api-sock "$sock" ${touch_arg[@]+"${touch_arg[@]}"} \
            --load "$(load_body "$DIR/$tag.state" File "$DIR/$tag.mem")" -- "$EMBER" --api-sock "$sock" ||
            failed "the File restore"
        for mode in on-demand all-at-once; do
            [ "$have_handler" = 1 ] || break
            # A Uffd backend that fails is reported, and the rest of the benchmark goes on.
            one "uffd-$mode" "$tag" "$run" --api-sock "$sock" ${touch_arg[@]+"${touch_arg[@]}"} \
                --handler-sock "$DIR/uffd.sock" \
                --handler "$HANDLER" --socket "$DIR/uffd.sock" --mem-file "$DIR/$tag.mem" --mode "$mode" ';' \
                --load "$(load_body "$DIR/$tag.state" Uffd "$DIR/uffd.sock")" -- "$EMBER" --api-sock "$sock" || {
                have_handler=0
                handler_why="n/a (the Uffd restore ($mode, $tag) failed: $(tail -1 "$DIR/one.err"))"
                sed -i '/ uffd-/d' "$RESULTS"
            }
        done
        # shellcheck disable=SC2046 # qemu_args prints plain words
        one qemu "$tag" "$run" ${touch_arg[@]+"${touch_arg[@]}"} -- "$QEMU" $(qemu_args "$mem" "$cpus") \
            -append "$(cmdline "$fill")" -incoming "exec:cat $DIR/$tag.qemu" || failed "QEMU's -incoming"
        one boot "$tag" "$run" --boot -- "$EMBER" run --kernel "$GUEST" --memory "$mem" --cpus "$cpus" \
            --cmdline "$(cmdline "$fill")" || failed "the cold boot"
    done
done

# ---- live migration -------------------------------------------------------------------------

sock=$DIR/probe.sock
"$EMBER" --api-sock "$sock" 2>>"$LOG" &
pid=$!
PIDS+=("$pid")
wait_socket "$sock" "$pid"
read -r code _ < <(api "$sock" PUT /migration/receive '{}')
migration=""
if grep -q 'invalid request method and/or path' "$DIR/api.body"; then
    migration="n/a: live migration not yet in ember (PUT /migration/receive: $code)"
fi
stop "$pid"

# mig NAME TAG RUN migratebench-args...: one migration, its line added to the results
mig() {
    local name=$1 tag=$2 run=$3 line
    shift 3
    # A failed migration is counted and reported, and the rest goes on.
    if ! line=$("$ROOT/build/migratebench" --log "$LOG" "$@" 2>"$DIR/one.err"); then
        echo "$tag $name $run failed=1" >>"$RESULTS"
        { echo "live migration $name, $tag, run $run failed:"; cat "$DIR/one.err"; } >>"$LOG"
        echo "$name $tag run $run: $(tr -d '\r' <"$DIR/one.err" | grep -v '^$' | head -c 300 | tr '\n' ' ')" \
            >>"$DIR/mig-failures.txt"
        return 0
    fi
    echo "$tag $name $run ${line%% mig: *}" >>"$RESULTS"
    sleep 0.1
}

if [ -z "$migration" ]; then
    echo "# live migrations: $MIG_RUNS runs of each, interleaved" >&2
    for ((run = 1; run <= MIG_RUNS; run++)); do
        for size in $SIZES; do
            parse_size "$size"
            for how in copy local; do
                shared="" local_arg=()
                [ "$how" = local ] && shared=",shared=on" local_arg=(--local)
                mig "mig-ember-$how" "$tag" "$run" --dst-ready "$DIR/mdst.sock" -- \
                    "$EMBER" run --kernel "$GUEST" --memory "$mem$shared" --cpus "$cpus" \
                    --cmdline "$(cmdline "$fill")" --api-sock "$DIR/msrc.sock" --log-level info ';' \
                    "$EMBER" --api-sock "$DIR/mdst.sock" --level Info ';' \
                    "$EMBER" migrate --from "$DIR/msrc.sock" --to "$DIR/mdst.sock" \
                    --url "unix:$DIR/mig.sock" ${local_arg[@]+"${local_arg[@]}"}
            done
            # shellcheck disable=SC2046 # qemu_args prints plain words
            mig mig-qemu "$tag" "$run" --dst-ready "$DIR/mig.sock" -- \
                "$QEMU" $(qemu_args "$mem" "$cpus") -append "$(cmdline "$fill")" \
                -qmp "unix:$DIR/mqmp.sock,server=on,wait=off" ';' \
                "$QEMU" $(qemu_args "$mem" "$cpus") -append "$(cmdline "$fill")" -incoming "unix:$DIR/mig.sock" ';' \
                python3 "$ROOT/bench/qmp-migrate.py" live "$DIR/mqmp.sock" "unix:$DIR/mig.sock"
        done
    done
fi

# ---- the report -----------------------------------------------------------------------------

{
    for k in "${!CREATE[@]}"; do echo "create ${k/,/ } ${CREATE[$k]}"; done
    echo "misc handler_why $handler_why"
    echo "misc migration $migration"
    [ -f "$DIR/mig-failures.txt" ] && sed 's/^/misc migfail /' "$DIR/mig-failures.txt"
} >"$DIR/create.txt"

awk -v sizes="$SIZES" -v dirty="$DIRTY_MIB" -v runs="$RUNS" -v mruns="$MIG_RUNS" -v cruns="$CREATE_RUNS" '
function median(key,    n, i, j, t, a) {
    n = cnt[key]
    if (!n) return -1
    for (i = 1; i <= n; i++) a[i] = val[key, i]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function minimum(key,    i, m) {
    m = -1
    for (i = 1; i <= cnt[key]; i++) if (m < 0 || val[key, i] + 0 < m) m = val[key, i] + 0
    return m
}
# median (minimum) of a time in ms
function mm(t, name, f) {
    return has(t, name, f) ? sprintf("%.1f (%.1f)", med(t, name, f), minimum(t SUBSEP name SUBSEP f)) : "n/a"
}
function has(t, name, f) { return cnt[t SUBSEP name SUBSEP f] > 0 }
function med(t, name, f) { return median(t SUBSEP name SUBSEP f) }
function ms(t, name, f) { return has(t, name, f) ? sprintf("%.1f", med(t, name, f)) : "n/a" }
function mib(t, name, f) { return has(t, name, f) ? sprintf("%.2f", med(t, name, f) / 1024) : "n/a" }
function c(s) { return sprintf("%15s", s) }
function w(s) { return sprintf(" %17s", s) }
FILENAME ~ /create.txt$/ {
    if ($1 == "misc") { k = $2; $1 = ""; $2 = ""; sub(/^ +/, ""); misc[k] = misc[k] (k == "migfail" ? "\n     " : "") $0; next }
    k = $2 SUBSEP $3; $1 = ""; $2 = ""; $3 = ""; sub(/^ +/, ""); cr[k] = $0; next
}
{
    for (i = 4; i <= NF; i++) {
        split($i, kv, "="); key = $1 SUBSEP $2 SUBSEP kv[1]
        val[key, ++cnt[key]] = kv[2]
    }
}
END {
    ntags = split(sizes, sz, " ")
    for (s = 1; s <= ntags; s++) {
        split(sz[s], mc, ":")
        tags[s] = mc[1] "m" mc[2] "c" (mc[3] != "" ? mc[3] "f" : "")
        label[s] = sprintf("%d %s %d vCPU%s%s", mc[1] >= 1024 ? mc[1] / 1024 : mc[1], mc[1] >= 1024 ? "GiB" : "MiB",
            mc[2], mc[2] > 1 ? "s" : "", mc[3] == "" ? "" : mc[3] == 0 ? ", empty" : ", " mc[3] " MiB used")
    }
    na = misc["handler_why"]
    nm = split("file uffd-on-demand uffd-all-at-once qemu", names, " ")
    split("ember File|ember Uffd on-demand|ember Uffd all-at-once|QEMU -incoming", shown, "|")

    print ""
    print "1. Restore: from just before the VMM is spawned to the guest'"'"'s first byte on its stdout"
    printf "   (median (minimum) of %d runs, ms). ember: a new `ember --api-sock`, then PUT /snapshot/load;\n", runs
    print "   QEMU: -incoming \"exec:cat FILE\", no request; boot: `ember run` of the same guest to the same point"
    print "   (its first byte after it wrote its memory as the saved guest had)."
    printf "   %-28s%s%s%s%s%s  %s\n", "guest (RAM written)", w("ember File"), w("Uffd on-demand"), w("Uffd all"), w("QEMU -incoming"), w("ember boot"), "QEMU / ember File"
    for (s = 1; s <= ntags; s++) {
        t = tags[s]
        f = med(t, "file", "running_ms"); q = med(t, "qemu", "running_ms")
        printf "   %-28s%s%s%s%s%s  %s\n", label[s], w(mm(t, "file", "running_ms")), w(mm(t, "uffd-on-demand", "running_ms")),
            w(mm(t, "uffd-all-at-once", "running_ms")), w(mm(t, "qemu", "running_ms")), w(mm(t, "boot", "running_ms")),
            (f > 0 && q > 0) ? sprintf("%.1fx (minima: %.1fx; target >= 10x: %s)", q / f,
                minimum(t SUBSEP "qemu" SUBSEP "running_ms") / minimum(t SUBSEP "file" SUBSEP "running_ms"),
                q / f >= 10 ? "met" : "NOT met") : "n/a"
    }
    if (na != "") print "   Uffd: " na
    print "   Within ember'"'"'s figure (ms from the spawn): its API socket accepting, PUT /snapshot/load answered"
    print "   (the guest may print before the answer goes out); a Uffd handler is started, and its socket"
    print "   seen, before the clock starts:"
    for (s = 1; s <= ntags; s++) {
        t = tags[s]
        line = sprintf("     %-28s File %s, %.1f", label[s], ms(t, "file", "connect_ms"), med(t, "file", "connect_ms") + med(t, "file", "load_ms"))
        if (has(t, "uffd-on-demand", "connect_ms"))
            line = line sprintf("; Uffd on-demand %s, %.1f (handler up in %s)", ms(t, "uffd-on-demand", "connect_ms"),
                med(t, "uffd-on-demand", "connect_ms") + med(t, "uffd-on-demand", "load_ms"), ms(t, "uffd-on-demand", "handler_ms"))
        print line
    }

    print ""
    print "   First touches after the restore: the guest reads one word of every page above its image,"
    print "   then writes one word of each, then reads them all again (resident), at CPL3, timed with its"
    print "   TSC (median; ms for all pages, and us per page)"
    for (s = 1; s <= ntags; s++) {
        t = tags[s]
        if (!has(t, "file", "read_us")) continue
        printf "   %-28s %-24s%s%s%s\n", label[s], "restored by", c("read"), c("write"), c("resident")
        for (n = 1; n <= nm; n++) {
            if (!has(t, names[n], "read_us")) { printf "   %-28s %-24s %s\n", "", shown[n], n == 2 || n == 3 ? na : "n/a"; continue }
            p = med(t, names[n], "pages")
            printf "   %-28s %-24s%s%s%s\n", "", shown[n],
                c(sprintf("%.1f %6.2f", med(t, names[n], "read_us") / 1000, med(t, names[n], "read_us") / p)),
                c(sprintf("%.1f %6.2f", med(t, names[n], "write_us") / 1000, med(t, names[n], "write_us") / p)),
                c(sprintf("%.1f %6.2f", med(t, names[n], "resident_us") / 1000, med(t, names[n], "resident_us") / p))
        }
        printf "   (%d pages of 4 KiB)\n", p
    }

    print ""
    print "2. Snapshot create, on a paused machine (the client'"'"'s time of the request; median (minimum) of"
    printf "   %d, one after the other, ms) and file sizes (KiB, apparent / allocated)\n", cruns
    for (s = 1; s <= ntags; s++) {
        t = tags[s]
        printf "   %s\n", label[s]
        split(cr[t SUBSEP "full_state"], fs, " "); split(cr[t SUBSEP "full_mem"], fm, " ")
        printf "     %-40s%s   state %s / %s, memory %s / %s\n", "ember Full", w(mm(t, "create-full", "ms")), fs[1], fs[2], fm[1], fm[2]
        if (cr[t SUBSEP "diff"] ~ /^n\/a/)
            printf "     %-40s %s\n", "ember Diff", cr[t SUBSEP "diff"]
        else {
            split(cr[t SUBSEP "diff_state"], ds, " "); split(cr[t SUBSEP "diff_mem"], dm, " ")
            printf "     %-40s%s   state %s / %s, memory %s / %s\n", "ember Diff, " dirty " MiB written since", w(mm(t, "create-diff", "ms")), ds[1], ds[2], dm[1], dm[2]
            printf "     %-40s%s\n", "ember-snapshot-merge of it onto the Full", w(cr[t SUBSEP "merge"])
        }
        split(cr[t SUBSEP "qemu_file"], qf, " ")
        printf "     %-40s%s   file %s / %s\n", "QEMU migrate \"exec:cat > FILE\"", w(mm(t, "create-qemu", "ms")), qf[1], qf[2]
        printf "     %-40s%s\n", "(ember: the pause before the Full)", w(cr[t SUBSEP "pause"])
    }

    print ""
    print "3. RSS right after the restore, and after the guest wrote every page (median, MiB):"
    print "   VmRSS = RssAnon + RssFile; guest = the resident part of guest RAM (its mapping in smaps);"
    print "   own = VmRSS - guest (Firecracker'"'"'s bound for itself: 5 MiB)"
    printf "   %-28s %-24s%s%s%s%s%s\n", "guest", "process", c("VmRSS"), c("RssAnon"), c("RssFile"), c("guest"), c("own")
    for (s = 1; s <= ntags; s++) {
        t = tags[s]; first = 1
        for (n = 1; n <= nm; n++) {
            for (ph = 1; ph <= 2; ph++) {
                pre = ph == 1 ? "rss_" : "touched_"
                if (!has(t, names[n], pre "vmrss_kib")) {
                    if (ph == 1 && (n == 2 || n == 3) && na != "") {
                        printf "   %-28s %-24s %s\n", first ? label[s] : "", shown[n], "n/a"; first = 0
                    }
                    continue
                }
                own = (med(t, names[n], pre "vmrss_kib") - med(t, names[n], pre "guest_kib")) / 1024
                printf "   %-28s %-24s%s%s%s%s%s\n", first ? label[s] : "", ph == 1 ? shown[n] : "  touched",
                    c(mib(t, names[n], pre "vmrss_kib")), c(mib(t, names[n], pre "anon_kib")),
                    c(mib(t, names[n], pre "file_kib")), c(mib(t, names[n], pre "guest_kib")), c(sprintf("%.2f", own))
                first = 0
            }
        }
    }
    print "   (ember'"'"'s RssFile is mostly its own code and libc, pages shared with every process that"
    print "   maps them; a File restore'"'"'s guest pages are RssFile until written, then RssAnon)"

    print ""
    if (misc["migration"] != "") { print "4. Live migration: " misc["migration"]; exit }
    printf "4. Live migration over a unix socket (median of %d runs, ms): from the migrating command'"'"'s start\n", mruns
    print "   to its end, and the guest'"'"'s downtime (the source'"'"'s last byte to the destination'"'"'s first);"
    print "   ember copies guest RAM (ember migrate), or hands its memfd over (--local, shared=on);"
    print "   QEMU: migrate \"unix:PATH\" to a QEMU started with -incoming, bandwidth unlimited."
    printf "   %-28s%s%s%s  %s\n", "guest (RAM written)", w("ember copy"), w("ember local"), w("QEMU"), "QEMU / ember copy"
    for (s = 1; s <= ntags; s++) {
        t = tags[s]
        printf "   %-28s%s%s%s  %s\n", label[s] " total", w(ms(t, "mig-ember-copy", "total_ms")),
            w(ms(t, "mig-ember-local", "total_ms")), w(ms(t, "mig-qemu", "total_ms")),
            has(t, "mig-qemu", "total_ms") ? sprintf("%.1fx", med(t, "mig-qemu", "total_ms") / med(t, "mig-ember-copy", "total_ms")) : ""
        printf "   %-28s%s%s%s  %s\n", "  downtime", w(ms(t, "mig-ember-copy", "downtime_ms")),
            w(ms(t, "mig-ember-local", "downtime_ms")), w(ms(t, "mig-qemu", "downtime_ms")),
            has(t, "mig-qemu", "downtime_ms") ? sprintf("%.1fx", med(t, "mig-qemu", "downtime_ms") / med(t, "mig-ember-copy", "downtime_ms")) : ""
        printf "   %-28s%s%s%s\n", "  destination RSS, MiB", w(mib(t, "mig-ember-copy", "dst_vmrss_kib")),
            w(mib(t, "mig-ember-local", "dst_vmrss_kib")), w(mib(t, "mig-qemu", "dst_vmrss_kib"))
    }
    print "   (a local migration'"'"'s destination has mapped only the guest pages touched since: the rest"
    print "   stay in the memfd, resident but not yet in its page tables)"
    if (misc["migfail"] != "") print "   FAILED runs (left out of the medians; the log has their output):" misc["migfail"]
}' "$DIR/create.txt" "$RESULTS" | tee build/bench-snapshot.txt
cp "$RESULTS" build/bench-snapshot-runs.txt
