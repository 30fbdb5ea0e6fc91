"""The method capabilities ``final_maps`` and ``classifiers``: what the harness hands a method that declares them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdbench.config import RunSpec
from kdbench.data import DataConfig, describe_dataset, load_dataset
from kdbench.errors import ModelError
from kdbench.features import ModelInfo, classifier_of, describe_model, final_feature_map, forward_outputs
from kdbench.models import create_model
from kdbench.training import Member
from kdbench.training.forward import MAIN_VIEW, teacher_outputs, teacher_pass_before_training

DIGITS_32 = describe_dataset(DataConfig(name="digits", image_size=32))


def model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=10, in_chans=1, image_size=32).eval()


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_vit"])
def test_the_final_map_is_the_unpooled_final_features_and_pools_to_the_embedding(name):
    net = model(name)
    images = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        out = forward_outputs(net, images, (), embedding=True, final_map=True)
        plain = net(images)
    assert out.final_map.ndim == 4 and out.final_map.shape[:2] == (4, net.num_features)
    assert torch.equal(out.logits, plain)  # asking for the map changes nothing else
    if name != "test_vit":  # a CNN's pooled map is its embedding, and the classifier over it gives the logits
        assert torch.allclose(out.final_map.mean((2, 3)), out.embedding, atol=1e-5)
        assert torch.allclose(net.get_classifier()(out.final_map.mean((2, 3))), plain, atol=1e-5)
    else:  # the patch tokens on their grid, without the class token
        tokens = net.forward_features(images)[:, net.num_prefix_tokens:]
        assert out.final_map.shape[2] * out.final_map.shape[3] == tokens.shape[1]
        assert torch.equal(out.final_map.flatten(2).transpose(1, 2), tokens)


def test_tokens_that_form_no_grid_are_one_error_line():
    net = nn.Module()
    with pytest.raises(ModelError) as err:
        final_feature_map(net, torch.randn(2, 7, 16))
    assert "\n" not in str(err.value) and "7 tokens" in str(err.value)


def test_a_classifier_that_is_not_one_linear_over_the_final_map_is_one_error_line():
    class Headless(nn.Module):
        def get_classifier(self) -> nn.Module:
            return nn.Identity()

    info = ModelInfo("headless", 10, 32, ())
    with pytest.raises(ModelError) as err:
        classifier_of(Headless(), info, "catkd", "student")
    assert "\n" not in str(err.value) and "'headless'" in str(err.value) and "'catkd'" in str(err.value)
    wide = nn.Module()
    wide.get_classifier = lambda: nn.Linear(48, 10)  # reads 48 features, the final map has 32 channels
    with pytest.raises(ModelError):
        classifier_of(wide, info, "catkd", "teacher")


def member(method: str, teacher: nn.Module, student: str = "test_efficientnet") -> Member:
    spec = RunSpec(dataset="digits", student=student, teacher="test_resnet", method=method, image_size=32, epochs=1)
    return Member(spec, DIGITS_32, describe_model(teacher, "test_resnet", 1, 32), torch.device("cpu"),
                  teacher_model=teacher)


def test_a_cohort_shares_one_teacher_pass_and_each_member_gets_its_own_maps_and_classifiers():
    teacher = model("test_resnet").requires_grad_(False)
    cat, sdd, kd = member("catkd", teacher), member("sdd_kd", teacher), member("kd", teacher)
    images, labels = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    calls = []
    forward = teacher.forward_features
    teacher.forward_features = lambda x: calls.append(1) or forward(x)
    out = teacher_outputs(teacher, images, {}, [cat, sdd, kd], amp=False)
    teacher.forward_features = forward
    assert len(calls) == 1 and out[MAIN_VIEW].final_map is not None  # one pass for the whole cohort
    with torch.no_grad():
        expected = teacher.forward_features(images)
    steps = {}
    for m in (cat, sdd, kd):
        steps[m.spec.method] = m._step(images, labels, torch.arange(8), out, {}, 0, 1, 0, 1, "train")
    for name in ("catkd", "sdd_kd"):
        step, m = steps[name], (cat if name == "catkd" else sdd)
        assert torch.equal(step.teacher_final_map, expected)
        assert step.student_final_map.requires_grad and step.student_final_map.shape[:2] == (8, m.student.num_features)
        assert step.student_classifier is m.student.get_classifier()  # live: trained with the student
        assert step.teacher_classifier is not teacher.get_classifier()  # a frozen copy of the teacher's
        assert not step.teacher_classifier.weight.requires_grad
        assert torch.equal(step.teacher_classifier.weight, teacher.get_classifier().weight)
    steps["catkd"].teacher_final_map.mul_(0)  # one member's in-place edit is not seen by the next
    assert torch.equal(steps["sdd_kd"].teacher_final_map, expected)
    plain = steps["kd"]
    assert plain.student_final_map is None and plain.teacher_final_map is None
    assert plain.student_classifier is None and plain.teacher_classifier is None


def test_a_training_step_moves_the_students_classifier_through_the_cam_term():
    teacher = model("test_resnet").requires_grad_(False)
    m = member("catkd", teacher, student="test_resnet")
    images, labels = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    out = teacher_outputs(teacher, images, {}, [m], amp=False)
    step = m._step(images, labels, torch.arange(8), out, {}, 0, 1, 0, 1, "train")
    m.method.losses(step)["loss_cat"].backward()
    assert m.student.get_classifier().weight.grad.abs().sum() > 0
    assert teacher.get_classifier().weight.grad is None


def test_the_teacher_pass_runs_once_per_batch_for_the_cohort_and_gives_each_member_the_class_means():
    splits = load_dataset(DataConfig(name="digits", image_size=32))
    teacher = model("test_resnet").requires_grad_(False)
    kdpp, dkdpp, kd = member("kdpp", teacher), member("dkdpp", teacher), member("kd", teacher)
    calls = []
    forward = teacher.forward_features
    teacher.forward_features = lambda x: calls.append(1) or forward(x)
    teacher_pass_before_training(teacher, splits, [kdpp, dkdpp, kd], batch_size=256, amp=False)
    teacher.forward_features = forward
    assert len(calls) == len(list(splits.eval_batches("train", 256)))  # one forward per batch for the cohort
    embeddings, labels = [], []
    with torch.no_grad():
        for batch in splits.eval_batches("train", 256):
            embeddings.append(teacher.forward_head(teacher.forward_features(batch.images), pre_logits=True))
            labels.append(batch.labels)
    embeddings, labels = torch.cat(embeddings).double(), torch.cat(labels)
    expected = torch.stack([embeddings[labels == c].mean(0) for c in range(10)]).float()
    for m in (kdpp, dkdpp):
        assert torch.allclose(m.method.class_centers, expected, atol=1e-5)
        assert "class_centers" in m.method.state_dict()  # saved and restored with the member's checkpoints
        assert m.active and m.teacher_time_s > 0
    assert kd.teacher_time_s == 0 and not dict(kd.method.named_buffers())


@pytest.mark.slow
def test_the_new_capabilities_give_each_run_its_solo_record_in_a_cohort(tmp_path):
    """Final maps, classifiers and the teacher pass shared by a cohort change no member's record."""
    from kdbench.options import ExecOptions
    from kdbench.plan import expand
    from kdbench.scheduler import execute
    from tests.conftest import TINY_STUDENT, TINY_TEACHER, strip_timing

    specs = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], seeds=[0], epochs=1, teacher_epochs=1,
                   batch_size=64, lr=0.01, methods={"kd": {}, "catkd": {}, "kdpp": {}})

    def run(folder: str, cohort: bool) -> list[dict]:
        return execute(specs, ExecOptions(results=tmp_path / folder, device="cpu", progress=False, measure=False,
                                          log=lambda _: None, teacher_cache=tmp_path / "teachers", cohort=cohort))

    together, alone = run("cohort", True), run("solo", False)
    assert [r["cohort_size"] for r in together] == [3] * 3 and all(r["status"] == "ok" for r in together)
    assert [strip_timing(r) for r in together] == [strip_timing(r) for r in alone]
    assert {r["method"]: r["extra_buffers_m"] > 0 for r in together}["kdpp"]  # the class means, kept as a buffer
