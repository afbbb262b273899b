# Sourced by run.sh and multi_lib.sh (not run): the CPU seconds, user plus
# system, that this shell's finished children (and theirs, once waited for)
# have used, into CHILD_S.  `times` must run in this shell, not in a pipe or
# a $(...) subshell, whose counters start at 0; WORK is the caller's temp dir.
CHILD_S=0
children_seconds() {
    times >"$WORK/times.txt"
    CHILD_S="$(tail -1 "$WORK/times.txt" | awk '{
        n = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] }
        printf "%.3f\n", n }')"
}
