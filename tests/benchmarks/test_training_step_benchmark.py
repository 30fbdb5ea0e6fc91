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
from kdbench.errors import ModelError
from kdbench.features import describe_model
from kdbench.models import create_model
from kdbench.plan import make_spec
from kdbench.training import Member, teacher_outputs
from kdbench.views import VIEW_AUGMENTATIONS
from tests.tiny_models import TINY_DEIT

pytestmark = pytest.mark.slow  # benchmarks: the full lane only (they run once each with --benchmark-disable)

TEACHER, STUDENT = "resnet18", "mobilenetv3_small_050"
BATCH, SIZE, CHANS, CLASSES = 64, 28, 1, 10
INFO = DatasetInfo(name="mnist5k", num_classes=CLASSES, in_chans=CHANS, image_size=SIZE, native_size=SIZE,
                   mean=(0.13,), std=(0.31,), flip=False, crop_padding=2, sizes={"train": 3600, "val": 400,
                                                                                 "test": 1000})

TRAIN_LABELS = torch.arange(INFO.sizes["train"]) % CLASSES
STUDENT_OF = {"deit": TINY_DEIT}  # a method that needs a student with a distillation token
#: the student of methods that read the student's classifier over its final map, which MobileNetV3's is not (its
#: head has a conv between the pooling and the classifier): the member refuses the pair, in one ModelError
CLASSIFIER_STUDENT = "resnet10t"


def member_for(method: str) -> tuple[str, object, Member]:
    """The student, spec and member of ``method``: on the fixed student, or on one with a plain classifier."""
    for student in (STUDENT_OF.get(method, STUDENT), CLASSIFIER_STUDENT):
        # a small learning rate: the benchmark repeats the step on one batch, which a larger one would drive to a
        # non-finite loss for some methods (what a step costs does not depend on it)
        spec = make_spec(dataset="mnist5k", student=student, method=method, teacher=TEACHER, epochs=1,
                         batch_size=BATCH, lr=1e-4)
        try:
            return student, spec, Member(spec, INFO, teacher()[1], torch.device("cpu"), train_labels=TRAIN_LABELS,
                                         teacher_model=teacher()[0])
        except ModelError as err:
            if student == CLASSIFIER_STUDENT or "classifier" not in str(err):
                raise
    raise AssertionError("unreachable")


@functools.cache
def teacher() -> tuple[torch.nn.Module, object]:
    """The fixed teacher, in eval mode, with its shape information."""
    model = create_model(TEACHER, num_classes=CLASSES, in_chans=CHANS, image_size=SIZE).eval().requires_grad_(False)
    return model, describe_model(model, TEACHER, CHANS, SIZE)


@pytest.mark.parametrize("method", list_methods())
def test_training_step(benchmark, method):
    teacher_model, _ = teacher()
    student, spec, member = member_for(method)
    if member.generations > 1:  # time a born-again generation: it runs the previous one as its teacher
        member.next_generation()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, CHANS, SIZE, SIZE, generator=g)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=g)
    indices = torch.arange(BATCH)
    benchmark.extra_info.update({
        "method": method, "student": student,
        "teacher": TEACHER if member.uses_teacher else ("self" if spec.teacher_source == "self" else None),
        "batch_size": BATCH, "input_size": [CHANS, SIZE, SIZE], "num_classes": CLASSES,
        "threads": torch.get_num_threads(), "device": "cpu", "device_name": cpu_name(),
        "extra_params_m": member.extra_params_m, "torch_version": torch.__version__,
        "timm_version": timm.__version__, "python_version": platform.python_version(),
    })

    view_generator = torch.Generator().manual_seed(1)

    def step() -> None:  # what the cohort loop does for one member: its views, the teacher pass, the step
        views = {name: VIEW_AUGMENTATIONS.get(name)(images, INFO, view_generator)
                 for name in member.method.extra_views}
        out = teacher_outputs(teacher_model, images, views, [member], amp=False) if member.uses_teacher else None
        member.train_step(images, labels, indices, out, epoch=0, iteration=0, iterations=10, views=views)

    benchmark.pedantic(step, rounds=10, warmup_rounds=2, iterations=1)
    assert member.stats.steps >= 1
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in member.stats.loss_sums.values())
