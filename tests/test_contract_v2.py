"""Method contract v2: each point is used by a small plugin, trained in a cohort and solo with identical records.

The points: pre-logits embeddings, the construction context (and buffers reported apart), the initialisation
phase, parameter groups and the optimiser setting, students with extra heads, extra views of the batch, and
teacher outputs that a member cannot change for the others. Plus: versions in the run id and the record, the
report's warning on mixed versions, and the test top-1 at the best validation epoch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import kdbench.training as training
from kdbench.cli import main
from kdbench.config import PROTOCOL_VERSION
from kdbench.distiller import Distiller, RunContext, Step, register_method
from kdbench.methods.kd import LogitKD
from kdbench.options import ExecOptions
from kdbench.plan import expand, make_plan
from kdbench.report.aggregate import version_warnings
from kdbench.scheduler import execute
from tests.conftest import TINY_STUDENT, TINY_TEACHER, strip_timing

BUDGET = dict(epochs=1, teacher_epochs=1, batch_size=64, lr=0.05)
PLUGINS = ("v2_embed", "v2_context", "v2_init", "v2_groups", "v2_heads", "v2_views", "v2_mutate")


def ce(step: Step) -> Tensor:
    return F.cross_entropy(step.student_logits.float(), step.labels)


def define_plugins() -> None:
    """Register one small plugin per point of the contract (inside the test's method sandbox)."""

    @register_method("v2_embed")
    class Embed(Distiller):
        """Embedding plugin (test): CE + MSE between a projected student embedding and the teacher's."""

        def __init__(self, params, student, teacher, data, context=None):
            super().__init__(params, student, teacher, data, context)
            self.embeddings = True
            self.proj = nn.Linear(student.embedding_dim, teacher.embedding_dim)
            self.dims = (student.embedding_dim, teacher.embedding_dim)

        def losses(self, step: Step) -> dict[str, Tensor]:
            assert (step.student_embedding.shape[1], step.teacher_embedding.shape[1]) == self.dims
            assert step.student_embedding.requires_grad and not step.teacher_embedding.requires_grad
            hint = F.mse_loss(self.proj(step.student_embedding), step.teacher_embedding.float())
            return {"loss_ce": ce(step), "loss_embed": 0.1 * hint}

    @register_method("v2_context")
    class Context(Distiller):
        """Context plugin (test): a memory bank sized at construction and a ramp written in 1-based epochs."""

        def __init__(self, params, student, teacher, data, context: RunContext | None = None):
            super().__init__(params, student, teacher, data, context)
            assert context is not None and context.epochs == BUDGET["epochs"] and context.num_train > 0
            self.register_buffer("bank", torch.zeros(context.num_train, 4))
            self.register_buffer("labels", context.train_labels.clone())

        def losses(self, step: Step) -> dict[str, Tensor]:
            assert torch.equal(self.labels[step.indices.cpu()].to(step.labels.device), step.labels)
            self.bank[step.indices] = step.student_logits.detach()[:, :4].float()
            return {"loss_ce": ce(step) * step.ramp(2)}

    @register_method("v2_init")
    class Init(Distiller):
        """Initialisation-phase plugin (test): one epoch training only its adapter before the main training."""

        def __init__(self, params, student, teacher, data, context=None):
            super().__init__(params, student, teacher, data, context)
            self.init_epochs = 1
            self.student_stages, self.teacher_stages = (student.num_stages - 1,), (teacher.num_stages - 1,)
            self.adapter = nn.Linear(student.stages[-1].channels, teacher.stages[-1].channels)

        def _hint(self, step: Step) -> Tensor:
            (s,), (t,) = self.student_stages, self.teacher_stages
            pooled = step.student_features[s].float().mean((2, 3))
            return F.mse_loss(self.adapter(pooled), step.teacher_features[t].float().mean((2, 3)))

        def init_parameters(self, student: nn.Module) -> list[nn.Parameter]:
            return list(self.adapter.parameters())

        def init_losses(self, step: Step) -> dict[str, Tensor]:
            assert step.phase == "init" and step.epochs == 1
            return {"loss_hint": self._hint(step)}

        def losses(self, step: Step) -> dict[str, Tensor]:
            assert step.phase == "train"
            return {"loss_ce": ce(step), "loss_hint": self._hint(step)}

    @register_method("v2_groups")
    class Groups(Distiller):
        """Parameter-group plugin (test): a scalar that must not move (lr_scale 0) and one that trains."""

        def __init__(self, params, student, teacher, data, context=None):
            super().__init__(params, student, teacher, data, context)
            self.frozen_scale = nn.Parameter(torch.tensor(2.0))
            self.scale = nn.Parameter(torch.tensor(1.0))

        def param_groups(self) -> list[dict]:
            return [{"params": [self.frozen_scale], "lr_scale": 0.0, "weight_decay": 0.0},
                    {"params": [self.scale], "lr_scale": 10.0, "weight_decay": 0.0}]

        def losses(self, step: Step) -> dict[str, Tensor]:
            soft = F.kl_div(F.log_softmax(step.student_logits.float() / (self.frozen_scale * self.scale), 1),
                            F.softmax(step.teacher_logits.float(), 1), reduction="batchmean")
            return {"loss_ce": ce(step), "loss_kd": soft}

    @register_method("v2_heads")
    class Heads(Distiller):
        """Extra-head plugin (test): the student returns two heads while training, their mean in eval mode."""

        needs_teacher = False

        def prepare_student(self, student: nn.Module) -> None:
            head = student.forward_head

            def two_heads(x, pre_logits: bool = False):
                out = head(x, pre_logits=pre_logits)
                if pre_logits or not student.training:
                    return out
                return out, 0.5 * out

            student.forward_head = two_heads

        def losses(self, step: Step) -> dict[str, Tensor]:
            assert len(step.student_heads) == 2 and step.student_heads[0] is step.student_logits
            return {"loss_ce": ce(step), "loss_second": F.cross_entropy(step.student_heads[1].float(), step.labels)}

    @register_method("v2_views")
    class Views(Distiller):
        """Extra-view plugin (test): CE and a soft-target term on a strong view, with the teacher run on it."""

        def __init__(self, params, student, teacher, data, context=None):
            super().__init__(params, student, teacher, data, context)
            self.extra_views = ("strong",)

        def losses(self, step: Step) -> dict[str, Tensor]:
            view = step.views["strong"]
            assert view.images.shape == step.images.shape and not torch.equal(view.images, step.images)
            soft = F.kl_div(F.log_softmax(view.student_logits.float(), 1), F.softmax(view.teacher_logits.float(), 1),
                            reduction="batchmean")
            return {"loss_ce": ce(step), "loss_view": soft}

    @register_method("v2_mutate")
    class Mutate(Distiller):
        """A rude plugin (test): it changes its teacher tensors in place."""

        def __init__(self, params, student, teacher, data, context=None):
            super().__init__(params, student, teacher, data, context)
            self.teacher_stages = (0,)
            self.embeddings = True

        def losses(self, step: Step) -> dict[str, Tensor]:
            step.teacher_logits.mul_(0.0)
            step.teacher_features[0].add_(1.0)
            step.teacher_embedding.zero_()
            return {"loss_ce": ce(step)}


def options(results: Path, **kw) -> ExecOptions:
    return ExecOptions(results=results, device="cpu", progress=False, measure=False, log=lambda line: None, **kw)


@pytest.mark.slow
def test_every_point_of_the_contract_trains_identically_in_a_cohort_and_alone(tmp_path, method_sandbox,
                                                                              one_torch_thread):
    define_plugins()
    methods = {name: {} for name in (*PLUGINS, "kd", "fitnets")}
    specs = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods=methods, seeds=[0], **BUDGET)
    cohort = execute(specs, options(tmp_path / "a", teacher_cache=tmp_path / "teachers"))
    solo = execute(specs, options(tmp_path / "b", teacher_cache=tmp_path / "teachers", cohort=False))
    by_method = {r["method"]: r for r in cohort}
    assert {r["status"] for r in cohort} == {"ok"}, [(r["method"], r["error"]) for r in cohort]
    assert max(r["cohort_size"] for r in cohort) > 1 and {r["cohort_size"] for r in solo} == {1}
    assert [strip_timing(r) for r in cohort] == [strip_timing(r) for r in solo]
    # the context plugin's bank is a buffer, reported apart from trainable extras
    num_train = by_method["v2_context"]["extra_buffers_m"] * 1e6 / 5  # a 4-wide bank and one label per sample
    assert num_train == pytest.approx(round(num_train)) and num_train > 100
    assert by_method["v2_context"]["extra_params_m"] == 0
    # the initialisation phase is logged before the full main budget
    phases = [h["phase"] for h in by_method["v2_init"]["history"]]
    assert phases == ["init"] + ["train"] * BUDGET["epochs"]
    assert by_method["v2_init"]["history"][0]["loss_hint"] > 0


