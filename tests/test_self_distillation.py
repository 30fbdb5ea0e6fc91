"""Self-distillation methods (byot, tfkd, ban): losses against NumPy formulas, and end to end through the engine.

The end-to-end runs train on `digits` with no teacher at all: the engine's teacher preparation and teacher forward
are replaced by functions that raise, so any use of a teacher fails the test.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdbench.training as training
from kdbench.data import DataConfig, load_dataset
from kdbench.distiller import Step, TeacherParts, generations_of, get_method
from kdbench.errors import ModelError
from kdbench.features import ModelInfo, StageShape, describe_model, forward_with_features
from kdbench.models import create_model
from kdbench.options import ExecOptions
from kdbench.plan import expand, make_spec, plan_cohorts
from kdbench.results import load
from kdbench.scheduler import execute
from kdbench.training.evaluation import predict_deployed
from tests.conftest import TINY_STUDENT, TINY_TEACHER, strip_timing
from tests.golden.cases import DATA, STUDENT, build, golden_path, step_for
from tests.golden.cases import previous_generation as golden_previous_generation

BornAgain, BeYourOwnTeacher, TeacherFreeKD = get_method("ban"), get_method("byot"), get_method("tfkd")
BUDGET = dict(epochs=1, teacher_epochs=1, batch_size=64, lr=0.05)
DIGITS = dict(num_classes=10, in_chans=1, image_size=8)


# ---------------------------------------------------------------------------------------------------------------
# Independent formulas


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy(z: np.ndarray, labels: np.ndarray) -> float:
    return float(-log_softmax(z)[np.arange(len(labels)), labels].mean())


def kl(p_teacher: np.ndarray, log_p_student: np.ndarray) -> float:
    """KL(p_t || p_s) summed over classes, averaged over the batch."""
    return float((p_teacher * (np.log(p_teacher) - log_p_student)).sum(axis=1).mean())


def numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def train_steps_per_epoch() -> int:
    return load_dataset(DataConfig(name="digits")).num_batches("train", BUDGET["batch_size"])


# ---------------------------------------------------------------------------------------------------------------
# TF-KD


def reference_tfkd(z: np.ndarray, labels: np.ndarray, a: float, t: float, alpha: float, mult: float) -> tuple:
    k = z.shape[1]
    p_d = np.full(z.shape, (1 - a) / (k - 1))
    p_d[np.arange(len(labels)), labels] = a
    target = np.exp(p_d / t) / np.exp(p_d / t).sum(axis=1, keepdims=True)
    return (1 - alpha) * cross_entropy(z, labels), alpha * mult * kl(target, log_softmax(z))


@pytest.mark.parametrize("a,t,alpha,mult", [(0.99, 20.0, 0.1, 1.0), (0.9, 1.0, 0.5, 1.0), (0.6, 4.0, 0.95, 3.0)])
def test_tfkd_matches_numpy(a, t, alpha, mult):
    rng = np.random.default_rng(1)
    z, labels = rng.normal(size=(12, 7)) * 3, rng.integers(0, 7, size=12)
    method = TeacherFreeKD(TeacherFreeKD.Params(correct_prob=a, temperature=t, alpha=alpha, multiplier=mult),
                           STUDENT, None, DATA)
    step = step_for(method)
    step.student_logits, step.labels = torch.tensor(z, dtype=torch.float32), torch.tensor(labels)
    terms = method.losses(step)
    ce, reg = reference_tfkd(z, labels, a, t, alpha, mult)
    assert terms["loss_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["loss_reg"].item() == pytest.approx(reg, rel=1e-4)


def test_tfkd_uniform_virtual_teacher_against_uniform_student_costs_nothing():
    # a = 1/K makes p_d uniform, so the softened virtual teacher is uniform too: KL to a uniform student is 0
    method = TeacherFreeKD(TeacherFreeKD.Params(correct_prob=0.1, alpha=1.0), STUDENT, None, DATA)
    step = step_for(method)
    step.student_logits = torch.zeros(8, 10)
    assert method.losses(step)["loss_reg"].item() == pytest.approx(0.0, abs=1e-7)


def test_tfkd_defaults_equal_the_official_resnet18_setting():
    # official: KLDivLoss averaged over batch AND classes, times multiplier 100, CIFAR-100 (K = 100)
    p = TeacherFreeKD.Params()
    assert (p.correct_prob, p.temperature, p.alpha, p.multiplier) == (0.99, 20.0, 0.1, 1.0)
    rng = np.random.default_rng(2)
    z, labels = rng.normal(size=(6, 100)) * 2, rng.integers(0, 100, size=6)
    p_d = np.full(z.shape, 0.01 / 99)
    p_d[np.arange(6), labels] = 0.99
    target = np.exp(p_d / 20) / np.exp(p_d / 20).sum(axis=1, keepdims=True)
    official = 0.1 * (target * (np.log(target) - log_softmax(z))).mean() * 100
    info = ModelInfo("s", 100, 8, ())
    method = TeacherFreeKD(p, info, None, DATA)
    step = step_for(method)
    step.student_logits, step.labels = torch.tensor(z, dtype=torch.float32), torch.tensor(labels)
    assert method.losses(step)["loss_reg"].item() == pytest.approx(official, rel=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# BYOT


def timm_like(stages: int) -> ModelInfo:
    shapes = tuple(StageShape(8 * 2**i, 32 >> (i + 1), 32 >> (i + 1), 2 ** (i + 1)) for i in range(stages))
    return ModelInfo("m", 10, shapes[-1].channels, shapes)


def test_byot_puts_exits_on_the_deepest_intermediate_stages():
    five = timm_like(5)  # a timm ResNet: stem, then four stages
    assert BeYourOwnTeacher(BeYourOwnTeacher.Params(), five, None, DATA).exit_stages == (1, 2, 3)
    assert BeYourOwnTeacher(BeYourOwnTeacher.Params(exits=1), five, None, DATA).exit_stages == (3,)
    method = BeYourOwnTeacher(BeYourOwnTeacher.Params(exits=9), five, None, DATA)
    assert method.exit_stages == (0, 1, 2, 3)
    assert method.student_stages == (0, 1, 2, 3, 4)


def test_byot_needs_feature_taps_and_two_stages():
    with pytest.raises(ModelError, match="forward_intermediates"):
        BeYourOwnTeacher(BeYourOwnTeacher.Params(), ModelInfo("vgg_like", 10, 64, ()), None, DATA)
    with pytest.raises(ModelError, match="at least two"):
        BeYourOwnTeacher(BeYourOwnTeacher.Params(), timm_like(1), None, DATA)


def test_byot_params_are_checked():
    defaults = BeYourOwnTeacher.Params()
    assert (defaults.alpha, defaults.hint_weight, defaults.temperature, defaults.exits) == (0.3, 0.03, 3.0, 3)
    for bad in ({"alpha": 1.5}, {"temperature": 0.0}, {"hint_weight": -1.0}, {"exits": 0}):
        with pytest.raises(ValueError):
            BeYourOwnTeacher.Params(**bad)


def byot_head_params(channels: list[int], deepest: int, classes: int) -> int:
    """1x1 conv + BN, 3x3 conv + BN, 1x1 conv + BN, linear: counted by hand."""
    width = deepest // 4
    per_head = 2 * width + 9 * width * width + 2 * width + width * deepest + 2 * deepest + deepest * classes + classes
    return sum(c * width + per_head for c in channels)


def test_byot_heads_are_method_parameters_of_the_expected_size():
    method = BeYourOwnTeacher(BeYourOwnTeacher.Params(), STUDENT, None, DATA)
    assert sum(p.numel() for p in method.parameters()) == byot_head_params([8, 16, 32], 64, 10)


@pytest.mark.parametrize("alpha,hint,t", [(0.3, 0.03, 3.0), (0.7, 1.0, 1.0)])
def test_byot_loss_matches_numpy(alpha, hint, t):
    torch.manual_seed(0)
    method = BeYourOwnTeacher(BeYourOwnTeacher.Params(alpha=alpha, hint_weight=hint, temperature=t), STUDENT, None,
                              DATA)
    step = step_for(method)
    exits = method.exit_outputs(step.student_features)
    for (feature, logits), stage in zip(exits, method.exit_stages, strict=True):
        assert feature.shape == (8, 64) and logits.shape == (8, 10)
        head_map = method.heads[method.exit_stages.index(stage)]["bottleneck"](step.student_features[stage])
        assert head_map.shape == (8, 64, 2, 2)  # the deepest stage's shape
    z_c, y = numpy(step.student_logits), step.labels.numpy()
    f_c = numpy(step.student_features[3]).mean(axis=(2, 3))
    q_c = np.exp(log_softmax(z_c / t))
    expected = {
        "loss_ce": cross_entropy(z_c, y),
        "loss_exit_ce": (1 - alpha) * sum(cross_entropy(numpy(z), y) for _, z in exits),
        "loss_exit_kd": alpha * sum(kl(q_c, log_softmax(numpy(z) / t)) for _, z in exits),
        "loss_exit_hint": hint * sum(((numpy(f) - f_c) ** 2).sum(axis=1).mean() for f, _ in exits),
    }
    got = {k: v.item() for k, v in method.losses(step).items()}
    assert got == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"])
def test_byot_builds_on_any_timm_model_with_feature_taps(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=3, image_size=32)
    method = BeYourOwnTeacher(BeYourOwnTeacher.Params(), describe_model(model, name, 3, 32), None, DATA)
    images = torch.randn(4, 3, 32, 32)
    logits, features = forward_with_features(model, images, method.student_stages)
    step = Step(images=images, labels=torch.arange(4), indices=torch.arange(4), student_logits=logits,
                student_features=features)
    total = sum(method.losses(step).values())
    total.backward()
    assert torch.isfinite(total) and all(p.grad is not None for p in method.parameters())
    with torch.no_grad():  # the deployed variants: each exit, the final classifier and their mean
        outputs = {n: v.eval()(images) for n, v in method.deployed_variants(model, TeacherParts()).items()}
    assert len(outputs) == len(method.exit_stages) + 2 and all(o.shape == (4, 10) for o in outputs.values())


def test_byot_teaches_only_the_shallow_exits():
    method = BeYourOwnTeacher(BeYourOwnTeacher.Params(), STUDENT, None, DATA)
    step = step_for(method)
    for t in [step.student_logits, *step.student_features.values()]:
        t.requires_grad_(True)
    terms = method.losses(step)
    (terms["loss_exit_kd"] + terms["loss_exit_hint"]).backward()
    assert step.student_logits.grad is None and step.student_features[3].grad is None  # the teacher side
    assert all(step.student_features[s].grad.abs().sum() > 0 for s in (0, 1, 2))


def test_byot_exits_are_evaluated_in_eval_mode_and_name_every_exit():
    splits = load_dataset(DataConfig(name="digits"))
    info = splits.info
    torch.manual_seed(0)
    student = create_model(TINY_STUDENT, num_classes=info.num_classes, in_chans=info.in_chans,
                           image_size=info.image_size)
    student_info = describe_model(student, TINY_STUDENT, info.in_chans, info.image_size)
    method = BeYourOwnTeacher(BeYourOwnTeacher.Params(), student_info, None, info)
    method.train()
    for _ in range(3):  # give BatchNorm running statistics different from batch statistics
        method.exit_outputs({s: 2 + torch.randn(8, c.channels, c.height, c.width)
                             for s, c in enumerate(student_info.stages)})
    buffers = {k: v.clone() for k, v in method.state_dict().items()}
    member = SimpleNamespace(spec=SimpleNamespace(amp=False, channels_last=False), method=method, student=student,
                             deployed=lambda: student, teacher_parts=TeacherParts)  # what the evaluation reads
    pred = predict_deployed(member, splits, "test", 256)  # the deployed network, then each variant
    assert list(pred.extra) == [*(f"stage{s}" for s in method.exit_stages), "final", "ensemble"]
    assert method.training and all(torch.equal(v, buffers[k]) for k, v in method.state_dict().items())
    assert student.training and all(m.training for m in method.modules())  # their modes are put back
    one = predict_deployed(member, splits, "test", 1)  # per-sample: BatchNorm in eval mode
    for name, logits in pred.extra.items():
        assert torch.allclose(one.extra[name], logits, atol=1e-4), name
    assert torch.equal(pred.extra["final"], pred.logits)
    stacked = torch.stack([pred.extra[f"stage{s}"] for s in method.exit_stages] + [pred.logits])
    assert torch.allclose(pred.extra["ensemble"], stacked.mean(0), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# BAN


def test_ban_declares_a_self_made_teacher_and_its_generations():
    assert not BornAgain.needs_teacher and BornAgain.teacher_source == "self"
    assert generations_of(BornAgain, BornAgain.Params()) == 2
    assert generations_of(BornAgain, BornAgain.Params(generations=4)) == 4
    spec = make_spec(dataset="digits", student=TINY_STUDENT, method="ban", teacher=TINY_TEACHER, **BUDGET)
    assert spec.teacher is None and spec.teacher_source == "self"
    ce = make_spec(dataset="digits", student=TINY_STUDENT, method="ce", teacher=None, **BUDGET)
    assert sorted(len(c) for c in plan_cohorts([spec, ce])) == [1, 1]  # several generations train alone
    with pytest.raises(ValueError):
        BornAgain.Params(generations=0)


def previous_generation() -> torch.nn.Module:
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    return model.eval().requires_grad_(False)


def test_ban_generation_zero_is_plain_cross_entropy():
    method = BornAgain(BornAgain.Params(), STUDENT, None, DATA)
    step = step_for(method)
    assert step.teacher_logits is None  # generation 0 has no teacher
    terms = method.losses(step)
    assert list(terms) == ["loss_ce"]
    assert terms["loss_ce"].item() == pytest.approx(cross_entropy(numpy(step.student_logits), step.labels.numpy()),
                                                    rel=1e-5)


@pytest.mark.parametrize("t,ce_weight", [(1.0, 0.0), (2.0, 1.0)])
def test_ban_distills_from_the_previous_generation(t, ce_weight):
    previous = previous_generation()
    method = BornAgain(BornAgain.Params(temperature=t, ce_weight=ce_weight), STUDENT, None, DATA)
    step = step_for(method)
    step.student_logits.requires_grad_(True)
    with torch.no_grad():  # the harness hands a later generation the previous one's outputs as its teacher's
        step.teacher_logits = previous(step.images)
        z_prev = numpy(step.teacher_logits)
    z, y = numpy(step.student_logits), step.labels.numpy()
    terms = method.losses(step)
    expected = t * t * kl(np.exp(log_softmax(z_prev / t)), log_softmax(z / t))
    assert terms["loss_kd"].item() == pytest.approx(expected, rel=1e-4)
    assert ("loss_ce" in terms) == bool(ce_weight)
    if ce_weight:
        assert terms["loss_ce"].item() == pytest.approx(cross_entropy(z, y), rel=1e-5)
    sum(terms.values()).backward()
    assert step.student_logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in previous.parameters())


# ---------------------------------------------------------------------------------------------------------------
# The pinned golden values are the NumPy references on the golden fixture


def test_golden_values_agree_with_the_numpy_references():
    golden = {name: json.loads(golden_path(name).read_text()) for name in ("byot", "tfkd", "ban")}
    step = step_for(build("tfkd"))
    z, y = numpy(step.student_logits), step.labels.numpy()
    ce, reg = reference_tfkd(z, y, 0.99, 20.0, 0.1, 1.0)
    assert golden["tfkd"] == pytest.approx({"loss_ce": ce, "loss_reg": reg}, rel=1e-5)
    previous = numpy(golden_previous_generation()(step.images))  # the golden cases' frozen generation 0
    assert golden["ban"] == pytest.approx({
        "loss_ce": cross_entropy(z, y),  # generation 0: plain cross-entropy
        "generation_1.loss_kd": kl(np.exp(log_softmax(previous)), log_softmax(z)),  # T = 1, labels unweighted
    }, rel=1e-5)
    byot = build("byot")
    step = step_for(byot)
    exits = byot.exit_outputs(step.student_features)
    f_c, q_c = numpy(step.student_features[3]).mean(axis=(2, 3)), np.exp(log_softmax(z / 3))
    assert golden["byot"] == pytest.approx({
        "loss_ce": cross_entropy(z, y),
        "loss_exit_ce": 0.7 * sum(cross_entropy(numpy(e), y) for _, e in exits),
        "loss_exit_kd": 0.3 * sum(kl(q_c, log_softmax(numpy(e) / 3)) for _, e in exits),
        "loss_exit_hint": 0.03 * sum(((numpy(f) - f_c) ** 2).sum(axis=1).mean() for f, _ in exits),
    }, rel=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# End to end on digits, with no teacher anywhere


@pytest.fixture(scope="module")
def teacher_free_run(tmp_path_factory):
    """byot, tfkd and ban (two generations), trained once for the tests below.

    No teacher is prepared and the only model the teacher pass may run is a previous generation of ban.
    """

    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher was used")

    real_teacher_forward = training.forward.teacher_forward

    def previous_generation_only(model, *args, **kwargs):
        if not any(model is g["trained"] for g in generations):
            raise AssertionError("a teacher was used")
        return real_teacher_forward(model, *args, **kwargs)

    created: dict[int, dict[str, torch.Tensor]] = {}
    generations: list[dict] = []
    real_create, real_next = training.member.create_model, training.Member.next_generation

    def recording_create(*args, **kwargs):
        model = real_create(*args, **kwargs)
        created[id(model)] = {k: v.clone() for k, v in model.state_dict().items()}
        return model

    def recording_next(member):
        trained = member.student
        calls = []
        trained.register_forward_hook(lambda *_: calls.append(1))
        real_next(member)
        generations.append({"trained": trained, "trained_init": created[id(trained)], "next": member.student,
                            "next_init": created[id(member.student)], "previous_calls": calls,
                            "previous_in_member": member.previous_student})

    results = tmp_path_factory.mktemp("self_distillation") / "results"
    specs = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods={"byot": {}, "tfkd": {}, "ban": {}},
                   seeds=[0], **BUDGET)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("kdbench.engine.prepare_teacher", no_teacher)
        mp.setattr(training.forward, "teacher_forward", previous_generation_only)
        mp.setattr(training.member, "create_model", recording_create)
        mp.setattr(training.Member, "next_generation", recording_next)
        records = execute(specs, ExecOptions(results=results, device="cpu", progress=False, measure=False,
                                             log=lambda line: None))
    return {"records": {r["method"]: r for r in records}, "results": results, "generations": generations}


@pytest.mark.slow
def test_teacher_free_records_have_no_teacher(teacher_free_run):
    records = teacher_free_run["records"]
    assert sorted(records) == ["ban", "byot", "tfkd"]
    for method, record in records.items():
        assert record["status"] == "ok", record["error"]
        assert record["teacher"] is None and record["teacher_top1"] is None and record["agreement"] is None
        assert record["teacher_source"] == ("self" if method == "ban" else "none")
        assert record["teacher_time_s"] is None and record["teacher_epochs"] == 0
    assert not (teacher_free_run["results"] / "teachers").exists()


@pytest.mark.slow
def test_byot_record_has_every_exit_and_counts_its_heads_apart(teacher_free_run):
    record = teacher_free_run["records"]["byot"]
    student = create_model(TINY_STUDENT, **DIGITS)
    stages = describe_model(student, TINY_STUDENT, DIGITS["in_chans"], DIGITS["image_size"]).stages
    assert [s.channels for s in stages] == [16, 24, 32, 48, 64]  # exits on stages 1-3, the deepest has 64
    assert record["params_m"] == pytest.approx(sum(p.numel() for p in student.parameters()) / 1e6)
    assert record["extra_params_m"] == pytest.approx(byot_head_params([24, 32, 48], 64, 10) / 1e6)
    exits = record["exit_top1"]
    assert sorted(exits) == ["ensemble", "final", "stage1", "stage2", "stage3"]
    assert exits["final"] == record["top1"]
    test_size = 359
    for value in exits.values():
        assert 0 <= value <= 100 and math.isclose(value * test_size / 100, round(value * test_size / 100),
                                                  abs_tol=1e-3)
    assert {"loss_ce", "loss_exit_ce", "loss_exit_kd", "loss_exit_hint"} <= set(record["history"][0])


@pytest.mark.slow
def test_tfkd_record_has_its_terms_and_no_extras(teacher_free_run):
    record = teacher_free_run["records"]["tfkd"]
    assert record["extra_params_m"] == 0 and "exit_top1" not in record and "generation_top1" not in record
    assert {"loss_ce", "loss_reg"} <= set(record["history"][0])


@pytest.mark.slow
def test_ban_record_keeps_each_generation(teacher_free_run):
    record = teacher_free_run["records"]["ban"]
    assert len(record["generation_top1"]) == 2 and record["top1"] == record["generation_top1"][-1]
    assert [h["generation"] for h in record["history"]] == [0, 1]
    assert "loss_kd" not in record["history"][0] and "loss_kd" in record["history"][1]
    assert record["extra_params_m"] == 0


@pytest.mark.slow
def test_ban_generations_are_different_students(teacher_free_run):
    (gen,) = teacher_free_run["generations"]
    assert gen["previous_in_member"] is gen["trained"] and gen["next"] is not gen["trained"]
    assert not gen["trained"].training and not any(p.requires_grad for p in gen["trained"].parameters())
    weights = [k for k, v in gen["trained_init"].items() if v.is_floating_point() and v.dim() > 1]
    assert any(not torch.equal(gen["trained_init"][k], gen["next_init"][k]) for k in weights)  # fresh init
    final_next = gen["next"].state_dict()
    assert any(not torch.equal(final_next[k], gen["trained"].state_dict()[k]) for k in weights)
    assert len(gen["previous_calls"]) == train_steps_per_epoch()  # generation 1 ran generation 0 at every step


@pytest.mark.slow
def test_self_distillation_sits_next_to_teacher_based_runs(tmp_path, monkeypatch):
    from kdbench.report.aggregate import leaderboard

    forwards = []
    real_forward = training.forward.teacher_forward
    monkeypatch.setattr(training.forward, "teacher_forward",
                        lambda *a, **k: forwards.append(1) or real_forward(*a, **k))
    specs = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods={"kd": {}, "tfkd": {}},
                   seeds=[0], **BUDGET)
    records = {r["method"]: r for r in execute(specs, ExecOptions(results=tmp_path, device="cpu", progress=False,
                                                                     measure=False, log=lambda line: None))}
    assert records["kd"]["cohort_size"] == records["tfkd"]["cohort_size"] == 2  # one data stream
    assert records["kd"]["teacher"] == TINY_TEACHER and records["tfkd"]["teacher"] is None
    assert len(forwards) == train_steps_per_epoch()  # one teacher pass per batch (one epoch), shared
    board = leaderboard(load(tmp_path))
    rows = {row["method"]: row for _, row in board.iterrows()}
    assert rows["kd"]["teacher"] == rows["tfkd"]["teacher"] == TINY_TEACHER  # same pair, same table
    assert rows["kd"]["uses_teacher"] and not rows["tfkd"]["uses_teacher"]


@pytest.mark.slow
def test_a_generations_plugin_of_the_older_contract_trains_as_ban_does(tmp_path, method_sandbox, one_torch_thread):
    """``num_generations`` / ``start_generation`` (the hooks before ``teacher_source = "self"``) still work, and a
    plugin that runs the previous generation itself gets ban's record, bit for bit."""
    from kdbench.distiller import register_method
    from kdbench.losses import kd_loss

    @register_method("old_ban")
    class OldBornAgain(BornAgain):
        """BAN written to the older contract (test): it counts its generations and runs the previous one itself."""

        teacher_source = None

        @classmethod
        def num_generations(cls, params):
            return params.generations

        def start_generation(self, generation, previous):
            self._previous = (previous,) if previous is not None else ()

        def losses(self, step):
            if not getattr(self, "_previous", ()):
                return {"loss_ce": F.cross_entropy(step.student_logits, step.labels)}
            with torch.inference_mode():
                previous_logits = self._previous[0](step.images)
            return {"loss_kd": kd_loss(step.student_logits, previous_logits.clone(), self.params.temperature)}

    assert generations_of(OldBornAgain, OldBornAgain.Params(generations=3)) == 3
    specs = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods={"ban": {}, "old_ban": {}},
                   seeds=[0], **BUDGET)
    records = {r["method"]: r for r in execute(specs, ExecOptions(results=tmp_path / "results", device="cpu",
                                                                   progress=False, measure=False,
                                                                   log=lambda line: None))}
    new, old = records["ban"], records["old_ban"]
    assert new["status"] == old["status"] == "ok", (new["error"], old["error"])
    assert old["generation_top1"] == new["generation_top1"] and old["top1"] == new["top1"]
    assert strip_timing(old)["history"] == strip_timing(new)["history"]
