#!/usr/bin/env bash
# detcost's first run on a GPU, in one command from a clone, in about eight minutes:
#
#     python -m pip install -e '.[gpu]'        # once: detcost's dependencies (keeps your torch)
#     scripts/first_gpu_run.sh                 # then paste FOLDER/summary.txt into a bug report
#
# It installs nothing (a GPU box without a network will do): it checks that this Python
# has what pyproject.toml declares for it (torch 2.4 or newer and detcost's dependencies;
# where one is missing or too old it says which in one line, with the command that
# installs them and how to do it offline) and runs detcost from this checkout
# (PYTHONPATH). In order:
#   1. detcost env and `detcost selfcheck --device cuda`: the CUDA path, one line a check,
#      each in summary.txt as soon as it is decided; the selfcheck may take the budget
#      less the small sweep's half and half a minute for the dry runs (at least 30 s) and
#      is stopped there, its lines kept;
#   2. the default sweep's --dry-run: its plan and the time the assumed figures give;
#   3. one small real sweep: resnet18 (a classifier) and unet (per-pixel labels, which
#      strict cannot run), every default setting, three repeats, the A/A control, the
#      audit and the profiled trials; it starts no trial once the budget is spent (--max-time);
#   4. the default sweep's --dry-run again, learning from that sweep's results
#      (--estimate-from): this machine's measured time per trial beside the assumed;
#   5. summary.txt, what to paste into a bug report, written as the steps end: a run cut
#      short keeps what it got; the steps' exit codes and the wall time end it.
# Every output, the results file and the report go in one folder: $OUT where set, else
# reports/gpu/first-run-<time>/ in the checkout; the script prints it.
#
# Options: --device D (default cuda; cpu runs the same steps on the CPU), --quick (small
# sizes and few steps: the CPU test's), --budget S (seconds after which no trial starts,
# default 420; the small sweep keeps half of it), --selfcheck-s S (seconds the selfcheck
# may take, instead of its share), --workloads W (default resnet18,unet), --settings S
# (default: the seven), --repeats R (default 3), --allow-busy (do not wait for a busy
# machine). Environment: PYTHON (default python3, else python), OUT.
set -u -o pipefail
# No array here is ever empty: bash before 4.4 takes "${a[@]}" of an empty array for an
# unbound variable under set -u (tests/test_first_gpu_run.py checks the script for it).

DEVICE=cuda
QUICK=0
BUDGET=420
SELFCHECK_S=
WORKLOADS=resnet18,unet
SETTINGS=
REPEATS=3
ALLOW_BUSY=0
ARGS="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --budget) BUDGET=$2; shift 2 ;;
        --selfcheck-s) SELFCHECK_S=$2; shift 2 ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        --settings) SETTINGS=$2; shift 2 ;;
        --repeats) REPEATS=$2; shift 2 ;;
        --allow-busy) ALLOW_BUSY=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "first_gpu_run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in "$BUDGET" "$REPEATS" "${SELFCHECK_S:-1}"; do
    case "$n" in ''|*[!0-9]*) echo "first_gpu_run.sh: --budget, --selfcheck-s and --repeats take whole numbers, got $n" >&2; exit 2 ;; esac
done
if [ "${SELFCHECK_S:-1}" -lt 1 ]; then  # timeout 0 would mean no limit at all
    echo "first_gpu_run.sh: --selfcheck-s takes 1 or more seconds" >&2; exit 2
fi

