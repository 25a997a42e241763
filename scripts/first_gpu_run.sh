#!/usr/bin/env bash
# detcost's first run on a GPU, in one command from a clone, in about eight minutes:
#
#     scripts/first_gpu_run.sh                 # then paste FOLDER/summary.txt into a bug report
#
# It installs nothing (a GPU box without a network will do): it uses the torch already
# installed (2.4 or newer) and runs detcost from this checkout (PYTHONPATH). In order:
#   1. detcost env and `detcost selfcheck --device cuda`: the CUDA path, one line a check;
#   2. the default sweep's --dry-run: its plan and the time the assumed figures give;
#   3. one small real sweep: resnet18 (a classifier) and unet (per-pixel labels, which
#      strict cannot run), every default setting, three repeats, the A/A control, the
#      audit and the profiled trials; it starts no trial once the budget is spent (--max-time);
#   4. the default sweep's --dry-run again, learning from that sweep's results
#      (--estimate-from): this machine's measured time per trial beside the assumed;
#   5. summary.txt: what to paste into a bug report.
# Every output, the results file and the report go in one folder: $OUT where set, else
# reports/gpu/first-run-<time>/ in the checkout; the script prints it.
#
# Options: --device D (default cuda; cpu runs the same steps on the CPU), --quick (small
# sizes and few steps: the CPU test's), --budget S (seconds after which no trial starts,
# default 420), --workloads W (default resnet18,unet), --settings S (default: the seven),
# --repeats R (default 3), --allow-busy (do not wait for a busy machine). Environment:
# PYTHON (default python3, else python), OUT.
set -u -o pipefail

DEVICE=cuda
QUICK=0
BUDGET=420
WORKLOADS=resnet18,unet
SETTINGS=()
REPEATS=3
ALLOW_BUSY=0
ARGS="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --budget) BUDGET=$2; shift 2 ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        --settings) SETTINGS=(--settings "$2"); shift 2 ;;
        --repeats) REPEATS=$2; shift 2 ;;
        --allow-busy) ALLOW_BUSY=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "first_gpu_run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in "$BUDGET" "$REPEATS"; do
    case "$n" in ''|*[!0-9]*) echo "first_gpu_run.sh: --budget and --repeats take whole numbers, got $n" >&2; exit 2 ;; esac
done

START=$SECONDS
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/reports/gpu/first-run-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || { echo "first_gpu_run.sh: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
echo "first_gpu_run.sh: writing everything to $OUT" >&2
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
DETCOST=("$PYTHON" -m detcost)
SIZES=()
[ "$QUICK" = 1 ] && SIZES=(--quick --steps 4 --warmup 1)
GUARD=(--wait-quiet 30)
[ "$ALLOW_BUSY" = 1 ] && GUARD=(--allow-busy)
HAS_TIMEOUT=0
command -v timeout >/dev/null 2>&1 && HAS_TIMEOUT=1
: >"$OUT/steps.txt"

# step NAME LIMIT_S COMMAND...: COMMAND in $OUT, its stdout in NAME.txt and its stderr in
# NAME.err, killed after LIMIT_S seconds (exit 124); a line in steps.txt: rc, seconds and
# the command (or $LABEL where set).
step() {
    local name=$1 limit=$2 t0=$SECONDS rc label
    shift 2
    label=${LABEL:-$*}
    echo "first_gpu_run.sh: $name ($label)" >&2
    if [ "$HAS_TIMEOUT" = 1 ]; then
        (cd "$OUT" && timeout -k 10 "$limit" "$@") >"$OUT/$name.txt" 2>"$OUT/$name.err"
    else
        (cd "$OUT" && "$@") >"$OUT/$name.txt" 2>"$OUT/$name.err"
    fi
    rc=$?
    printf '%-14s rc %-3s %4s s   %s\n' "$name" "$rc" "$((SECONDS - t0))" "$label" >>"$OUT/steps.txt"
    return $rc
}

left() { echo $((BUDGET - (SECONDS - START))); }

# ---- what is installed: nothing is installed here, so say what is missing --------------
LABEL="$PYTHON: torch 2.4 or newer, detcost's dependencies, nvidia-ml-py" step python 60 "$PYTHON" -c '
import importlib, sys
import torch
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), {sys.executable}")
missing = []
for name in ("numpy", "pandas", "matplotlib", "tqdm", "jinja2", "scipy", "psutil"):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
try:
    import pynvml  # noqa: F401
    print("nvidia-ml-py: installed")
except ImportError:
    print("nvidia-ml-py: missing (detcost asks nvidia-smi for the GPU'"'"'s other processes instead)")
if missing:
    print("missing (install them where a network is at hand): " + " ".join(missing))
sys.exit(0 if (major, minor) >= (2, 4) and not missing else 3)
'
READY=$?
if command -v nvidia-smi >/dev/null 2>&1; then
    step nvidia-smi 30 nvidia-smi --query-gpu=name,driver_version,memory.total,persistence_mode,clocks.max.sm \
        --format=csv
