# shellcheck shell=bash
# Sourced by the benchmarks that serve IMAGE through Debian's qemu-storage-daemon (QSD) as a
# vhost-user-blk export on SOCK (bench/vhost_user.sh, reserved_core.sh): the file driver with
# aio=io_uring over the page cache, read-only, one queue.

# start_qsd LOG [CPUS [POLL_NS]] -> QSD_PID: the daemon in its main loop, or, with POLL_NS, on
# an iothread that polls for up to POLL_NS; CPUS (a taskset list, or "") confines it.
start_qsd() {
    rm -f "$SOCK"
    local pin=() poll=() export_thread=
    [ -n "${2:-}" ] && pin=(taskset -c "$2")
    if [ -n "${3:-}" ]; then
        poll=(--object "iothread,id=io0,poll-max-ns=$3")
        export_thread=,iothread=io0
    fi
    "${pin[@]}" "$QSD" "${poll[@]}" \
        --blockdev "driver=file,node-name=f,filename=$IMAGE,aio=io_uring,cache.direct=off" \
        --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$SOCK,writable=off,num-queues=1$export_thread" \
        </dev/null >"$1" 2>&1 &
    QSD_PID=$!
    local deadline=$((SECONDS + 10))
    while [ ! -S "$SOCK" ]; do
        if ! kill -0 "$QSD_PID" 2>/dev/null || [ $SECONDS -gt $deadline ]; then
            echo "qemu-storage-daemon did not open $SOCK; see $1" >&2
            exit 1
        fi
        sleep 0.02
    done
}

stop_qsd() {
    [ -n "$QSD_PID" ] || return 0
    kill "$QSD_PID" 2>/dev/null || true
    wait "$QSD_PID" 2>/dev/null || true
    QSD_PID=
}
