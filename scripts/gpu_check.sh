#!/usr/bin/env bash
# The GPU proof, in one command, on a machine with one CUDA GPU and no network (budget: under 8 minutes).
#
#   bash scripts/gpu_wheels.sh                 # here, once: the packages that machine lacks, into .whl/site
#   bash scripts/gpu_check.sh                  # there, with `.whl` carried beside the working tree
#
# Stages, each under its own time limit so that one slow stage cannot eat the others' time:
#   1. environment: GPU, driver, torch/CUDA versions, and that every package finetune needs imports;
#   2. `pytest -m gpu` (tests/gpu/test_gpu.py: the fused loss head, packed-row isolation and a 4-bit DoRA run on CUDA);
#   3. scripts/bench_gpu.py at the seed recipe's settings (Llama-3.1-8B-shaped random weights, NF4 QLoRA + DoRA r64,
#      packed 4096-token rows) for GPU_CHECK_STEPS optimizer steps per variant (default 4: what fits the budget).
# Writes one JSON, $OUT/gpu_check.json (or ./gpu_check.json without $OUT), with every stage's result, and prints it.
# GPU_CHECK_DRY_RUN=1 runs the same stages on CPU with tiny shapes (no GPU needed; nothing is measured).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RESULTS=${OUT:-$ROOT}
WORK=${GPU_CHECK_WORKDIR:-/tmp/gpu_check}
STEPS=${GPU_CHECK_STEPS:-4}
DRY=${GPU_CHECK_DRY_RUN:-0}
PYTHON=${PYTHON:-python3}
mkdir -p "$RESULTS" "$WORK"
# .whl/site holds CPython 3.12 builds (scripts/gpu_wheels.sh): used only by a 3.12 interpreter
if [ -d "$ROOT/.whl/site" ] && "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  export PYTHONPATH="$ROOT/src:$ROOT/.whl/site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
started=$(date +%s)

echo "== 1/3 environment"
timeout 120 "$PYTHON" - "$WORK/env.json" <<'EOF'
import importlib, json, subprocess, sys
env = {"python": sys.version.split()[0], "imports": {}}
try:
    import torch
    env.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_bytes=props.total_memory)
except Exception as exc:  # noqa: BLE001 - reported, not raised
    env["torch_error"] = repr(exc)
for name in ("transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets", "pydantic", "yaml",
             "llama_models", "tiktoken", "matplotlib", "finetune"):
    try:
        module = importlib.import_module(name)
        env["imports"][name] = getattr(module, "__version__", "ok")
    except Exception as exc:  # noqa: BLE001 - a missing package is the finding
        env["imports"][name] = f"FAILED: {exc!r}"
try:
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                        "--format=csv,noheader"], capture_output=True, text=True,
                                       timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError):
    env["nvidia_smi"] = None
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env, indent=1))
EOF

echo "== 2/3 pytest -m gpu"
tests=tests; [ "$DRY" = 1 ] && tests=tests/gpu/test_gpu.py  # on CPU they all skip: this checks the plumbing
# shellcheck disable=SC2086
timeout 240 "$PYTHON" -m pytest $tests -m gpu -q -p no:cacheprovider --junitxml="$WORK/pytest.xml" \
  2>&1 | tee "$WORK/pytest.log" | tail -25
echo "pytest exit: ${PIPESTATUS[0]}" | tee -a "$WORK/pytest.log"

echo "== 3/3 scripts/bench_gpu.py (seed settings, $STEPS steps per variant)"
rm -f "$WORK/bench_gpu.json"
if [ "$DRY" = 1 ]; then bench_args=(--dry-run --steps 2); else bench_args=(--steps "$STEPS"); fi
timeout $((480 - ($(date +%s) - started))) "$PYTHON" scripts/bench_gpu.py "${bench_args[@]}" \
  --workdir "$WORK/bench" --json "$WORK/bench_gpu.json" 2>&1 | tee "$WORK/bench.log" | grep -v '^RESULT ' | tail -20
echo "bench exit: ${PIPESTATUS[0]}" | tee -a "$WORK/bench.log"

"$PYTHON" - "$WORK" "$RESULTS/gpu_check.json" "$started" <<'EOF'
import json, sys, time
import xml.etree.ElementTree as ET
from pathlib import Path

work, target, started = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
def read_json(name):
    path = work / name
    return json.loads(path.read_text()) if path.is_file() else None
pytest = {"log_tail": (work / "pytest.log").read_text().splitlines()[-30:] if (work / "pytest.log").is_file() else []}
if (work / "pytest.xml").is_file():
    suite = ET.parse(work / "pytest.xml").getroot().find("testsuite")
    suite = suite if suite is not None else ET.parse(work / "pytest.xml").getroot()
    pytest.update({key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")})
    pytest["failed"] = [case.get("classname", "") + "::" + case.get("name", "") for case in suite.iter("testcase")
                        if case.find("failure") is not None or case.find("error") is not None]
bench_log = (work / "bench.log").read_text().splitlines() if (work / "bench.log").is_file() else []
report = {"environment": read_json("env.json"), "pytest": pytest, "bench_gpu": read_json("bench_gpu.json"),
          "bench_log_tail": [line for line in bench_log if not line.startswith("RESULT ")][-20:],
          "wall_s": round(time.time() - started, 1)}
target.write_text(json.dumps(report, indent=1) + "\n")
print(json.dumps(report, indent=1))
EOF
