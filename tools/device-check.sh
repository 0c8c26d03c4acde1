#!/usr/bin/env bash
# One command for a Linux GPU machine with no Rust: runs a release `pigment` built elsewhere
# through selftest, tune, the kernel benchmarks and one UNet / VAE evaluation, and writes one
# report file. Every step has its own time limit and the whole stays under --budget seconds
# (default 540, so it fits a 10-minute command; 900 with --quick); a step that fails or runs out of time is
# recorded and the next one runs. Exit status: 1 if the selftest failed, else 0.
#
#   tools/device-check.sh [--quick] [--budget SECS] [--bin PATH]
#
# --quick: small shapes (selftest --quick, tune at latent 8, f32 kernel benchmarks at batch-1
# shapes, latent-8 UNet/VAE of tests/fixtures/sd15-tiny when present); it runs end to end on
# lavapipe in about 10 minutes.
# The binary: --bin, $PIGMENT_BIN, ./target/release/pigment or ./pigment. The report goes to
# $OUT/device-check.txt when $OUT is set, else ./device-check.txt; the tuning cache beside it
# ($OUT/cache/pigment/gemm-tune.json), so it comes back with the report.
#
# Vulkan loader: if none is installed and ./.gl holds the loader debs (see the device README's
# `.gl` recipe: libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2, amd64), they
# are unpacked into / first; NVIDIA's ICD is pointed at when the loader finds no driver.
# From the device tool: carry [".gl", "target/release/pigment"], command `tools/device-check.sh`.
set -u

quick=0
budget=
bin="${PIGMENT_BIN:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --budget) budget="$2"; shift ;;
        --bin) bin="$2"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "device-check: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

[ -z "$budget" ] && budget=$([ $quick = 1 ] && echo 900 || echo 540)
if [ -z "$bin" ]; then
    for c in ./target/release/pigment ./pigment; do
        if [ -x "$c" ]; then bin="$c"; break; fi
    done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "device-check: no pigment binary (build one with 'cargo build --release' and carry target/release/pigment, or pass --bin)" >&2
    exit 2
fi

outdir="${OUT:-.}"
mkdir -p "$outdir"
report="$outdir/device-check.txt"
export XDG_CACHE_HOME="$outdir/cache"
: >"$report"
start=$(date +%s)
log() { echo "$*" | tee -a "$report"; }

# Vulkan loader and driver.
if ! ldconfig -p 2>/dev/null | grep -q libvulkan; then
    if ls .gl/*.deb >/dev/null 2>&1; then
        log "# unpacking the Vulkan loader from .gl/"
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    else
        log "# no libvulkan on this machine and no .gl/*.deb to unpack: wgpu may find no Vulkan adapter"
    fi
fi
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nv_icd" ] && ! ls /usr/share/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES="$nv_icd"
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"

log "# pigment device check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n), quick=$quick, budget ${budget}s"
log "# binary: $bin ($("$bin" --version 2>/dev/null))"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/# gpu: /' | tee -a "$report"

selftest_rc=0
# step NAME LIMIT_SECS COMMAND...: run with a time limit (cut to what is left of the budget).
step() {
    local name="$1" limit="$2"
    shift 2
    local left=$((budget - ($(date +%s) - start)))
    if [ "$left" -lt 10 ]; then
        log ""
        log "## $name: skipped (budget spent)"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log ""
    log "## $name (limit ${limit}s): $*"
    local t0=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" 2>&1 | grep -v 'XDG_RUNTIME_DIR' | tee -a "$report"
    local rc=${PIPESTATUS[0]}
    local dt=$(($(date +%s) - t0))
    case $rc in
        0) log "## $name: ok in ${dt}s" ;;
        124|137) log "## $name: TIMED OUT after ${dt}s" ;;
        *) log "## $name: FAILED (exit $rc) after ${dt}s" ;;
    esac
    return $rc
}

if [ $quick = 1 ]; then
    selftest=(selftest --quick)
    tune=(tune --latent 8 --dtype f32 --secs 0 --limit 2)
    bench_all=(bench gemm --dtype f32 --secs 0.1)
    latent=8
    # The tiny test model where this is a checkout with fixtures (full-size random weights
    # need GBs of memory and minutes on a CPU adapter).
    model=()
    [ -d tests/fixtures/sd15-tiny/unet ] && model=(--model tests/fixtures/sd15-tiny --dtype f32)
    limits=(30 400 150 100 100 100 100)
else
    selftest=(selftest)
    tune=(tune --secs 0.1)
    bench_all=(bench all --full --secs 0.5)
    latent=64
    model=()
    limits=(30 90 120 120 90 60 60)
fi

step adapters "${limits[0]}" "$bin" adapters
step selftest "${limits[1]}" "$bin" "${selftest[@]}" || selftest_rc=1
step tune "${limits[2]}" "$bin" "${tune[@]}"
"$bin" adapters 2>/dev/null | grep -v XDG | tee -a "$report"
step "bench kernels" "${limits[3]}" "$bin" "${bench_all[@]}"
if "$bin" bench --help 2>/dev/null | grep -q -- '--profile'; then
    step "bench unet" "${limits[4]}" "$bin" bench unet --latent $latent "${model[@]}" --profile
else
    log ""
    log "## bench unet: this build has no --profile (skipped it; timing without)"
    step "bench unet" "${limits[4]}" "$bin" bench unet --latent $latent "${model[@]}"
fi
step "bench vae" "${limits[5]}" "$bin" bench vae --latent $latent "${model[@]}"
# pix2pix-zero's UNet reverse pass, as a multiple of a UNet step (f16 at full size)
if "$bin" bench --help 2>/dev/null | grep -q unet-grad; then
    step "bench unet-grad" "${limits[6]}" "$bin" bench unet-grad --latent $latent "${model[@]}"
fi

log ""
log "# done in $(($(date +%s) - start))s; selftest $([ $selftest_rc = 0 ] && echo passed || echo FAILED); report $report"
exit $selftest_rc
