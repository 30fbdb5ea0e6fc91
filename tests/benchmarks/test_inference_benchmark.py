"""Inference speed of timm students at the small input sizes KD benchmarks use.

Run with ``pytest tests/benchmarks --benchmark-only`` (add ``--benchmark-json FILE`` to keep the figures); every
setting that changes a figure is in ``extra_info``. Under ``--benchmark-disable`` each case runs once, as a smoke
test.
"""

import functools
import platform

import pytest
import timm
import torch

from kdbench.env import cpu_name
from kdbench.measure import count_flops, count_params_m
from kdbench.models import create_model

STUDENTS = ["resnet18", "mobilenetv3_small_050", "test_efficientnet"]
NUM_CLASSES = 10
IN_CHANS = 3

pytestmark = pytest.mark.slow  # benchmarks: the full lane only (they run once each with --benchmark-disable)


@functools.cache
def student_and_figures(student: str, image_size: int) -> tuple[torch.nn.Module, float, float]:
    """The student in eval mode with its params (M) and GMACs, built once per name and size."""
    model = create_model(student, num_classes=NUM_CLASSES, in_chans=IN_CHANS, image_size=image_size).eval()
    _, gmacs = count_flops(model, (IN_CHANS, image_size, image_size))
    return model, count_params_m(model), gmacs


@pytest.mark.parametrize("batch_size", [1, 64])
@pytest.mark.parametrize("image_size", [28, 32])
@pytest.mark.parametrize("student", STUDENTS)
def test_student_inference(benchmark, student, image_size, batch_size):
    model, params_m, gmacs = student_and_figures(student, image_size)
    images = torch.randn(batch_size, IN_CHANS, image_size, image_size, generator=torch.Generator().manual_seed(0))
    benchmark.extra_info.update({
        "model": student, "in_chans": IN_CHANS, "image_size": image_size, "num_classes": NUM_CLASSES,
        "batch_size": batch_size, "threads": torch.get_num_threads(), "device": "cpu", "device_name": cpu_name(),
        "mode": "eval+inference_mode", "dtype": "float32", "params_m": params_m, "gmacs": gmacs,
        "torch_version": torch.__version__, "timm_version": timm.__version__,
        "python_version": platform.python_version(),
    })

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(images)

    logits = benchmark.pedantic(forward, rounds=10, warmup_rounds=2, iterations=1)
    assert logits.shape == (batch_size, NUM_CLASSES)
    assert torch.isfinite(logits).all()
