"""FitNets and attention transfer: losses against NumPy computed from the papers' formulas, stage pairing, adapters
and their parameter count, one training step on CNN/ViT pairs, and `kdbench run` end to end on digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.cli import main
from kdbench.config import RunSpec, build_params
from kdbench.data import DataConfig, describe_dataset
from kdbench.errors import ConfigError, ModelError
from kdbench.features import ModelInfo, describe_model
from kdbench.methods.at import AttentionTransfer
from kdbench.methods.fitnets import FitNets
from kdbench.models import count_params_m, create_model
from kdbench.training import Member, teacher_forward
from tests.golden.cases import DATA, STUDENT, TEACHER, build, step_for

# ---------------------------------------------------------------------------------------------------------------
# Independent references


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def kd_reference(zs: np.ndarray, zt: np.ndarray, t: float) -> float:
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    ls, lt = log_softmax(zs / t), log_softmax(zt / t)
    return float((np.exp(lt) * (lt - ls)).sum(axis=1).mean() * t * t)


def regressed(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """1x1 conv then training-mode BatchNorm at its initial scale 1 and shift 0."""
    y = np.einsum("oc,nchw->nohw", weight, x)
    return (y - y.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(y.var(axis=(0, 2, 3), keepdims=True) + eps)


def block_pool(x: np.ndarray, size: int) -> np.ndarray:
    n, c, h, w = x.shape
    f = h // size
    return x.reshape(n, c, size, f, size, f).mean(axis=(3, 5))


def attention_reference(fs: np.ndarray, ft: np.ndarray) -> float:
    """Zagoruyko & Komodakis with p = 2, in the CRD normalisation: mean over batch and positions of (Qs - Qt)²."""
    size = min(fs.shape[2], ft.shape[2])
    fs, ft = block_pool(fs, size), block_pool(ft, size)

    def q(f: np.ndarray) -> np.ndarray:
        a = (f**2).mean(axis=1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return float(((q(fs) - q(ft)) ** 2).mean())


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


# ---------------------------------------------------------------------------------------------------------------
# FitNets


def test_fitnets_hint_and_ce_match_the_formula_on_the_fixed_step():
    method = build("fitnets")
    assert method.student_stages == (2,) and method.teacher_stages == (2,)  # the middle stage of 4 and of 5
    step = step_for(method)
    terms = method.losses(step)
    assert set(terms) == {"loss_ce", "loss_hint"}
    conv, bn = method.regressor.proj
    student = regressed(as_numpy(step.student_features[2]), as_numpy(conv.weight)[:, :, 0, 0], bn.eps)
    student = np.maximum(student, 0.0)  # the regressor ends with a ReLU, as the authors' ConvReg
    mse = float(((student - as_numpy(step.teacher_features[2])) ** 2).mean())
    assert terms["loss_hint"].item() == pytest.approx(100 * mse, rel=1e-5)
    ce = cross_entropy(as_numpy(step.student_logits), step.labels.numpy())
    assert terms["loss_ce"].item() == pytest.approx(ce, rel=1e-5)


def test_fitnets_regressor_is_its_only_parameters_and_counts_as_extra():
    method = build("fitnets")
    s, t = STUDENT.stages[2], TEACHER.stages[2]
    assert sum(p.numel() for p in method.parameters()) == s.channels * t.channels + 2 * t.channels
    assert count_params_m(method) == pytest.approx((32 * 64 + 128) / 1e6)


def test_fitnets_stage_overrides_as_set_on_the_command_line():
    params = build_params(FitNets.Params, {"hint_depth": "0.25", "student_stage": "-1"}, "fitnets")
    method = FitNets(params, STUDENT, TEACHER, DATA)
    assert method.student_stages == (3,) and method.teacher_stages == (1,)
    # student 64 x 2x2 -> teacher 32 x 8x8: projected, then interpolated up to the teacher's map
    step = step_for(method)
    assert method.regressor(step.student_features[3]).shape == step.teacher_features[1].shape
    with pytest.raises(ConfigError, match="hint_depth"):
        build_params(FitNets.Params, {"hint_depth": "2"}, "fitnets")
    with pytest.raises(ConfigError, match="out of range for 'teacher', which has 5 stages"):
        FitNets(FitNets.Params(teacher_stage=5), STUDENT, TEACHER, DATA)


def test_fitnets_two_stage_schedule_hint_phase_then_kd():
    torch.manual_seed(0)
    method = FitNets(FitNets.Params(hint_epochs=3), STUDENT, TEACHER, DATA)
    assert method.init_epochs == 3  # the hint epochs are an initialisation phase before the full budget
    step = step_for(method)
    step.phase = "init"
    step.student_logits.requires_grad_(True)
    hint_only = method.init_losses(step)
    assert set(hint_only) == {"loss_hint"}
    hint_only["loss_hint"].backward()
    assert step.student_logits.grad is None  # stage 1 trains the student only up to the guided stage
    conv, bn = method.regressor.proj
    student = regressed(as_numpy(step.student_features[2]), as_numpy(conv.weight)[:, :, 0, 0], bn.eps)
    student = np.maximum(student, 0.0)  # the regressor ends with a ReLU, as the authors' ConvReg
    mse = float(((student - as_numpy(step.teacher_features[2])) ** 2).mean())
    assert hint_only["loss_hint"].item() == pytest.approx(100 * mse, rel=1e-5)

    step.phase = "train"
    kd_terms = method.losses(step)
    assert set(kd_terms) == {"loss_ce", "loss_kd"}
    zs, zt = as_numpy(step.student_logits), as_numpy(step.teacher_logits)
    assert kd_terms["loss_ce"].item() == pytest.approx(0.1 * cross_entropy(zs, step.labels.numpy()), rel=1e-5)
    assert kd_terms["loss_kd"].item() == pytest.approx(0.9 * kd_reference(zs, zt, 4.0), rel=1e-5)


def test_fitnets_hint_phase_may_be_longer_than_the_main_budget():
    method = FitNets(FitNets.Params(hint_epochs=10), STUDENT, TEACHER, DATA)
    assert method.init_epochs == 10 and set(method.losses(step_for(method))) == {"loss_ce", "loss_kd"}


# ---------------------------------------------------------------------------------------------------------------
# Attention transfer


def test_at_default_pairs_every_stage_but_the_first_of_the_shallower_model():
    method = build("at")
    # student (4 stages) 1, 2, 3 at depths 1/3, 2/3, 1 -> teacher (5 stages) 1.33, 2.67, 4 -> 1, 3, 4
    assert method.pairs == ((1, 1), (2, 3), (3, 4))
    assert method.student_stages == (1, 2, 3) and method.teacher_stages == (1, 3, 4)
    assert not list(method.parameters())


def test_at_loss_matches_the_formula_on_the_fixed_step():
    method = build("at")
    step = step_for(method)
    terms = method.losses(step)
    expected = sum(attention_reference(as_numpy(step.student_features[s]), as_numpy(step.teacher_features[t]))
                   for s, t in method.pairs)
    assert terms["loss_at"].item() == pytest.approx(1000 * expected, rel=1e-5)
    ce = cross_entropy(as_numpy(step.student_logits), step.labels.numpy())
    assert terms["loss_ce"].item() == pytest.approx(ce, rel=1e-5)


def test_at_is_zero_for_proportional_attention_and_ignores_feature_scale():
    from kdbench.methods.at import attention_loss

    f = torch.randn(4, 8, 4, 4)
    assert attention_loss(f, 3 * f).item() == pytest.approx(0.0, abs=1e-12)
    # a teacher map twice as large, whose 2x2 windows repeat the student's values: identical after pooling
    assert attention_loss(f, f.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)).item() == pytest.approx(
        0.0, abs=1e-12)
    assert attention_loss(f, torch.randn(4, 16, 4, 4)).item() > 0


def test_at_stage_overrides_as_set_on_the_command_line():
    params = build_params(AttentionTransfer.Params, {"depths": "0.5,1"}, "at")
    assert AttentionTransfer(params, STUDENT, TEACHER, DATA).pairs == ((2, 2), (3, 4))
    params = build_params(AttentionTransfer.Params, {"student_indices": "1,-1", "teacher_indices": "2,4"}, "at")
    assert AttentionTransfer(params, STUDENT, TEACHER, DATA).pairs == ((1, 2), (3, 4))
    params = build_params(AttentionTransfer.Params, {"teacher_indices": "2"}, "at")
    with pytest.raises(ConfigError, match="pairs 3 student stage\\(s\\) with 1 teacher stage"):
        AttentionTransfer(params, STUDENT, TEACHER, DATA)
    with pytest.raises(ConfigError, match="depths"):
        build_params(AttentionTransfer.Params, {"depths": "0.5,1.5"}, "at")


# ---------------------------------------------------------------------------------------------------------------
# Models without feature taps


@pytest.mark.parametrize("cls", [FitNets, AttentionTransfer])
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_a_model_without_taps_fails_at_construction_in_one_line_naming_it(cls, side):
    bare = ModelInfo("my_mlp", 10, 64, stages=())
    student, teacher = (bare, TEACHER) if side == "student" else (STUDENT, bare)
    with pytest.raises(ModelError) as err:
        cls(cls.Params(), student, teacher, DATA)
    message = str(err.value)
    assert "\n" not in message and "'my_mlp'" in message and f"{cls.name!r}" in message


# ---------------------------------------------------------------------------------------------------------------
# One training step on real timm pairs (32x32 single-channel inputs, as digits with --image-size 32)

DIGITS_32 = describe_dataset(DataConfig(name="digits", image_size=32))


def one_step(teacher_name: str, student_name: str, method: str, overrides: dict | None = None) -> Member:
    """Build the member as the engine does, run one training step on a random batch and return it."""
    torch.manual_seed(0)
    teacher = create_model(teacher_name, num_classes=10, in_chans=1, image_size=32).eval()
    teacher_info = describe_model(teacher, teacher_name, 1, 32)
    spec = RunSpec(dataset="digits", student=student_name, teacher=teacher_name, method=method,
                   method_params=overrides or {}, image_size=32, epochs=1)
    member = Member(spec, DIGITS_32, teacher_info, torch.device("cpu"))
    images, labels = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in member.method.parameters()]
    student_before = next(member.student.parameters()).detach().clone()
    out = teacher_forward(teacher, images, member.method.teacher_stages, amp=False)
    member.train_step(images, labels, torch.arange(8), out, epoch=0, iteration=0, iterations=1)
    assert member.history == [] and member.stats.steps == 1
    assert torch.isfinite(member.stats.loss_sums["loss"])
    assert not torch.equal(next(member.student.parameters()), student_before)
    assert all(not torch.equal(p, b) for p, b in zip(member.method.parameters(), before, strict=True))
    fresh = create_model(student_name, num_classes=10, in_chans=1, image_size=32)
    assert count_params_m(member.student) == count_params_m(fresh)  # adapters are not part of the student
    return member


TINY_PAIRS = [
    ("test_resnet", "test_efficientnet", {}),  # CNN -> CNN, channel mismatch
    ("test_resnet", "test_efficientnet", {"student_stage": 1}),  # student 8x8 vs teacher 4x4: pooled
    ("test_resnet", "test_efficientnet", {"student_stage": 3}),  # student 2x2 vs teacher 4x4: interpolated
    ("test_resnet", "test_vit", {}),  # CNN -> ViT: ViT 2x2 token map up to the ResNet's 4x4
    ("test_vit", "test_efficientnet", {}),  # ViT -> CNN: the student's 4x4 map pooled to the ViT's 2x2
]


@pytest.mark.parametrize(("teacher", "student", "overrides"), TINY_PAIRS)
def test_fitnets_trains_student_and_regressor_on_tiny_pairs(teacher, student, overrides):
    member = one_step(teacher, student, "fitnets", overrides)
    expected = sum(p.numel() for p in member.method.regressor.parameters()) / 1e6
    assert member.extra_params_m == pytest.approx(expected) and expected > 0


@pytest.mark.parametrize(("teacher", "student"), [(t, s) for t, s, o in TINY_PAIRS if not o])
def test_at_trains_on_tiny_pairs(teacher, student):
    member = one_step(teacher, student, "at")
    assert member.extra_params_m == 0
    assert set(member.stats.loss_sums) == {"loss", "loss_ce", "loss_at"}


@pytest.mark.slow
@pytest.mark.parametrize(("teacher", "student"), [
    ("convnext_atto", "mobilenetv3_small_050"),  # ConvNeXt (4 stages) -> MobileNetV3 (5)
    ("vit_tiny_patch16_224", "resnet18"),  # ViT (12 blocks) -> ResNet (5)
    ("resnet18", "vit_tiny_patch16_224"),  # ResNet -> ViT
])
@pytest.mark.parametrize("method", ["fitnets", "at"])
def test_real_timm_pairs_construct_and_train_one_step(teacher, student, method):
    member = one_step(teacher, student, method)
    assert (member.extra_params_m > 0) == (method == "fitnets")


# ---------------------------------------------------------------------------------------------------------------
# End to end


def read_records(results: Path) -> dict[str, dict]:
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    return {r["method"]: r for r in records}


@pytest.mark.slow
def test_kdbench_run_fitnets_and_at_end_to_end_on_digits(tiny_run_args, results, capsys):
    args = tiny_run_args + ["--method", "fitnets", "--method", "at", "--set", "at.depths=0.5,1"]
    assert main(args) == 0
    records = read_records(results)
    assert set(records) == {"fitnets", "at"}
    assert all(r["status"] == "ok" for r in records.values())
    student = create_model("test_efficientnet", num_classes=10, in_chans=1, image_size=8)
    for record in records.values():
        assert record["params_m"] == pytest.approx(count_params_m(student))
    # digits at 8x8: the middle stages are test_resnet layer2 (48 ch) and test_efficientnet blocks.2 (32 ch)
    assert records["fitnets"]["extra_params_m"] == pytest.approx((32 * 48 + 2 * 48) / 1e6)
    assert records["at"]["extra_params_m"] == 0
    assert records["at"]["method_label"] == "at(depths=[0.5,1])"
    assert {"loss_ce", "loss_hint"} <= set(records["fitnets"]["history"][0])
    assert "at(depths=[0.5,1])" in capsys.readouterr().out


class PlainMLP(torch.nn.Module):
    """A classifier without timm's feature interface."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int, **_: object) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = torch.nn.Linear(in_chans * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.mark.slow
def test_a_student_without_taps_is_recorded_failed_with_the_one_line_error(results, monkeypatch):
    from kdbench import training
    from kdbench.options import ExecOptions
    from kdbench.scheduler import execute

    timm_create = training.member.create_model

    def create(name: str, **kwargs: object) -> torch.nn.Module:
        return PlainMLP(**kwargs) if name == "plain_mlp" else timm_create(name, **kwargs)

    monkeypatch.setattr(training.member, "create_model", create)
    specs = [RunSpec(dataset="digits", student="plain_mlp", teacher="test_resnet", method=m, epochs=1,
                     teacher_epochs=1) for m in ("fitnets", "at")]
    records = execute(specs, ExecOptions(results=results, device="cpu", progress=False, measure=False,
                                         log=lambda line: None))
    assert [r["status"] for r in records] == ["failed", "failed"]
    for record in records:
        assert record["error"].startswith("model 'plain_mlp' does not support timm's forward_intermediates")
        assert f"method {record['method']!r} needs" in record["error"] and "\n" not in record["error"]