fi

if [ "$READY" = 0 ]; then
    step env 60 "${DETCOST[@]}" env --device "$DEVICE"
    # the selfcheck may take the budget but two minutes; killed past it (its lines are lost then)
    SELFCHECK=(selfcheck --device "$DEVICE")
    [ "$QUICK" = 1 ] && SELFCHECK+=(--quick)
    step selfcheck $(($(left) > 180 ? $(left) - 120 : 60)) "${DETCOST[@]}" "${SELFCHECK[@]}"
    step dryrun-default 120 "${DETCOST[@]}" run --device "$DEVICE" "${SIZES[@]}" --dry-run --allow-busy \
        --results "$OUT/default-sweep.jsonl"
    SMALL=(--workloads "$WORKLOADS" "${SETTINGS[@]}" --repeats "$REPEATS" --seeds 0)
    # the small sweep's own estimate, to hold against the wall time it takes
    step dryrun-small 120 "${DETCOST[@]}" run --device "$DEVICE" "${SIZES[@]}" "${SMALL[@]}" --dry-run --allow-busy \
        --results "$OUT/results.jsonl"
    if [ "$(left)" -gt 30 ]; then
        # --max-time: no trial starts after the budget; a hung trial is killed at --timeout, and
        # the whole sweep two and a half minutes past the budget (its records are kept as they come)
        step sweep $(($(left) + 150)) "${DETCOST[@]}" run --device "$DEVICE" "${SIZES[@]}" "${SMALL[@]}" -q \
            "${GUARD[@]}" --max-time "$(left)" --timeout 120 --results "$OUT/results.jsonl" --report "$OUT/report"
    else
        echo "sweep          not started: the budget ($BUDGET s) was spent before it" >>"$OUT/steps.txt"
    fi
    if [ -s "$OUT/results.jsonl" ]; then
        step dryrun-learned 120 "${DETCOST[@]}" run --device "$DEVICE" "${SIZES[@]}" --dry-run --allow-busy \
            --results "$OUT/default-sweep.jsonl" --estimate-from "$OUT/results.jsonl"
    fi
fi

# ---- summary.txt: what to paste into a bug report ---------------------------------------
plain() { tr '\r' '\n' <"$1" | grep -v '[0-9]%|' | tail -n "${2:-20}"; }  # stderr less its progress bars
section() {  # section TITLE NAME [FROM]: NAME.txt from the line matching FROM; its stderr's tail on a failure
    local file=$OUT/$2.txt
    [ -e "$file" ] || return 0
    echo
    echo "== $1"
    if [ -n "${3:-}" ]; then sed -n "/$3/,\$p" "$file"; else cat "$file"; fi
    [ -z "$(tail -c 1 "$file")" ] || echo  # the file's last line, ended
    local err
    err=$(plain "$OUT/$2.err" 20 | grep -v '^[[:space:]]*$')
    if grep -q "^$2 .*rc [^0 ]" "$OUT/steps.txt" && [ -n "$err" ]; then
        echo "-- its stderr, last lines:"
        echo "$err"
    fi
}
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^??' && echo " (with local changes)")
{
    echo "detcost first GPU run: paste this file into a bug report (the folder holds the rest: $OUT)"
    echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ); checkout $COMMIT${DIRTY:-}; host $(hostname)"
    echo "scripts/first_gpu_run.sh $ARGS"
    echo "budget $BUDGET s (no trial starts past it); wall $((SECONDS - START)) s"
    echo
    echo "== steps: exit code, seconds, command"
    cat "$OUT/steps.txt"
    section "python and packages" python
    section "nvidia-smi" nvidia-smi
    section "detcost selfcheck --device $DEVICE" selfcheck
    if [ -s "$OUT/dryrun-small.txt" ]; then
        echo
        echo "== the small sweep's --dry-run (assumed figures), to hold against the wall time it took"
        grep -A1 'trials planned; rough estimate' "$OUT/dryrun-small.txt"
    fi
    section "the small sweep ($WORKLOADS, settings ${SETTINGS[1]:-the seven defaults}, repeats $REPEATS; its measured time per trial beside the assumed)" sweep
    section "the default sweep's --dry-run: the assumed figures" dryrun-default "trials planned; rough estimate"
    section "the default sweep's --dry-run, learnt from the small sweep (--estimate-from)" dryrun-learned \
        "trials planned; rough estimate"
    section "detcost env --device $DEVICE" env
} >"$OUT/summary.txt"

echo "first_gpu_run.sh: done in $((SECONDS - START)) s; paste $OUT/summary.txt into a bug report" >&2
# 0 when every step ran to its end: a failed check (selfcheck 4) or a sweep stopped by the budget (3) are findings
awk '$2 == "rc" && $3 != 0 && !($1 == "selfcheck" && $3 == 4) && !($1 == "sweep" && $3 == 3) {bad = 1}
     $2 == "not" {bad = 1} END {exit bad}' "$OUT/steps.txt"