START=$SECONDS
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/reports/gpu/first-run-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || { echo "first_gpu_run.sh: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
echo "first_gpu_run.sh: writing everything to $OUT" >&2
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
DETCOST=("$PYTHON" -m detcost)
RUN=("$PYTHON" -m detcost run --device "$DEVICE")
[ "$QUICK" = 1 ] && RUN+=(--quick --steps 4 --warmup 1)
SMALL=(--workloads "$WORKLOADS" --repeats "$REPEATS" --seeds 0)
[ -n "$SETTINGS" ] && SMALL+=(--settings "$SETTINGS")
SELFCHECK=("$PYTHON" -m detcost selfcheck --device "$DEVICE")
[ "$QUICK" = 1 ] && SELFCHECK+=(--quick)
GUARD=(--wait-quiet 30)
[ "$ALLOW_BUSY" = 1 ] && GUARD=(--allow-busy)
SWEEP_KEEPS=$((BUDGET / 2))  # the small sweep's half of the budget: the selfcheck never eats it
DRY_RUNS_S=30                # the two dry runs between the selfcheck and the sweep
HAS_TIMEOUT=0
command -v timeout >/dev/null 2>&1 && HAS_TIMEOUT=1
SUMMARY=$OUT/summary.txt
: >"$OUT/steps.txt"

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^??' && echo " (with local changes)")
{
    echo "detcost first GPU run: paste this file into a bug report (the folder holds the rest: $OUT)"
    echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ); checkout $COMMIT${DIRTY:-}; host $(hostname)"
    echo "scripts/first_gpu_run.sh $ARGS"
    echo "budget $BUDGET s (no trial starts past it; the small sweep keeps $SWEEP_KEEPS s of it)"
    echo "each step's section follows as it ends (the selfcheck's line by line); the steps and the wall time end the file"
} >"$SUMMARY"

# in_out LIMIT COMMAND...: COMMAND in $OUT, killed after LIMIT seconds (exit 124) where
# `timeout` exists (with the processes it started: timeout signals its process group)
in_out() {
    local limit=$1
    shift
    if [ "$HAS_TIMEOUT" = 1 ]; then
        (cd "$OUT" && timeout -k 10 "$limit" "$@")
    else
        (cd "$OUT" && "$@")
    fi
}

# step NAME LIMIT_S COMMAND...: COMMAND in $OUT, its stdout in NAME.txt (and, with STREAM
# set, in summary.txt line by line as it comes) and its stderr in NAME.err, killed after
# LIMIT_S seconds; a line in steps.txt: rc, seconds and the command (or $LABEL where set).
# RC and LIMIT keep the step's exit code and limit for its section.
step() {
    local name=$1 t0=$SECONDS label
    LIMIT=$2
    shift 2
    label=${LABEL:-$*}
    echo "first_gpu_run.sh: $name ($label)" >&2
    if [ -n "${STREAM:-}" ]; then
        in_out "$LIMIT" "$@" 2>"$OUT/$name.err" | tee "$OUT/$name.txt" >>"$SUMMARY"
        RC=${PIPESTATUS[0]}
    else
        in_out "$LIMIT" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err"
        RC=$?
    fi
    printf '%-14s rc %-3s %4s s   %s\n' "$name" "$RC" "$((SECONDS - t0))" "$label" >>"$OUT/steps.txt"
    return "$RC"
}

left() { echo $((BUDGET - (SECONDS - START))); }

# ---- summary.txt, one section as each step ends -----------------------------------------
plain() { tr '\r' '\n' <"$1" | grep -v '[0-9]%|' | tail -n "${2:-20}"; }  # stderr less its progress bars
heading() { printf '\n== %s\n' "$1" >>"$SUMMARY"; }
# ended NAME: the end of the step's section: its output's last line ended; where it failed,
# its stderr's last lines; where it was stopped at its limit, a line that says so
ended() {
    local file=$OUT/$1.txt err
    [ -z "$(tail -c 1 "$file")" ] || echo >>"$SUMMARY"
    err=$(plain "$OUT/$1.err" 20 | grep -v '^[[:space:]]*$')
    if [ "$RC" != 0 ] && [ -n "$err" ]; then
        printf -- '-- its stderr, last lines:\n%s\n' "$err" >>"$SUMMARY"
    fi
    if [ "$RC" = 124 ] || [ "$RC" = 137 ]; then
        echo "-- stopped at its limit of $LIMIT s (rc $RC): what it would have printed after the last line above is missing" \
            >>"$SUMMARY"
    fi
}
# section NAME TITLE [FROM]: the step's output (from the line matching FROM) under TITLE
section() {
    local file=$OUT/$1.txt
    [ -e "$file" ] || return 0
    heading "$2"
    if [ -n "${3:-}" ]; then sed -n "/$3/,\$p" "$file"; else cat "$file"; fi >>"$SUMMARY"
    ended "$1"
}

