"""Fixed inputs on which every built-in method's loss terms are pinned (the golden values in this folder).

Run ``python -m tests.golden.cases METHOD [METHOD ...]`` from the project root to (re)write a method's JSON file
after a deliberate change of its loss; review the diff of the values before committing it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from torch import nn

from kdbench.data import DatasetInfo
from kdbench.distiller import (
    Distiller,
    RunContext,
    Step,
    TeacherBatch,
    View,
    construct_method,
    generations_of,
    get_method,
)
from kdbench.features import ModelInfo, StageShape

GOLDEN_DIR = Path(__file__).parent
BATCH = 8
NUM_CLASSES = 10

STUDENT = ModelInfo("student", NUM_CLASSES, 64, stages=(
    StageShape(8, 16, 16, 2), StageShape(16, 8, 8, 4), StageShape(32, 4, 4, 8), StageShape(64, 2, 2, 16)))
TEACHER = ModelInfo("teacher", NUM_CLASSES, 256, stages=(
    StageShape(16, 16, 16, 2), StageShape(32, 8, 8, 4), StageShape(64, 4, 4, 8), StageShape(128, 2, 2, 16),
    StageShape(256, 1, 1, 32)))
DATA = DatasetInfo(name="fixture", num_classes=NUM_CLASSES, in_chans=3, image_size=32, native_size=32,
                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), flip=True, crop_padding=4,
                   sizes={"train": 64, "val": 0, "test": 16})


TRAIN_LABELS = torch.arange(DATA.sizes["train"]) % NUM_CLASSES
CONTEXT = RunContext(epochs=10, steps_per_epoch=10, batch_size=BATCH, num_train=DATA.sizes["train"],
                     num_classes=NUM_CLASSES, train_labels=TRAIN_LABELS)


def build(name: str) -> Distiller:
    """The method with default hyperparameters, its modules initialised from seed 0.

    A method with a ``teacher_pass`` is given a fixed pass first: two batches of seeded teacher outputs over the
    training split's labels.
    """
    cls = get_method(name)
    torch.manual_seed(0)
    method = construct_method(cls, cls.Params(), STUDENT, TEACHER if cls.needs_teacher else None, DATA, CONTEXT)
    if method.teacher_pass:
        g = torch.Generator().manual_seed(99)
        for indices in torch.arange(DATA.sizes["train"]).chunk(2):
            n = len(indices)
            method.observe_teacher(TeacherBatch(
                TRAIN_LABELS[indices], indices, 3 * torch.randn(n, NUM_CLASSES, generator=g),
                torch.randn(n, TEACHER.embedding_dim, generator=g) if "embedding" in method.teacher_pass else None,
                torch.randn(n, TEACHER.num_features, 4, 4, generator=g) if "final_map" in method.teacher_pass
                else None))
        method.finish_teacher_pass()
    return method


def step_for(method: Distiller) -> Step:
    """A fixed step: every tensor drawn from one seeded generator in a fixed order, whatever the method asks."""
    g = torch.Generator().manual_seed(1234)
    images = torch.randn(BATCH, 3, 32, 32, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)
    student_logits = 2 * torch.randn(BATCH, NUM_CLASSES, generator=g)
    teacher_logits = 3 * torch.randn(BATCH, NUM_CLASSES, generator=g)
    s_feats = {i: torch.randn(BATCH, s.channels, s.height, s.width, generator=g) for i, s in enumerate(STUDENT.stages)}
    t_feats = {i: torch.randn(BATCH, s.channels, s.height, s.width, generator=g) for i, s in enumerate(TEACHER.stages)}
    uses_teacher = type(method).needs_teacher
    # Drawn after the tensors above, so that the golden values of methods that use none of these stay put.
    s_emb = torch.randn(BATCH, STUDENT.embedding_dim, generator=g)
    t_emb = torch.randn(BATCH, TEACHER.embedding_dim, generator=g)
    second_head = 2 * torch.randn(BATCH, NUM_CLASSES, generator=g)
    views = {}
    for view in method.extra_views:
        views[view] = View(
            images=torch.randn(BATCH, 3, 32, 32, generator=g),
            student_logits=2 * torch.randn(BATCH, NUM_CLASSES, generator=g),
            teacher_logits=3 * torch.randn(BATCH, NUM_CLASSES, generator=g) if uses_teacher else None,
        )
    several_heads = (type(method).training_student is not Distiller.training_student  # a head turned on
                     or type(method).prepare_student is not Distiller.prepare_student)  # the older hook
    # Final maps (4x4, the models' num_features channels) and classifiers: drawn last, only for methods that ask.
    final_maps, classifiers = getattr(method, "final_maps", False), getattr(method, "classifiers", False)
    s_map = torch.randn(BATCH, STUDENT.num_features, 4, 4, generator=g) if final_maps else None
    t_map = torch.randn(BATCH, TEACHER.num_features, 4, 4, generator=g) if final_maps and uses_teacher else None
    s_fc = t_fc = None
    if classifiers:
        s_fc, t_fc = nn.Linear(STUDENT.num_features, NUM_CLASSES), nn.Linear(TEACHER.num_features, NUM_CLASSES)
        for fc in (s_fc, t_fc):
            with torch.no_grad():
                fc.weight.copy_(0.1 * torch.randn(fc.weight.shape, generator=g))
                fc.bias.copy_(0.1 * torch.randn(fc.bias.shape, generator=g))
        t_fc.requires_grad_(False)
    return Step(
        images=images, labels=labels, indices=torch.arange(BATCH), student_logits=student_logits,
        student_features={i: s_feats[i] for i in method.student_stages},
        teacher_logits=teacher_logits if uses_teacher else None,
        teacher_features={i: t_feats[i] for i in method.teacher_stages} if uses_teacher else {},
        epoch=0, epochs=10, iteration=0, iterations=10,
        student_embedding=s_emb if method.embeddings else None,
        teacher_embedding=t_emb if (method.embeddings and uses_teacher) else None,
        student_heads=(student_logits, second_head) if several_heads else (student_logits,),
        views=views,
        student_final_map=s_map, teacher_final_map=t_map, student_classifier=s_fc,
        teacher_classifier=t_fc if uses_teacher else None,
    )


def previous_generation() -> nn.Module:
    """A fixed, frozen previous generation for methods that train several: a seeded linear model of the images."""
    torch.manual_seed(7)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, NUM_CLASSES)).eval().requires_grad_(False)


def compute(name: str) -> dict[str, float]:
    """The method's loss terms on the fixed step; for a method of several generations, also those of generation 1
    (keyed ``generation_1.<term>``), distilled from :func:`previous_generation`."""
    method = build(name)
    values = {k: float(v.detach()) for k, v in method.losses(step_for(method)).items()}
    if generations_of(type(method), method.params) > 1:  # generation 1: the previous generation is the teacher
        step = step_for(method)
        with torch.inference_mode():
            step.teacher_logits = previous_generation()(step.images).clone()
        values.update({f"generation_1.{k}": float(v.detach()) for k, v in method.losses(step).items()})
    return values


def golden_path(name: str) -> Path:
    """Where the golden values of ``name`` live."""
    return GOLDEN_DIR / f"{name}.json"


VERSIONS_PATH = GOLDEN_DIR / "versions.json"


def golden_digest(name: str) -> str:
    """SHA-256 of a method's golden file, as recorded in ``versions.json`` for the version that pinned it."""
    return hashlib.sha256(golden_path(name).read_bytes()).hexdigest()


def read_versions() -> dict[str, dict[str, str]]:
    """Method name -> {version: digest of the golden file pinned at that version}."""
    return json.loads(VERSIONS_PATH.read_text()) if VERSIONS_PATH.is_file() else {}


def pin(name: str) -> None:
    """Write ``name``'s golden values and record their digest under the method's current version.

    Refuses (exit 1) when the values change while the method's ``version`` does not: bump the version first.
    """
    values = compute(name)
    text = json.dumps(values, indent=1, sort_keys=True) + "\n"
    version = str(get_method(name).version)
    versions = read_versions()
    digest = hashlib.sha256(text.encode()).hexdigest()
    known = versions.get(name, {}).get(version)
    if known is not None and known != digest:
        sys.exit(f"{name}: its loss values changed but its version is still {version}; bump {name}'s version")
    golden_path(name).write_text(text)
    versions.setdefault(name, {})[version] = digest
    VERSIONS_PATH.write_text(json.dumps(versions, indent=1, sort_keys=True) + "\n")
    print(name, values)


if __name__ == "__main__":
    for method_name in sys.argv[1:]:
        pin(method_name)
