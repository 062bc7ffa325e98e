#!/usr/bin/env bash
# reprocls on one CUDA GPU, in under 8 minutes on an H200 (the steps share a 450 s budget; the recipe gets what is left).
#
# What it checks, in order (each later step runs even if an earlier one failed; the exit status says if any did):
#   1. preflight: python, torch, torchvision, CUDA/cuDNN/NCCL and the GPU; that torch, torchvision, numpy, PIL, yaml,
#      safetensors, tqdm, matplotlib and tensorboard import (exit 3 naming the missing ones); pytest is optional;
#      that Fashion-MNIST is in .data/FashionMNIST/raw/.
#   2. CUDA is available to torch (exit 4 with the reason when it is not, e.g. on the CPU machine).
#   3. tests/test_cuda.py: fp16 + GradScaler through train_one_epoch, a skipped fp16 step leaving the lr schedule and
#      the weights alone, bf16 autocast against fp32, channels_last against contiguous, auto precision and device,
#      the in-memory loader on the GPU. Without pytest, a small runner in this script calls the test functions.
#   4. torchrun with one process: `reprocls train configs/quickstart.yaml` on 4,096 images for one epoch on cuda, with
#      2-way accumulation, exits 0 and writes results.json (under torchrun reprocls joins an NCCL process group and
#      wraps the model in DistributedDataParallel even for one process).
#   5. the same path with its outcome asserted (torchrun, one process, NCCL): a DistributedDataParallel ResNet-20
#      through train_one_epoch with 2-way accumulation (no_sync on the first micro-batch) and evaluate (all-reduced
#      sums): step count, finite loss, weights changed and equal across ranks, all-reduce and image counts right.
#   6. the full recipe configs/fashion_mnist/resnet20.yaml on the GPU (30 epochs, bf16 + channels_last by `auto`; the
#      in-memory loader holds Fashion-MNIST on the GPU): wall time, train img/s and test top-1 from results.json.
#   7. only if time is left: benchmarks/precision_throughput.py --device cuda (eager; with torch.compile when >= 240 s
#      are left). Informational: its result does not change the exit status.
# At the end a summary block for docs/benchmarks.md, also written to $OUT/gpu_check.txt when $OUT is set (with the
# step logs and the recipe's results.json and metrics.jsonl under $OUT/gpu_check/).
#
# Run it from the repository root, from source (no install, no network needed):
#   bash benchmarks/gpu_check.sh                 on our device tool: command `bash benchmarks/gpu_check.sh`,
#                                                carry [".data"], timeout_s 540
# The device machine has no network, so the data travels with the checkout in the git-ignored .data/ (about 53 MB,
# the four unpacked idx files). Make it once on the CPU machine, from the repository root with REPROCLS_DATA unset:
#   make data                                    # Debian's dataset-fashion-mnist into /usr/share/datasets/fashion-mnist
#   .venv/bin/reprocls data stats fashion_mnist  # the first load copies it, unpacked, into .data/FashionMNIST/raw/
# (any fashion_mnist training run does the same copy; see _prepare_mnist_root in src/reprocls/data/datasets.py).
#
# Settings by environment: PYTHON (python3), GPU_CHECK_EPOCHS (30: the recipe's epochs), GPU_CHECK_BUDGET_S (450).

set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY=${PYTHON:-python3}
EPOCHS=${GPU_CHECK_EPOCHS:-30}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
RESERVE=15
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
unset REPROCLS_DATA

T0=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOGS="$WORK/logs"
mkdir -p "$LOGS"
trap 'rm -rf "$WORK"' EXIT
SUMMARY=()
FAILED=0

elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(elapsed) - RESERVE )); }
cap() { local limit=$1 rest; rest=$(left); (( rest < limit )) && limit=$rest; (( limit < 1 )) && limit=1; echo "$limit"; }
note() { SUMMARY+=("$1"); }
fail() { note "$1"; FAILED=$((FAILED + 1)); }
banner() { printf '\n=== %s (%d s elapsed) ===\n' "$1" "$(elapsed)"; }
run_logged() { local log=$1; shift; "$@" 2>&1 | tee "$log"; return "${PIPESTATUS[0]}"; }
seconds_since() { echo $(( $(date +%s) - $1 )); }
first_error() { grep -E '^([A-Za-z_.]*(Error|Exception)\b|reprocls: error)' "$1" | head -1; }
command -v timeout >/dev/null || timeout() { shift; "$@"; }