# ---- what is installed: nothing is installed here, so say what is missing --------------
# What pyproject.toml declares for this Python (markers such as tomli's python_version <
# '3.11' included), each imported and its version held against its range. Read with
# tomllib, else tomli, else (Python 3.10 without tomli, which is then named missing) the
# dependencies array line by line; markers and ranges with packaging (pip's own where
# packaging is not installed), else python_version markers by hand and no ranges.
IFS= read -r -d '' CHECK <<'PY' || true
import importlib
import importlib.metadata as metadata
import operator
import platform
import re
import sys


def declared(pyproject):
    with open(pyproject, encoding="utf-8") as f:
        text = f.read()
    try:
        import tomllib
    except ImportError:
        try:
            import tomli as tomllib
        except ImportError:
            block = re.search(r"^dependencies = \[$(.*?)^\]$", text, re.M | re.S).group(1)
            return re.findall(r'^\s*"([^"]+)"', block, re.M)
    return tomllib.loads(text)["project"]["dependencies"]


try:
    from packaging.requirements import Requirement
except ImportError:
    try:
        from pip._vendor.packaging.requirements import Requirement
    except ImportError:
        Requirement = None
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne}


def needed(text):
    """(name, range or None) where the requirement applies to this Python, else None."""
    if Requirement is not None:
        req = Requirement(text)
        return (req.name, req.specifier) if req.marker is None or req.marker.evaluate() else None
    name, _, marker = text.partition(";")
    m = re.fullmatch(r"\s*python_version\s*(<=|>=|<|>|==|!=)\s*['\"](\d+)\.(\d+)['\"]\s*", marker)
    if m and not OPS[m[1]](sys.version_info[:2], (int(m[2]), int(m[3]))):
        return None
    return re.match(r"\s*([A-Za-z0-9._-]+)", name)[1], None


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


# the module an installed distribution provides (adjustText's is adjustText, not adjusttext)
MODULE_OF = {}
for mod, dists in metadata.packages_distributions().items():
    for dist in dists:
        MODULE_OF.setdefault(canonical(dist), mod)

found, missing = [], []
for text in declared(sys.argv[1] + "/pyproject.toml"):
    need = needed(text)
    if need is None:
        continue
    name, spec = need
    wanted = text.partition(";")[0].strip()
    module_name = MODULE_OF.get(canonical(name), name.lower().replace("-", "_"))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # absent, or present but broken (a CUDA build without its libraries)
        absent = isinstance(exc, ModuleNotFoundError) and exc.name == module_name
        missing.append((wanted, "not installed" if absent else f"{type(exc).__name__}: {exc}".splitlines()[0]))
        continue
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        version = str(getattr(module, "__version__", "?"))
    try:
        too_old = spec is not None and not spec.contains(version, prereleases=True)
    except Exception:  # a version packaging cannot read: taken as it is
        too_old = False
    if too_old:
        missing.append((wanted, f"{version} installed"))
    else:
        found.append(f"{name} {version}")

torch = sys.modules.get("torch")
if torch is None:
    print(f"python {sys.version.split()[0]}, no torch, {sys.executable}")
else:
    cuda = getattr(getattr(torch, "version", None), "cuda", None)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {cuda}), {sys.executable}")
print("detcost's dependencies (pyproject.toml, for this Python): " + (", ".join(found) or "none found"))
try:
    import pynvml  # noqa: F401

    print("nvidia-ml-py: installed")
except ImportError:
    print("nvidia-ml-py: missing (optional: detcost asks nvidia-smi for the GPU's other processes instead)")
if missing:
    wants = " ".join(f"'{wanted}'" for wanted, _ in missing)
    why = "; ".join(f"{wanted} ({reason})" for wanted, reason in missing)
    print(f"missing: {why}; install them with: {sys.executable} -m pip install {wants}")
    here = f"Python {sys.version_info[0]}.{sys.version_info[1]} on {platform.system()} {platform.machine()}"
    print(
        f"no network here? on a machine with one and the same {here}: python -m pip download -d detcost-wheels "
        f"{wants}; copy detcost-wheels here, then: {sys.executable} -m pip install --no-index "
        f"--find-links detcost-wheels {wants}"
    )
sys.exit(3 if missing else 0)
PY
LABEL="$PYTHON: what pyproject.toml declares (torch 2.4 or newer, detcost's dependencies), nvidia-ml-py" \
    step python 120 "$PYTHON" -c "$CHECK" "$ROOT"