@pytest.mark.slow
def test_param_groups_set_learning_rate_multipliers_and_weight_decay(tmp_path, method_sandbox, one_torch_thread):
    define_plugins()
    specs = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods={"v2_groups": {}}, seeds=[0],
                   **BUDGET)
    members = []
    real = training.Member.train_step

    def spy(self, *args, **kwargs):
        members.append(self)
        return real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training.Member, "train_step", spy)
        (record,) = execute(specs, options(tmp_path))
    assert record["status"] == "ok", record["error"]
    method = members[-1].method
    assert method.frozen_scale.item() == 2.0  # lr_scale 0: never moved
    assert method.scale.item() != 1.0
    groups = members[-1].optimizer.param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, 0.0, 10.0]
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == BUDGET.get("weight_decay", 5e-4)


@pytest.mark.slow
def test_adamw_is_a_run_setting_and_part_of_the_run_id(tmp_path, one_torch_thread):
    common = dict(dataset="digits", pairs=[(None, TINY_STUDENT)], methods={"ce": {}}, seeds=[0], **BUDGET)
    (sgd,) = expand(**common)
    (adamw,) = expand(**common, optimizer="adamw", betas=(0.9, 0.95), weight_decay=0.05)
    assert sgd.run_id != adamw.run_id
    (record,) = execute([adamw], options(tmp_path))
    assert record["status"] == "ok" and record["optimizer"] == "adamw" and record["betas"] == [0.9, 0.95]


