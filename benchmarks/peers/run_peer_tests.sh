#!/usr/bin/env bash
# Run the tests that need OmniSafe or safety-gymnasium, plus the adapter tests on gymnasium 0.29,
# in the peer env.
#
# Usage: bash benchmarks/peers/run_peer_tests.sh [pytest args...]
#   The peer env (default .peers/omnisafe, or PEER_VENV) is built first if it is missing.
#   Extra arguments go to pytest.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv_dir="${PEER_VENV:-$repo_root/.peers/omnisafe}"
if [[ ! -x "$venv_dir/bin/python" ]]; then
    bash "$repo_root/benchmarks/peers/setup_omnisafe.sh" "$venv_dir"
fi
cd "$repo_root"
# the interop tests must run here, not be skipped: fail early if omnisafe does not import
"$venv_dir/bin/python" -c "import omnisafe, cmdp.interop.omnisafe" 2>/dev/null || {
    echo "omnisafe does not import in $venv_dir; rerun benchmarks/peers/setup_omnisafe.sh" >&2
    exit 1
}
exec "$venv_dir/bin/python" -m pytest -q \
    tests/test_interop_omnisafe.py tests/test_safety_gymnasium.py \
    tests/test_gym_adapter.py tests/test_registry.py tests/test_wrappers.py tests/test_engine.py \
    "$@"
