#!/usr/bin/env bash
# Build the peer environment for comparing cmdp with OmniSafe.
#
# omnisafe 0.5.0 and safety-gymnasium 1.0.0 cannot be installed the ordinary way on
# Python 3.11: they pin pygame 2.1.0 and gymnasium 0.28.1, and their dataclasses use
# numpy-array defaults that Python 3.11 rejects. So they live in their own virtual env:
# their run-time dependencies are installed at versions that work, the three packages
# themselves with --no-deps, and benchmarks/peers/omnisafe_compat.py patches the
# dataclass defaults at import time. cmdp is installed editable into the same env so
# the side-by-side benchmark and the interop tests can import both.
#
# Usage: bash benchmarks/peers/setup_omnisafe.sh [VENV_DIR]
#   VENV_DIR defaults to .peers/omnisafe inside the repository; PYTHON picks the
#   interpreter (default python3.11, else python3). Running it again only installs what
#   is missing.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv_dir="${1:-$repo_root/.peers/omnisafe}"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3)}"

say() { printf '[setup_omnisafe] %s\n' "$*"; }

if [[ -x "$venv_dir/bin/python" ]]; then
    say "venv exists: $venv_dir"
else
    say "creating venv $venv_dir with $("$python_bin" --version 2>&1) ($python_bin)"
    mkdir -p "$(dirname "$venv_dir")"
    "$python_bin" -m venv "$venv_dir"
fi
py="$venv_dir/bin/python"
pip=("$py" -m pip --disable-pip-version-check)
# Python checks run from / so that the repository (the current directory) is not on
# sys.path: otherwise `import cmdp` would find the source tree, not the installed package.
run_py() { (cd / && "$py" "$@"); }

# gymnasium is held at 0.29.1 for every step below: safety-gymnasium 1.0.0 needs the
# 0.29 API, and cmdp must be shown to work on it too.
constraints="$venv_dir/peer-constraints.txt"
printf 'gymnasium==0.29.1\ntorch==2.13.0\n' >"$constraints"

# Each requirement is checked before installing, so a second run is quick and says so.
missing=()
have() {  # have DIST VERSION_SPEC: is DIST installed and does it satisfy the spec?
    run_py - "$1" "$2" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
from packaging.specifiers import SpecifierSet
try:
    installed = version(sys.argv[1])
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if SpecifierSet(sys.argv[2]).contains(installed, prereleases=True) else 1)
PY
}
run_py -c "import packaging" 2>/dev/null || "${pip[@]}" install -q packaging

# Run-time dependencies of omnisafe / safety-gymnasium at versions that work on 3.11.
# torch is pinned exactly: this machine has that CPU wheel on disk.
peer_deps=(
    "torch|==2.13.0" "numpy|>=2,<3" "gymnasium|==0.29.1" "mujoco|>=3,<5"
    "pettingzoo|==1.24.3" "xmltodict|" "pyyaml|" "imageio|" "wandb|" "typer|" "rich|"
    "seaborn|" "pandas|" "matplotlib|" "moviepy|" "gdown|"
)
for entry in "${peer_deps[@]}"; do
    name="${entry%%|*}"; spec="${entry#*|}"
    have "$name" "$spec" || missing+=("$name$spec")
done
if ((${#missing[@]})); then
    say "installing peer dependencies: ${missing[*]}"
    "${pip[@]}" install -q -c "$constraints" "${missing[@]}"
else
    say "peer dependencies already installed"
fi

# The peers themselves, without their (unsatisfiable) pins.
missing=()
for entry in "safety-gymnasium|==1.0.0" "gymnasium-robotics|==1.2.2" "omnisafe|==0.5.0"; do
    name="${entry%%|*}"; spec="${entry#*|}"
    have "$name" "$spec" || missing+=("$name$spec")
done
if ((${#missing[@]})); then
    say "installing peers with --no-deps: ${missing[*]}"
    "${pip[@]}" install -q --no-deps "${missing[@]}"
else
    say "omnisafe, safety-gymnasium, gymnasium-robotics already installed"
fi

# cmdp itself (editable) and those of its dependencies the peer env lacks, plus pytest
# for the interop tests; the constraints file keeps gymnasium at 0.29.1.
if run_py -c "import cmdp, sys; sys.exit(0 if cmdp.__file__.startswith('$repo_root/') else 1)" 2>/dev/null; then
    say "cmdp already installed editable from $repo_root"
else
    say "installing cmdp editable from $repo_root (--no-deps)"
    "${pip[@]}" install -q --no-deps -e "$repo_root"
fi
cmdp_deps=$(run_py - <<'PY'
import re
from importlib.metadata import PackageNotFoundError, requires, version
from packaging.requirements import Requirement
missing = []
for text in (requires("cmdp") or []) + ["pytest>=8"]:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        ok = req.specifier.contains(version(req.name), prereleases=True)
    except PackageNotFoundError:
        ok = False
    if not ok:
        missing.append(str(req))
print(" ".join(missing))
PY
)
if [[ -n "$cmdp_deps" ]]; then
    say "installing cmdp dependencies: $cmdp_deps"
    # shellcheck disable=SC2086
    "${pip[@]}" install -q -c "$constraints" $cmdp_deps
else
    say "cmdp dependencies already satisfied"
fi

# Every interpreter of this env installs the dataclass patch at start-up (a .pth file),
# so `import safety_gymnasium` works there from any script, cmdp.make included.
site_dir=$(run_py -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
pth_file="$site_dir/cmdp_omnisafe_compat.pth"
pth_text=$(printf '%s\nimport omnisafe_compat\n' "$repo_root/benchmarks/peers")
if [[ -f "$pth_file" && "$(cat "$pth_file")" == "$pth_text" ]]; then
    say "start-up hook already in place: $pth_file"
else
    say "writing start-up hook $pth_file"
    printf '%s\n' "$pth_text" >"$pth_file"
fi

# A smoke check that proves the env works, not only that pip succeeded.
run_py - <<'PY'
import gymnasium, omnisafe, safety_gymnasium, torch, cmdp
env = safety_gymnasium.make("SafetyPointGoal1-v0")
env.reset(seed=0)
env.step(env.action_space.sample())
print(f"[setup_omnisafe] ok: omnisafe {omnisafe.__version__}, safety-gymnasium "
      f"{safety_gymnasium.__version__}, gymnasium {gymnasium.__version__}, "
      f"torch {torch.__version__}, cmdp {cmdp.__version__}")
PY
say "done: use $py"