write_out() {
  local block
  block=$(printf '%s\n' "${SUMMARY[@]}")
  printf '\n=== gpu_check summary (for docs/benchmarks.md) ===\n%s\n' "$block"
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/gpu_check"
    printf '%s\n' "$block" > "$OUT/gpu_check.txt"
    cp -r "$LOGS" "$OUT/gpu_check/" 2>/dev/null
    for name in results.json metrics.jsonl; do
      found=$(find "$WORK/recipe" -name "$name" 2>/dev/null | head -1)
      [ -n "$found" ] && cp "$found" "$OUT/gpu_check/recipe_$name"
    done
  fi
}

finish() {
  note "total: $(elapsed) s, $FAILED failed check(s)"
  write_out
  exit $(( FAILED > 0 ? 1 : 0 ))
}

# ---------------------------------------------------------------------------------------------------- 1. preflight
banner "1. preflight"
if ! command -v "$PY" >/dev/null; then
  echo "gpu_check: $PY not found; set PYTHON to the interpreter that has torch" >&2
  exit 3
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
MACHINE_FILE="$WORK/machine.txt" run_logged "$LOGS/preflight.log" "$PY" - <<'PYTHON'
import importlib, os, platform, sys

REQUIRED = ["torch", "torchvision", "numpy", "PIL", "yaml", "safetensors", "tqdm", "matplotlib", "tensorboard"]
print(f"python {sys.version.split()[0]} ({sys.executable}) on {platform.platform()}")
found, missing = {}, []
for name in REQUIRED + ["pytest"]:
    try:
        found[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as error:  # ImportError, or an install too broken to import
        if name in REQUIRED:
            missing.append(name)
        print(f"  {'MISSING' if name in REQUIRED else 'optional, missing'}: {name} ({type(error).__name__}: {error})")
print("  imports: " + ", ".join(f"{name} {version}" for name, version in found.items()))
machine = f"python {sys.version.split()[0]}"
if "torch" in found:
    import torch
    machine += f", torch {torch.__version__}"
    if "torchvision" in found:
        machine += f", torchvision {found['torchvision']}"
    print(f"torch {torch.__version__}: built with CUDA {torch.version.cuda}, cuda available {torch.cuda.is_available()}, "
          f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} device(s)")
    if torch.cuda.is_available():
        nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() else "unavailable"
        print(f"  cuDNN {torch.backends.cudnn.version()}, NCCL {nccl}")
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            print(f"  cuda:{index} {props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
                  f"{props.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}")
        props = torch.cuda.get_device_properties(0)
        machine = (f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}), CUDA {torch.version.cuda}, "
                   f"cuDNN {torch.backends.cudnn.version()}, NCCL {nccl}; " + machine)
if not missing:
    try:
        import reprocls
        print(f"reprocls {reprocls.__version__} from {os.path.dirname(reprocls.__file__)}")
    except Exception as error:
        missing.append("reprocls")
        print(f"  MISSING: reprocls does not import from src/ ({type(error).__name__}: {error})")
with open(os.environ["MACHINE_FILE"], "w") as handle:
    handle.write(machine)
if missing:
    print(f"gpu_check: required module(s) missing: {', '.join(missing)}. Install them into {sys.executable} "
          "(pip install torch torchvision numpy pillow pyyaml safetensors tqdm matplotlib tensorboard) and rerun.")
    sys.exit(3)
PYTHON
status=$?
MACHINE=$(cat "$WORK/machine.txt" 2>/dev/null)
if (( status != 0 )); then
  SUMMARY=("machine: ${MACHINE:-unknown}" "preflight: FAILED. $(grep -E '^gpu_check: ' "$LOGS/preflight.log" | tail -1)")
  write_out
  exit 3
fi
note "machine: $MACHINE"
if "$PY" -c "import pytest" 2>/dev/null; then HAVE_PYTEST=1; else HAVE_PYTEST=0; echo "pytest missing: tests/test_cuda.py runs through the fallback runner"; fi

HAVE_DATA=1
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -f ".data/FashionMNIST/raw/$name" ] || [ -f ".data/FashionMNIST/raw/$name.gz" ] || HAVE_DATA=0
done
if (( HAVE_DATA )); then
  echo "Fashion-MNIST: .data/FashionMNIST/raw/ present"
else
  echo "gpu_check: Fashion-MNIST is missing from .data/FashionMNIST/raw/, so steps 4 and 6 cannot run. Create it on the" \
       "CPU machine (make data; .venv/bin/reprocls data stats fashion_mnist) and pass carry [\".data\"]." >&2
