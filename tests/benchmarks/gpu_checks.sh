#!/usr/bin/env bash
# Every GPU check of kdbench in one script, for a machine with one GPU (sized for under 10 minutes; each step has
# its own time limit):
#
#   bash tests/benchmarks/gpu_checks.sh OUT_DIR
#
# 1. the tests marked `gpu` (bf16, channels-last, GPU efficiency fields, no host synchronisation in the step);
# 2. the overhead benchmark: kdbench's step against a bare PyTorch loop, fp32 and bf16 + channels-last, with the
#    achieved TFLOP/s against the device's peak; and with --compile;
# 3. the loader benchmark: images/s of the ImageNet loader, PIL in the workers and JPEG decoding on the GPU
#    (decode=device), with 0, 4, 8 and 16 workers, per core and in total, against the ImageNet protocol's kd step
#    resnet34 -> resnet18 at batch 512, 224 px, bf16 (whether 16 cores keep the GPU fed);
# 4. the CIFAR-100 protocol: one epoch of resnet32x4 -> resnet8x4 kd (batch 64, 50,000 images), alone and in a
#    cohort of five methods; the records' train_time_s x 240 is the projected 240-epoch time;
# 5. what checkpoints cost that cohort: one end-of-epoch checkpoint of the five members as a share of the epoch.
#
# Each step writes its output under OUT_DIR and the script goes on after a failure; the exit code is the number of
# failed steps.
set -u
out=${1:?usage: bash tests/benchmarks/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
failed=0

step() {  # step NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name" | tee -a "$out/summary.txt"
    local start=$SECONDS
    if timeout "$limit" "$@" >"$out/$name.log" 2>&1; then
        echo "   ok in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
    else
        echo "   FAILED (exit $?) after $((SECONDS - start)) s; see $name.log" | tee -a "$out/summary.txt"
        failed=$((failed + 1))
    fi
    tail -n 8 "$out/$name.log" >>"$out/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
python -c "import torch, timm; print(torch.__version__, timm.__version__, torch.cuda.get_device_name())" \
    >>"$out/gpu.txt" 2>&1

step gpu_tests 240 python -m pytest -q -m gpu tests/ -p no:cacheprovider
step overhead_fp32 120 python -m tests.benchmarks.overhead --device cuda --json "$out/overhead_fp32.json"
step overhead_bf16_cl 120 python -m tests.benchmarks.overhead --device cuda --amp --channels-last \
    --json "$out/overhead_bf16_cl.json"
step overhead_compile 240 python -m tests.benchmarks.overhead --device cuda --amp --channels-last --compile \
    --reps 5 --json "$out/overhead_compile.json"
step loader 300 python -m tests.benchmarks.loader --device cuda --workers 0 4 8 16 --images 4096 \
    --source-size 500 375 --teacher resnet34 --student resnet18 --batch-size 512 --amp --channels-last --steps 10 \
    --decode pil device --json "$out/loader.json"
step checkpoint_cost 240 python -m tests.benchmarks.checkpoint_cost --device cuda --json "$out/checkpoint_cost.json"
cifar=(--dataset synthetic --data-option size=32 --data-option num_classes=100 --data-option num_samples=62500
       --teacher cifar_resnet32x4 --teacher-epochs 1 --student cifar_resnet8x4 --epochs 1 --batch-size 64
       --device cuda --amp --channels-last --val-fraction 0 --no-progress --teacher-cache "$out/teachers")
step cifar100_kd_epoch 300 kdbench run "${cifar[@]}" --method kd --results "$out/cifar100_kd"
step cifar100_cohort5_epoch 420 kdbench run "${cifar[@]}" --method kd --method dkd --method dist --method at \
    --method crd --results "$out/cifar100_cohort5"
python - "$out" <<'EOF' >>"$out/summary.txt" 2>&1
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("cifar100_*/runs/*.json")):
    record = json.loads(path.read_text())
    t = record.get("train_time_s") or 0.0
    print(f"{record['method']:>6} cohort {record.get('cohort_size')}: epoch {t:.1f} s -> 240 epochs "
          f"{240 * t / 60:.1f} min (cohort wall {record.get('cohort_wall_s', 0) * 240 / 60:.1f} min)")
EOF
echo "failed steps: $failed" | tee -a "$out/summary.txt"
exit "$failed"
