"""Training cost per method: one optimisation step of every registered method on one fixed teacher/student pair.

This is the "what does each method cost to train" table: a step is the teacher forward (for methods that use a
teacher) plus the student's forward, the method's losses, backward and the SGD update — what the engine does
per batch for a run trained alone (for a method with several generations, a step of its second generation,
which runs the first as its teacher). Run::

    python -m pytest tests/benchmarks/test_training_step_benchmark.py --benchmark-enable \\
        --benchmark-json reports/training_steps.json
    kdbench report --benchmark-json reports/training_steps.json

Under ``--benchmark-disable`` (the default of the test suite) each method runs its step once, as a smoke test.
"""

from __future__ import annotations

import functools
import platform

import pytest
import timm
import torch

from kdbench.data import DatasetInfo
from kdbench.distiller import list_methods
from kdbench.env import cpu_name
from kdbench.features import describe_model
from kdbench.models import create_model
from kdbench.plan import make_spec
from kdbench.training import Member, teacher_forward

TEACHER, STUDENT = "resnet18", "mobilenetv3_small_050"
BATCH, SIZE, CHANS, CLASSES = 64, 28, 1, 10
INFO = DatasetInfo(name="mnist5k", num_classes=CLASSES, in_chans=CHANS, image_size=SIZE, native_size=SIZE,
                   mean=(0.13,), std=(0.31,), flip=False, crop_padding=2, sizes={"train": 3600, "val": 400,
                                                                                 "test": 1000})


@functools.cache
def teacher() -> tuple[torch.nn.Module, object]:
    """The fixed teacher, in eval mode, with its shape information."""
    model = create_model(TEACHER, num_classes=CLASSES, in_chans=CHANS, image_size=SIZE).eval().requires_grad_(False)
    return model, describe_model(model, TEACHER, CHANS, SIZE)


@pytest.mark.parametrize("method", list_methods())
def test_training_step(benchmark, method):
    teacher_model, teacher_info = teacher()
    spec = make_spec(dataset="mnist5k", student=STUDENT, method=method, teacher=TEACHER, epochs=1,
                     batch_size=BATCH)
    member = Member(spec, INFO, teacher_info, torch.device("cpu"))
    if member.generations > 1:  # time a born-again generation: it runs the previous one as its teacher
        member.next_generation()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, CHANS, SIZE, SIZE, generator=g)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=g)
    indices = torch.arange(BATCH)
    stages = member.method.teacher_stages if member.uses_teacher else ()
    benchmark.extra_info.update({
        "method": method, "student": STUDENT,
        "teacher": TEACHER if member.uses_teacher else ("self" if spec.teacher_source == "self" else None),
        "batch_size": BATCH, "input_size": [CHANS, SIZE, SIZE], "num_classes": CLASSES,
        "threads": torch.get_num_threads(), "device": "cpu", "device_name": cpu_name(),
        "extra_params_m": member.extra_params_m, "torch_version": torch.__version__,
        "timm_version": timm.__version__, "python_version": platform.python_version(),
    })

    def step() -> None:
        out = teacher_forward(teacher_model, images, stages, amp=False) if member.uses_teacher else None
        member.train_step(images, labels, indices, out, epoch=0, iteration=0, iterations=10)

    benchmark.pedantic(step, rounds=10, warmup_rounds=2, iterations=1)
    assert member.stats.steps >= 1
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in member.stats.loss_sums.values())
