#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_check.sh installs on an offline GPU machine (benchmarks/gpu_wheels.txt)
# into a git-ignored folder, for Python 3.12 on x86-64 Linux. Run it where pip reaches PyPI, then carry the
# folder to the GPU machine beside the working tree.
#
# Usage: bash benchmarks/gpu_wheels.sh [FOLDER]     # default .whl (the folder gpu_check.sh looks in)
#        PYTHON=python3.12 bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
python=${PYTHON:-python3}
mkdir -p "$dest"
grep -v '^#' benchmarks/gpu_wheels.txt | while read -r spec _site _why; do
    [[ -n $spec ]] || continue
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --dest "$dest" "$spec"
done
ls -l "$dest"
