"""GPU paths: bf16 autocast and channels-last training, GPU efficiency fields, bf16 teacher logits vs fp32.

Every test here needs CUDA and skips cleanly without it.
"""

from __future__ import annotations

import pytest
import torch

from kdbench.engine import load_splits
from kdbench.options import ExecOptions
from kdbench.plan import expand
from kdbench.scheduler import execute
from kdbench.store import Store
from kdbench.teachers import prepare_teacher
from kdbench.training import predict

pytestmark = pytest.mark.gpu


def test_cohort_trains_on_gpu_with_bf16_and_channels_last(tmp_path):
    specs = expand(dataset="digits", pairs=[("resnet18", "mobilenetv3_small_050")],
                   methods={"ce": {}, "kd": {}, "fitnets": {}, "at": {}}, seeds=[0], epochs=2, teacher_epochs=2,
                   image_size=32, amp=True, channels_last=True)
    records = execute(specs, ExecOptions(results=tmp_path, device="cuda", progress=False))
    assert [r["status"] for r in records] == ["ok"] * 4, [r["error"] for r in records]
    for record in records:
        assert record["device"] == "cuda" and record["amp"] and record["channels_last"]
        assert record["gpu_name"] == torch.cuda.get_device_name()
        assert record["gpu_samples_per_s"] > 0 and record["gpu_latency_ms_bs1"] > 0
        assert record["gpu_amp"] is True and record["gpu_channels_last"] is True
        assert record["cpu_latency_ms_bs1"] > 0
    assert {r["cohort_size"] for r in records} == {4}


def test_teacher_bf16_logits_agree_with_fp32(tmp_path):
    (spec,) = expand(dataset="mnist5k", pairs=[("resnet18", "mobilenetv3_small_050")], methods={"kd": {}},
                     seeds=[0], epochs=1, teacher_epochs=2, batch_size=128)
    device = torch.device("cuda")
    options = ExecOptions(results=tmp_path, device="cuda", progress=False)
    splits = load_splits(spec, options, device)
    teacher = prepare_teacher(spec, splits, device, Store.of(options).teachers.folder)
    fp32 = predict(teacher.model, splits, "test", 256).logits
    bf16 = predict(teacher.model, splits, "test", 256, amp=True).logits
    agreement = (fp32.argmax(1) == bf16.argmax(1)).float().mean().item()
    prob_gap = (fp32.softmax(1) - bf16.softmax(1)).abs().max().item()
    print(f"bf16 vs fp32 teacher on {torch.cuda.get_device_name()}: top-1 agreement {agreement:.4%}, "
          f"max probability difference {prob_gap:.4f}")
    assert agreement >= 0.99
    assert prob_gap < 0.1