def test_bad_optimizer_settings_are_one_line_errors(tmp_path, capsys):
    base = ["run", "--dataset", "digits", "--student", TINY_STUDENT, "--method", "ce", "--epochs", "1",
            "--no-progress", "--results", str(tmp_path)]
    assert main([*base, "--optimizer", "lamb"]) == 2
    assert main([*base, "--optimizer", "adamw", "--betas", "0.9", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "betas" in err[-1]
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_versions_are_in_the_run_id_and_the_record(tmp_path, monkeypatch, one_torch_thread):
    specs = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods={"kd": {}, "ce": {}},
                   seeds=[0], **BUDGET)
    assert {s.method_version for s in specs} == {1} and {s.protocol_version for s in specs} == {PROTOCOL_VERSION}
    records = execute(specs, options(tmp_path))
    assert all(r["method_version"] == 1 and r["protocol_version"] == PROTOCOL_VERSION for r in records)
    monkeypatch.setattr(LogitKD, "version", 2)
    again = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], methods={"kd": {}, "ce": {}},
                   seeds=[0], **BUDGET)
    plan = make_plan(again, options(tmp_path))
    assert [s.method for s in plan.pending] == ["kd"] and [s.method for s in plan.done] == ["ce"]


@pytest.mark.slow
def test_run_and_sweep_retrain_only_the_bumped_method(tmp_path, monkeypatch, capsys, one_torch_thread):
    store = tmp_path / "store"
    run = ["run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", TINY_STUDENT, "--method", "ce",
           "--method", "kd", "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu",
           "--no-progress", "--results", str(store)]
    assert main(run) == 0
    monkeypatch.setattr(LogitKD, "version", 2)
    capsys.readouterr()
    assert main(run) == 0
    assert "1 to train, 1 already done" in capsys.readouterr().err
    spec = tmp_path / "sweep.yaml"
    spec.write_text(json.dumps({
        "dataset": "digits", "epochs": 1, "teacher_epochs": 1, "batch_size": 64, "seeds": [0],
        "pairs": [{"teacher": TINY_TEACHER, "student": TINY_STUDENT}], "methods": ["ce", "kd"]}))
    monkeypatch.setattr(LogitKD, "version", 3)
    assert main(["sweep", str(spec), "--dry-run", "--results", str(store), "--device", "cpu"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "1 to train" in text and "1 already done" in text


def test_report_leaves_out_older_versions_of_a_method_and_says_so():
    frame = load_frame([{"method": "kd", "method_version": 1}, {"method": "kd", "method_version": 2},
                        {"method": "ce", "method_version": 1}, {"method": "ce", "method_version": 1}])
    lines = version_warnings(frame)
    assert len(lines) == 1 and "left out 1 run of 'kd' from method version 1" in lines[0]
    assert "newest is 2" in lines[0] and "never pooled" in lines[0]
    assert version_warnings(frame[frame.method_version == 1]) == []


def load_frame(rows):
    import pandas as pd

    return pd.DataFrame([{**r, "protocol_version": PROTOCOL_VERSION} for r in rows])


@pytest.mark.slow
def test_test_top1_at_best_val_is_recorded_with_its_epoch(tmp_path, one_torch_thread):
    specs = expand(dataset="digits", pairs=[(None, TINY_STUDENT)], methods={"ce": {}}, seeds=[0],
                   **{**BUDGET, "epochs": 3})
    (record,) = execute(specs, options(tmp_path))
    vals = [h["val_top1"] for h in record["history"]]
    assert record["best_val_epoch"] == vals.index(max(vals)) + 1 and record["best_val_top1"] == max(vals)
    assert 0 <= record["test_top1_at_best_val"] <= 100
    if record["best_val_epoch"] == 3:
        assert record["test_top1_at_best_val"] == record["top1"]
    no_val = expand(dataset="digits", pairs=[(None, TINY_STUDENT)], methods={"ce": {}}, seeds=[0],
                    **{**BUDGET, "val_fraction": 0.0})
    (record,) = execute(no_val, options(tmp_path))
    assert record["test_top1_at_best_val"] is None and record["best_val_epoch"] is None


@pytest.mark.parametrize(("epoch", "expected"), [(0, 0.05), (9, 0.5), (19, 1.0), (30, 1.0)])
def test_ramp_counts_epochs_from_one_like_the_papers(epoch, expected):
    step = Step(images=torch.zeros(1), labels=torch.zeros(1), indices=torch.zeros(1), student_logits=torch.zeros(1),
                epoch=epoch, epochs=240)
    assert step.ramp(20) == pytest.approx(expected)
    assert step.ramp(0) == 1.0


def test_old_plugins_without_a_context_argument_still_get_one(method_sandbox):
    from kdbench.distiller import construct_method
    from tests.golden.cases import CONTEXT, DATA, STUDENT, TEACHER

    @register_method("v2_old_style")
    class OldStyle(Distiller):
        """An old plugin (test): a four-argument constructor."""

        @dataclass(frozen=True)
        class Params:
            """None."""

        def __init__(self, params, student, teacher, data):
            super().__init__(params, student, teacher, data)

        def losses(self, step):
            return {"loss_ce": ce(step)}

    method = construct_method(OldStyle, OldStyle.Params(), STUDENT, TEACHER, DATA, CONTEXT)
    assert method.context is CONTEXT and dataclasses.is_dataclass(method.context)



def test_the_context_counts_the_steps_the_loop_takes():
    from kdbench.data import DataConfig, load_dataset
    from kdbench.training import Member

    splits = load_dataset(DataConfig(name="digits", val_fraction=0.1))
    (spec,) = expand(dataset="digits", pairs=[(None, TINY_STUDENT)], methods={"ce": {}}, seeds=[0], **BUDGET)
    member = Member(spec, splits.info, None, torch.device("cpu"), train_labels=splits.labels("train"))
    assert member.context.steps_per_epoch == splits.num_batches("train", spec.batch_size)
    assert member.context.num_train == len(splits.labels("train"))
