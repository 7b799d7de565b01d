# shellcheck shell=bash
# Sourced by the benchmarks that keep one result line per workload and run in
# OUT_DIR/VMM.RUN.results (bench/vhost_user.sh, reserved_core.sh): field 1 the workload, 3 its
# IOPS, 9 and 10 the CPU others (processes, steal) took in its window in % of one CPU.

# The runs a workload counts: those in whose window other processes and steal took at most
# QUIET% of one CPU (default 25), unless none did (then all, and the table says so).
quiet() { # quiet VMM WORKLOAD -> its result lines that count
    local lines
    lines=$(cat "$OUT_DIR/$1".*.results 2>/dev/null | awk -v w="$2" '$1 == w') || true
    printf '%s\n' "$lines" | awk -v q="${QUIET:-25}" '$1 != "" && ($9 !~ /^-?[0-9]+$/ || $9 + $10 <= q)' |
        grep . || printf '%s\n' "$lines"
}

# median VMM WORKLOAD FIELD [PER [SCALE]]: the median over the runs that count of a result
# line's field, divided by field PER and by SCALE if given, over the lines where FIELD was
# measured; "-" if none.
median() {
    quiet "$1" "$2" |
        awk -v f="$3" -v p="${4:-0}" -v s="${5:-1}" \
            '$f ~ /^[0-9.]+$/ && (!p || $p > 0) { print (p ? $f / $p : $f) / s }' | sort -g |
        awk '{ v[NR] = $1 } END { if (!NR) print "-"; else if (NR % 2) print v[(NR + 1) / 2];
              else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

best() { # best VMM WORKLOAD FIELD: the largest over all the runs, "-" if none
    cat "$OUT_DIR/$1".*.results 2>/dev/null |
        awk -v w="$2" -v f="$3" '$1 == w && $f ~ /^[0-9.]+$/ { print $f }' | sort -g | tail -n1 |
        grep . || echo -
}

counted() { # counted VMM WORKLOAD -> "K/N": runs that count, of all
    echo "$(quiet "$1" "$2" | grep -c .)/$(cat "$OUT_DIR/$1".*.results 2>/dev/null | awk -v w="$2" '$1 == w' | grep -c .)"
}

fmt() { # fmt DECIMALS VALUE: the value rounded, unless it is "-"
    if [ "$2" = - ]; then printf '%s' -; else LC_NUMERIC=C printf '%.*f' "$1" "$2"; fi
}

ratio() { # ratio median|best A B WORKLOAD: A's IOPS over B's
    local a b
    a=$("$1" "$2" "$4" 3)
    b=$("$1" "$3" "$4" 3)
    if [ "$a" = - ] || [ "$b" = - ] || [ "$b" = 0 ]; then echo -; else awk "BEGIN {printf \"%.2fx\", $a / $b}"; fi
}