fi

# --------------------------------------------------------------------------------------------------------- 2. CUDA
banner "2. CUDA"
CUDA_MESSAGE=$("$PY" - 2>&1 <<'PYTHON'
import sys
import torch

if torch.cuda.is_available():
    print(f"CUDA available: {torch.cuda.device_count()} device(s), cuda:0 is {torch.cuda.get_device_name(0)}")
    sys.exit(0)
reason = ("this torch is a CPU-only build (torch.version.cuda is None)" if torch.version.cuda is None
          else f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but sees no usable GPU (no device, "
               "no driver, or CUDA_VISIBLE_DEVICES hides it)")
print(f"CUDA is not available: {reason}. This script checks the GPU paths and needs a CUDA machine; "
      "on a CPU machine run the test suite instead.")
sys.exit(4)
PYTHON
)
status=$?
if (( status != 0 )); then
  echo "gpu_check: $CUDA_MESSAGE" >&2
  note "cuda: stopped after the preflight. ${CUDA_MESSAGE##*$'\n'}"
  write_out
  exit 4
fi
echo "$CUDA_MESSAGE"

# ------------------------------------------------------------------------------------------------------- 3. tests
banner "3. tests/test_cuda.py"
start=$(date +%s)
if (( HAVE_PYTEST )); then
  run_logged "$LOGS/test_cuda.log" timeout "$(cap 240)" "$PY" -m pytest -q -p no:cacheprovider -rA tests/test_cuda.py
  status=$?
  result=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)' "$LOGS/test_cuda.log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
else
  run_logged "$LOGS/test_cuda.log" timeout "$(cap 240)" "$PY" - <<'PYTHON'
import importlib.util, sys, time, traceback, types

