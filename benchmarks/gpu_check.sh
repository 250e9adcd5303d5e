#!/usr/bin/env bash
# The GPU check, in one go on a bare, offline GPU machine (one H100: under 8 minutes): install this working
# tree onto the machine's Python (no venv, --no-deps) and the wheels carried beside it, report the machine
# (spikformer doctor), run the GPU-marked tests, then the benchmark (benchmarks/bench_gpu.py).
#
# Usage: bash benchmarks/gpu_check.sh [OUT]            # default OUT: runs/gpu-check
#        bash benchmarks/gpu_check.sh --dry-run [OUT]  # on any CPU machine: the same plan, nothing installed
#
# Before, where PyPI is reachable: bash benchmarks/gpu_wheels.sh (downloads into .whl/, which must travel with
# the working tree). Writes into OUT: gpu_check.json (the record: machine, tests, every row) and gpu_check.md
# (the table), both rewritten after every benchmark row; doctor.txt, tests.log, install.log, workers.log.
# Settings (environment): PYTHON (python3), GPU_CHECK_WHEELS (.whl), GPU_CHECK_SITES (/tmp/spikformer-gpu-check,
# where the SpikingJelly versions are installed side by side), GPU_CHECK_SECONDS (450: the whole check),
# GPU_CHECK_TEST_SECONDS (120), GPU_CHECK_BENCH_ARGS (more bench_gpu.py options, e.g. --row-seconds 40).
# The dry run runs in CI (tests/test_bench_gpu.py). Exit status: 1 if the tests failed or the benchmark wrote
# no record, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
out=runs/gpu-check
for arg in "$@"; do
    case $arg in
        --dry-run) dry=1 ;;
        -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $arg (options: --dry-run, --help)" >&2; exit 2 ;;
        *) out=$arg ;;
    esac
done
python=${PYTHON:-python3}
wheels=${GPU_CHECK_WHEELS:-.whl}
sites=${GPU_CHECK_SITES:-/tmp/spikformer-gpu-check}
total=${GPU_CHECK_SECONDS:-450}
test_seconds=${GPU_CHECK_TEST_SECONDS:-120}
start=$SECONDS
mkdir -p "$out"
out=$(cd "$out" && pwd)
: >"$out/install.log"

say() { echo "== $*"; }
act() {  # run a command, or in a dry run say it
    if ((dry)); then echo "would run: $*"; else "$@" >>"$out/install.log" 2>&1; fi
}

# 1. The wheels: which are needed, which are here, where each goes.
say "wheels ($wheels, listed in benchmarks/gpu_wheels.txt)"
missing=0
declare -A site_wheels=()
while read -r spec site why; do
    [[ -z $spec || $spec == \#* ]] && continue
    name=${spec%%==*} version=${spec#*==}
    file=$(ls "$wheels/${name//-/_}-$version-"*.whl 2>/dev/null | head -n 1)
    if [[ -n $file ]]; then
        echo "  $spec -> $site: $file ($why)"
        [[ $site == build ]] || site_wheels[$site]+="$file "
    else
        echo "  $spec -> $site: missing from $wheels (bash benchmarks/gpu_wheels.sh) ($why)"
        missing=1
    fi
done <benchmarks/gpu_wheels.txt
((missing)) && echo "  rows needing a missing wheel record that they could not run; the rest of the check runs"

# 2. What the machine's Python must already hold (the GPU image does; nothing is fetched).
say "this Python: $($python -c 'import sys; print(sys.executable, sys.version.split()[0])')"
$python - <<'PY'
import importlib
needed = ["torch", "torchvision", "timm", "huggingface_hub", "safetensors", "yaml", "numpy", "sklearn", "tqdm",
          "pytest"]
optional = ["triton", "cupy"]  # the GPU image has both; without them the rows say which backend ran instead
for name in needed + optional:
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')}")
    except Exception as error:
        print(f"  {name}: {'MISSING' if name in needed else 'absent'} ({type(error).__name__}: {error})")
PY

# 3. Install: our package from the working tree (setuptools from the carried wheels when building offline),
#    each SpikingJelly into its own folder (the two versions share a package name).
say "install (log: $out/install.log)"
if ((dry)); then
    echo "would run: $python -m pip install --no-deps --no-index --find-links $wheels ."
else
    if ! $python -m pip install --no-deps --no-index --find-links "$wheels" . >>"$out/install.log" 2>&1; then
        echo "  build isolation found no setuptools>=77 in $wheels; building with this Python's own"
        act $python -m pip install --no-deps --no-build-isolation .
    fi
fi
for site in "${!site_wheels[@]}"; do
    # shellcheck disable=SC2086  # the list is file names without spaces
    act $python -m pip install --no-deps --no-index --no-compile --upgrade --target "$sites/$site" ${site_wheels[$site]}
done
if ((dry)); then
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # the working tree, as the install would provide
elif ! $python -c "import spikformer" 2>>"$out/install.log"; then
    echo "gpu_check.sh: the package did not install (see $out/install.log)" >&2
    exit 1
fi

# 4. The machine as the package sees it.
say "spikformer doctor"
$python -m spikformer doctor 2>&1 | tee "$out/doctor.txt"

# 5. The GPU-marked tests (a dry run collects them only).
mapfile -t files < <(grep -l "pytest.mark.gpu" tests/test_*.py)
say "GPU tests: ${files[*]}"
if ((dry)); then
    $python -m pytest -q -p no:cacheprovider -o addopts= -m gpu --collect-only "${files[@]}" >"$out/tests.log" 2>&1
else
    timeout "$test_seconds" $python -m pytest -q -p no:cacheprovider -o addopts= -m gpu -rfEs \
        "${files[@]}" >"$out/tests.log" 2>&1
fi
tests_status=$?
summary=$(grep -E "passed|failed|error|skipped|collected|no tests ran" "$out/tests.log" | tail -n 1)
((tests_status == 124)) && summary="stopped after ${test_seconds} s: $summary"
echo "  $summary (exit $tests_status; log: $out/tests.log)"

# 6. The benchmark, with what is left of the time.
budget=$((total - (SECONDS - start) - 20))
((budget < 60)) && budget=60
say "benchmark (budget ${budget} s)"
bench=(benchmarks/bench_gpu.py --out "$out" --budget "$budget" --tests "$summary")
for site in reference peer; do
    [[ -d $sites/$site ]] && bench+=(--site "$site=$sites/$site")
done
((dry)) && bench+=(--dry-run)
# shellcheck disable=SC2086  # extra options split on spaces
$python "${bench[@]}" ${GPU_CHECK_BENCH_ARGS:-} 2>&1 | tail -n 3

say "done in $((SECONDS - start)) s: $(ls "$out" | tr '\n' ' ')"
if [[ ! -s $out/gpu_check.json ]]; then
    echo "gpu_check.sh: the benchmark wrote no record (see $out/workers.log)" >&2
    exit 1
fi
((tests_status == 0)) || exit 1  # (a dry run's: the GPU tests must at least be collected)
exit 0
