#!/usr/bin/env bash
# Run every fuzz target on its committed seed corpus (tests/fixtures/fuzz/<target>/) for a short
# fixed number of inputs, so a regression that panics, hangs or allocates past the bound fails
# here. Needs cargo-fuzz (`cargo install cargo-fuzz`) and nightly, or stable with RUSTC_BOOTSTRAP=1
# (which this uses when there is no nightly toolchain); without cargo-fuzz it says so and exits 0.
# The stable-side checks of the same harness are tests/fuzz_regressions.rs and fuzz_mutations.rs.
#   fuzz/ci.sh [RUNS]        (default 2000 inputs per target after the seeds)
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${1:-2000}
if cargo +nightly --version >/dev/null 2>&1; then
    fuzz() { cargo +nightly fuzz "$@"; }
else
    # libFuzzer's instrumentation and ASan are nightly (-Z) flags; stable accepts them so.
    export RUSTC_BOOTSTRAP=1
    fuzz() { cargo fuzz "$@"; }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/ci.sh: skipped (no cargo-fuzz: cargo install cargo-fuzz)"
    exit 0
fi
targets=$(fuzz list)
fuzz build -a
for t in $targets; do
    seeds=../tests/fixtures/fuzz/$t
    [ -d "$seeds" ] || { echo "fuzz/ci.sh: no seed corpus $seeds"; exit 1; }
    # The first corpus dir receives new inputs: a scratch one, so the committed seeds stay as they are.
    scratch=$(mktemp -d)
    echo "== $t"
    log=$(mktemp)
    status=0
    fuzz run -a "$t" "$scratch" "$seeds" -- \
        -runs="$RUNS" -seed=1 -max_len=131072 -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E 'stat::number_of_executed_units|ERROR|panicked|SUMMARY|Done' "$log" || true
    rm -rf "$scratch"
    if [ "$status" -ne 0 ]; then
        tail -40 "$log"
        echo "fuzz/ci.sh: $t failed (exit $status); the crashing input is in fuzz/artifacts/$t/"
        exit 1
    fi
    rm -f "$log"
done
echo "fuzz/ci.sh: all targets passed"