sys.path[:0] = ["src", "tests"]
stub = types.ModuleType("pytest")  # test_cuda.py needs only pytest.mark.skipif for its module-level pytestmark
stub.mark = types.SimpleNamespace(skipif=lambda condition, reason="": ("skipif", bool(condition), reason))
sys.modules["pytest"] = stub
spec = importlib.util.spec_from_file_location("test_cuda", "tests/test_cuda.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
tests = [(name, value) for name, value in vars(module).items() if name.startswith("test_") and callable(value)]
mark = getattr(module, "pytestmark", None)
if isinstance(mark, tuple) and mark[1]:
    print(f"{len(tests)} skipped ({mark[2]}) (fallback runner, no pytest)")
    sys.exit(0)
failed = 0
for name, test in tests:
    start = time.perf_counter()
    try:
        test()
        print(f"PASSED {name} ({time.perf_counter() - start:.1f} s)")
    except Exception:
        failed += 1
        print(f"FAILED {name}")
        traceback.print_exc()
print(f"{len(tests) - failed} passed, {failed} failed (fallback runner, no pytest)")
sys.exit(1 if failed else 0)
PYTHON
  status=$?
  result=$(grep -E '^[0-9]+ (passed|skipped)' "$LOGS/test_cuda.log" | tail -1)
fi
took=$(seconds_since "$start")
if (( status == 0 )) && [[ "$result" != *skipped* ]] && [[ "$result" == *passed* ]]; then
  note "tests/test_cuda.py: ok, $result ($took s)"
elif (( status == 124 )); then
  fail "tests/test_cuda.py: FAILED, timed out after $took s"
else
  fail "tests/test_cuda.py: FAILED (exit $status): ${result:-no result line} ($took s)"
fi

# --------------------------------------------------------------------------------------- 4. torchrun, one process
banner "4. torchrun, one process: reprocls train configs/quickstart.yaml on 4,096 images, 1 epoch, accum_steps 2"
if (( HAVE_DATA )); then
  start=$(date +%s)
  run_logged "$LOGS/torchrun_quickstart.log" timeout "$(cap 180)" "$PY" -m torch.distributed.run --standalone \
    --nproc_per_node=1 -m reprocls train -q configs/quickstart.yaml data.limit_train=4096 schedule.epochs=1 \
    train.accum_steps=2 train.device=cuda output_dir="$WORK/torchrun" name=torchrun_quickstart
  status=$?
  took=$(seconds_since "$start")
  results=$(find "$WORK/torchrun" -name results.json 2>/dev/null | head -1)
  if (( status == 0 )) && [ -n "$results" ]; then
    line=$("$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); print(f\"test top-1 {100 * r['test']['top1']:.2f} %, {r['images_per_s']:,.0f} img/s, {r['precision']}, channels_last {r['channels_last']}\")" "$results")
    note "torchrun 1 process (NCCL, DDP), quickstart 4,096 images x 1 epoch, accum_steps 2: ok, results.json written; $line ($took s)"
  elif (( status == 0 )); then
    fail "torchrun 1 process, quickstart: FAILED, exit 0 but no results.json under $WORK/torchrun ($took s)"
  else
    fail "torchrun 1 process, quickstart: FAILED (exit $status, $([ -n "$results" ] && echo 'results.json written' || echo 'no results.json')): $(first_error "$LOGS/torchrun_quickstart.log") ($took s)"
  fi
else
  fail "torchrun 1 process, quickstart: NOT RUN, Fashion-MNIST missing from .data/FashionMNIST/raw/"
fi

# ---------------------------------------------------------------------------------------------- 5. DDP over NCCL
banner "5. DDP over NCCL through the engine (torchrun, one process)"
cat > "$WORK/ddp_engine_check.py" <<'PYTHON'
"""Under torchrun: DistributedDataParallel ResNet-20 through train_one_epoch (2-way accumulation) and evaluate."""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reprocls.data.datasets import TensorSplit
from reprocls.data.loaders import TensorLoader
from reprocls.engine.distributed import all_reduce_sum
from reprocls.engine.train import Trainee, TrainSettings, evaluate, train_one_epoch
from reprocls.models import create_model

backend = sys.argv[1] if len(sys.argv) > 1 else "nccl"
local_rank = int(os.environ["LOCAL_RANK"])
device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
if device.type == "cuda":
    torch.cuda.set_device(device)
dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
rank, world_size = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = create_model("resnet20", num_classes=10, in_chans=1).to(device, memory_format=torch.channels_last)
ddp = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
generator = torch.Generator().manual_seed(0)
split = TensorSplit(torch.randint(0, 256, (2048, 1, 28, 28), dtype=torch.uint8, generator=generator),
                    torch.randint(0, 10, (2048,), generator=generator))
common = dict(mean=(0.286,), std=(0.353,), device=device, seed=0, rank=rank, world_size=world_size,
              channels_last=True)
train = TensorLoader(split, batch_size=128, train=True, micro_batches=2, **common)
test = TensorLoader(split, batch_size=512, train=False, **common)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
amp = torch.bfloat16 if device.type == "cuda" else None
before = [p.detach().clone() for p in model.parameters()]
stats = train_one_epoch(Trainee(ddp, optimizer, scheduler, nn.CrossEntropyLoss()), train,
                        TrainSettings(device=device, amp_dtype=amp, accum_steps=2, progress=False))
result = evaluate(ddp, test, device=device, amp_dtype=amp, num_classes=10, progress=False)
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
largest = flat.clone()
dist.all_reduce(largest, op=dist.ReduceOp.MAX)
(ones,) = all_reduce_sum(torch.ones((), device=device))
problems = [text for failed, text in [
    (dist.get_backend() != backend, f"backend is {dist.get_backend()}, not {backend}"),
    (scheduler.last_epoch != len(train) // 2, f"{scheduler.last_epoch} optimizer steps, expected {len(train) // 2}"),
    (not torch.isfinite(torch.tensor(stats["loss"])), f"training loss {stats['loss']}"),
    (all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "the weights did not change"),
    (not torch.equal(largest, flat), "the ranks' weights differ after the step"),
    (int(ones) != world_size, f"all_reduce_sum gave {int(ones)} for {world_size} process(es)"),
    (result.samples != len(split), f"evaluate counted {result.samples} images, expected {len(split)}"),
] if failed]
if rank == 0:
    print(f"backend {dist.get_backend()}, world {world_size}, {scheduler.last_epoch} steps of 2 micro-batches, "
          f"loss {stats['loss']:.3f}, {stats['images_per_s']:,.0f} img/s, eval {result.samples} images")
    print("ddp engine check: " + ("FAILED: " + "; ".join(problems) if problems else "ok"))
dist.destroy_process_group()
sys.exit(1 if problems else 0)
PYTHON
start=$(date +%s)
run_logged "$LOGS/ddp_engine.log" timeout "$(cap 150)" "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
  "$WORK/ddp_engine_check.py" nccl
status=$?
took=$(seconds_since "$start")
detail=$(grep -E '^backend ' "$LOGS/ddp_engine.log" | tail -1)
if (( status == 0 )) && grep -q '^ddp engine check: ok' "$LOGS/ddp_engine.log"; then
  note "DDP over NCCL, 1 process, engine train (accum 2) + evaluate: ok; $detail ($took s)"
else
  verdict=$(grep -E '^ddp engine check' "$LOGS/ddp_engine.log" | tail -1)
  fail "DDP over NCCL, 1 process: FAILED (exit $status): ${verdict:-$(first_error "$LOGS/ddp_engine.log")} ($took s)"
fi

# ------------------------------------------------------------------------------------------- 6. the full recipe
RECIPE=configs/fashion_mnist/resnet20.yaml
banner "6. $RECIPE on the GPU, $EPOCHS epoch(s)"
OVERRIDES=(train.device=cuda output_dir="$WORK/recipe")
[ "$EPOCHS" != 30 ] && OVERRIDES+=("schedule.epochs=$EPOCHS")
if (( ! HAVE_DATA )); then
  fail "recipe $RECIPE: NOT RUN, Fashion-MNIST missing from .data/FashionMNIST/raw/"
elif (( $(left) < 60 )); then
  fail "recipe $RECIPE: NOT RUN, only $(left) s of the ${BUDGET} s budget left"
else
  limit=$(left)
  echo "time limit ${limit} s: $PY -m reprocls train -q $RECIPE ${OVERRIDES[*]}"
  start=$(date +%s.%N)
  run_logged "$LOGS/recipe.log" timeout "$limit" "$PY" -m reprocls train -q "$RECIPE" "${OVERRIDES[@]}"
  status=$?
  wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
  results=$(find "$WORK/recipe" -name results.json 2>/dev/null | head -1)
  if (( status == 0 )) && [ -n "$results" ]; then
    line=$("$PY" - "$results" "$wall" "$EPOCHS" "$RECIPE" <<'PYTHON'
import json
import sys

path, wall, epochs, recipe = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
r = json.load(open(path))
val = f"{100 * r['val']['top1']:.2f} %" if r.get("val") else "n/a"
setting = f"{r['precision']}{' + channels_last' if r['channels_last'] else ''}"
reference = r.get("reference") or {}
print(f"recipe {recipe}, {r['epochs']} epoch{'s' if r['epochs'] != 1 else ''}, {setting}, data on the GPU: test top-1 {100 * r['test']['top1']:.2f} %, "
      f"val top-1 {val}, train {r['images_per_s']:,.0f} img/s, train time {r['train_time_s']:.0f} s, "
      f"wall {r['wall_time_s']:.0f} s in results.json ({wall:.0f} s with process start)"
      + (f", {reference['verdict']}" if reference else ""))
override = "" if epochs == 30 else f" schedule.epochs={epochs}"
print(f"| `{recipe}` on 1 GPU ({setting}) | {r['epochs']} | **{100 * r['test']['top1']:.2f} %** | {val} | "
      f"{r['images_per_s']:,.0f} | **{r['wall_time_s']:.0f} s** | `reprocls train {recipe} train.device=cuda{override}` |")
PYTHON
)
    while IFS= read -r text; do note "$text"; done <<< "$line"
  elif (( status == 124 )); then
    fail "recipe $RECIPE: FAILED, killed at the ${limit} s limit after $(grep -c '^epoch' "$LOGS/recipe.log") epoch(s); rerun with GPU_CHECK_EPOCHS=10"
  else
    fail "recipe $RECIPE: FAILED (exit $status) after ${wall} s: $(first_error "$LOGS/recipe.log")"
  fi
fi

# --------------------------------------------------------------------------- 7. precision throughput, if time is left
remaining=$(left)
if (( remaining >= 90 )); then
  banner "7. benchmarks/precision_throughput.py --device cuda (informational)"
  flags=(--device cuda --steps 50 --rounds 5)
  (( remaining < 240 )) && flags+=(--no-compile)
  run_logged "$LOGS/precision_throughput.log" timeout "$(cap 200)" "$PY" benchmarks/precision_throughput.py "${flags[@]}"
  status=$?
  if (( status == 0 )); then
    note "precision_throughput.py ${flags[*]} (synthetic input, median of rounds):"
  else
    note "precision_throughput.py ${flags[*]}: did not finish (exit $status; informational, not counted as a failure); what it printed:"
  fi
  while IFS= read -r text; do note "$text"; done < <(grep -E '^\||^torch.compile|^eager' "$LOGS/precision_throughput.log")
else
  note "precision_throughput.py: skipped, $remaining s left"
fi

finish