READY=$RC
section python "python and packages"
if command -v nvidia-smi >/dev/null 2>&1; then
    step nvidia-smi 30 nvidia-smi --query-gpu=name,driver_version,memory.total,persistence_mode,clocks.max.sm \
        --format=csv
    section nvidia-smi nvidia-smi
fi

if [ "$READY" = 0 ]; then
    step env 60 "${DETCOST[@]}" env --device "$DEVICE"
    section env "detcost env --device $DEVICE"
    # The selfcheck's share: the budget less the sweep's half and the dry runs, at least
    # half a minute (its first lines are worth it where the budget is small). Stopped
    # there, its lines printed so far stay: each is in summary.txt as it is decided.
    SHARE=$(($(left) - SWEEP_KEEPS - DRY_RUNS_S))
    [ "$SHARE" -ge 30 ] || SHARE=30
    SHARE=${SELFCHECK_S:-$SHARE}
    heading "detcost selfcheck --device $DEVICE (its share: $SHARE s)"
    LABEL="${SELFCHECK[*]} (its share: $SHARE s)" STREAM=1 step selfcheck "$SHARE" "${SELFCHECK[@]}"
    ended selfcheck
    if [ "$RC" = 124 ] || [ "$RC" = 137 ]; then
        echo "-- the checks after the last line above did not run; --selfcheck-s S gives the selfcheck S seconds" \
            >>"$SUMMARY"
    fi
    step dryrun-default 120 "${RUN[@]}" --dry-run --allow-busy --results "$OUT/default-sweep.jsonl"
    section dryrun-default "the default sweep's --dry-run: the assumed figures" "trials planned; rough estimate"
    # the small sweep's own estimate, to hold against the wall time it takes
    step dryrun-small 120 "${RUN[@]}" "${SMALL[@]}" --dry-run --allow-busy --results "$OUT/results.jsonl"
    heading "the small sweep's --dry-run (assumed figures), to hold against the wall time it took"
    grep -A1 'trials planned; rough estimate' "$OUT/dryrun-small.txt" >>"$SUMMARY"
    ended dryrun-small
    TITLE="the small sweep ($WORKLOADS, settings ${SETTINGS:-the seven defaults}, repeats $REPEATS; its measured time per trial beside the assumed)"
    if [ "$(left)" -gt 30 ]; then
        # --max-time: no trial starts after the budget; a hung trial is killed at --timeout, and
        # the whole sweep two and a half minutes past the budget (its records are kept as they come)
        step sweep $(($(left) + 150)) "${RUN[@]}" "${SMALL[@]}" -q "${GUARD[@]}" --max-time "$(left)" --timeout 120 \
            --results "$OUT/results.jsonl" --report "$OUT/report"
        section sweep "$TITLE"
    else
        echo "sweep          not started: the budget ($BUDGET s) was spent before it" >>"$OUT/steps.txt"
        heading "$TITLE"
        echo "not started: the budget ($BUDGET s) was spent before it" >>"$SUMMARY"
    fi
    if [ -s "$OUT/results.jsonl" ]; then
        step dryrun-learned 120 "${RUN[@]}" --dry-run --allow-busy --results "$OUT/default-sweep.jsonl" \
            --estimate-from "$OUT/results.jsonl"
        section dryrun-learned "the default sweep's --dry-run, learnt from the small sweep (--estimate-from)" \
            "trials planned; rough estimate"
    fi
fi

# ---- the end of summary.txt: the steps and the wall time ---------------------------------
{
    echo
    echo "== steps: exit code, seconds, command"
    cat "$OUT/steps.txt"
    echo "wall $((SECONDS - START)) s"
} >>"$SUMMARY"

echo "first_gpu_run.sh: done in $((SECONDS - START)) s; paste $SUMMARY into a bug report" >&2
# 0 when every step ran to its end: a failed check (selfcheck 4) or a sweep stopped by the budget (3) are findings
awk '$2 == "rc" && $3 != 0 && !($1 == "selfcheck" && $3 == 4) && !($1 == "sweep" && $3 == 3) {bad = 1}
     $2 == "not" {bad = 1} END {exit bad}' "$OUT/steps.txt"
