"""The deployed network: what a method deploys after training is what the harness evaluates, counts, saves, exports.

SimKD deploys the student's backbone, its trained projector and a frozen copy of the teacher's classifier; BYOT adds
its exits as deployed variants; DeiT turns on its distillation head for training (``training_student``) and deploys
the student itself; every other method deploys the bare student. Plugins of the older contract (``prepare_student``,
``eval_logits``) keep working.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench.cli import main
from kdbench.config import RunSpec
from kdbench.data import DataConfig, describe_dataset, load_dataset
from kdbench.distiller import DeployedNetwork, Distiller, get_method, methods_by_family
from kdbench.errors import ModelError
from kdbench.features import describe_model, forward_with_features
from kdbench.measure import count_flops
from kdbench.methods.simkd import SimKDHead
from kdbench.models import count_params_m, create_model
from kdbench.store import Store
from kdbench.training import Member
from kdbench.training.evaluation import predict, predict_deployed
from tests.conftest import TINY_STUDENT, TINY_TEACHER
from tests.reference.part2 import check, linear, method, simkd_projected, step, x

DIGITS_32 = describe_dataset(DataConfig(name="digits", image_size=32))


def teacher_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model(TINY_TEACHER, num_classes=10, in_chans=1, image_size=32).eval()


def member(method_name: str, student: str = TINY_STUDENT, **params) -> Member:
    """A member of a run on digits at 32 px with a fixed ``test_resnet`` teacher."""
    teacher = teacher_model()
    spec = RunSpec(dataset="digits", student=student, teacher=TINY_TEACHER, method=method_name, image_size=32,
                   epochs=1, method_params=params)
    return Member(spec, DIGITS_32, describe_model(teacher, TINY_TEACHER, 1, 32), torch.device("cpu"),
                  teacher_model=teacher)


# ---------------------------------------------------------------------------------------------------------------
# The contract


def test_only_simkd_deploys_a_network_of_its_own_and_only_byot_has_variants():
    names = methods_by_family(builtin_only=True)
    assert [n for n in names if get_method(n).deployed_student is not Distiller.deployed_student] == ["simkd"]
    assert [n for n in names if get_method(n).deployed_variants is not Distiller.deployed_variants] == ["byot"]
    assert not [n for n in names if get_method(n).uses_eval_logits()]  # no built-in method on the older hooks
    assert not [n for n in names if get_method(n).prepare_student is not Distiller.prepare_student]


def test_a_method_that_declares_nothing_deploys_its_student_itself():
    kd = member("kd")
    assert kd.deployed() is kd.student


# ---------------------------------------------------------------------------------------------------------------
# SimKD


def test_simkd_gives_the_authors_values_through_its_class():
    """``simkd_f2_mse`` from ``losses(step)``, ``simkd_f2_logits`` from the deployed head (the authors' weights)."""
    simkd = method("simkd")
    for conv, name in zip(simkd.projector[0::3], ("simkd_w1", "simkd_w2", "simkd_w3"), strict=True):
        conv.weight.data.copy_(x(name))
    terms = simkd.losses(step(simkd, student_final_map=x("final_feat_s"), teacher_final_map=x("final_feat_t")))
    assert list(terms) == ["loss_simkd"]
    check("simkd_f2_mse", terms["loss_simkd"])
    head = SimKDHead(simkd.projector, linear(x("fc_t_weight"), x("fc_t_bias")), simkd.teacher_size)
    check("simkd_f2_logits", head.train()(x("final_feat_s")))  # the key's BatchNorm: batch statistics
    check("simkd_f2_logits", head(x("final_feat_s")))
    assert torch.equal(head(x("final_feat_s")), F.linear(simkd_projected().mean(dim=(2, 3)), x("fc_t_weight"),
                                                         x("fc_t_bias")))


def test_simkd_pools_the_larger_map_to_the_smaller_as_the_authors_do():
    simkd = method("simkd")
    big, small = torch.randn(8, 64, 8, 8), torch.randn(8, 128, 4, 4)
    loss = simkd.losses(SimpleNamespace(student_final_map=big, teacher_final_map=small))["loss_simkd"]
    assert loss == F.mse_loss(simkd.projector(F.adaptive_avg_pool2d(big, 4)), small)
    loss = simkd.losses(SimpleNamespace(student_final_map=small[:, :64], teacher_final_map=torch.randn(8, 128, 8, 8)))
    assert torch.isfinite(loss["loss_simkd"])


def projector_counts(student_channels: int, teacher_channels: int, area: int, factor: int = 2) -> tuple[int, int]:
    """Parameters and multiply-adds of SimKD's projector, counted by hand (convolutions without bias, 3 BNs)."""
    hidden = teacher_channels // factor
    weights = student_channels * hidden + 9 * hidden * hidden + hidden * teacher_channels
    return weights + 2 * (hidden + hidden + teacher_channels), weights * area


@pytest.mark.parametrize(("student", "area"), [(TINY_STUDENT, 1), ("test_vit", 1)])
def test_simkd_deploys_backbone_projector_and_teacher_classifier_counted_by_hand(student, area):
    run = member("simkd", student)
    network = run.deployed()
    assert isinstance(network, DeployedNetwork) and network is not run.student
    fresh = create_model(student, num_classes=10, in_chans=1, image_size=32)
    own_classifier = sum(p.numel() for p in fresh.get_classifier().parameters())
    teacher_channels = run.teacher_classifier.in_features  # test_resnet: 96 channels, a 1x1 final map at 32 px
    projector_params, projector_macs = projector_counts(fresh.num_features, teacher_channels, area)
    params = count_params_m(fresh) * 1e6 - own_classifier + projector_params + teacher_channels * 10 + 10
    assert count_params_m(network) * 1e6 == params
    backbone = create_model(student, num_classes=0, in_chans=1, image_size=32)
    macs = count_flops(backbone, (1, 32, 32))[1] * 1e9 + projector_macs + teacher_channels * 10
    assert count_flops(network, (1, 32, 32))[1] * 1e9 == pytest.approx(macs, abs=0.5)


def test_simkd_predicts_through_a_frozen_copy_of_the_teachers_classifier():
    run = member("simkd")
    network = run.deployed()
    images = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        final = run.student.eval().forward_features(images)
        expected = F.linear(run.method.eval().projector(final).mean(dim=(2, 3)), run.teacher_classifier.weight,
                            run.teacher_classifier.bias)
        assert torch.equal(network(images), expected)
        assert not torch.equal(network(images), run.student(images))  # not the student's own classifier
        before = network(images)
        for param in [*run.method.parameters(), *run.student.parameters()]:
            param.add_(1.0)  # later training does not reach a deployed copy
        assert torch.equal(network(images), before)
    assert not any(p.requires_grad for p in network.parameters())
    assert all(torch.equal(a, b) for a, b in zip(run.teacher_classifier.parameters(),
                                                 run.teacher_model.get_classifier().parameters(), strict=True))


def test_simkd_with_a_student_whose_classifier_is_not_one_linear_fails_in_one_line():
    with pytest.raises(ModelError) as err:
        member("simkd", "mobilenetv3_small_050")
    assert "\n" not in str(err.value) and "'simkd'" in str(err.value) and "student" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# BYOT's variants and the older hooks


def test_byot_variants_give_exactly_what_its_older_eval_logits_gave():
    run = member("byot")
    run.method.train()
    for _ in range(2):  # running statistics unlike batch statistics
        run.method.exit_outputs({s: 2 + torch.randn(8, c.channels, c.height, c.width)
                                 for s, c in enumerate(run.student_info.stages)})
    splits = load_dataset(DataConfig(name="digits", image_size=32))
    pred = predict_deployed(run, splits, "test", 256)
    run.student.eval()
    run.method.eval()
    logits, named = [], {}
    with torch.inference_mode():  # the older evaluation: one pass, every exit from its features
        for batch in splits.eval_batches("test", 256):
            out, features = forward_with_features(run.student, batch.images, run.method.student_stages)
            shallow = [z for _, z in run.method.exit_outputs(features)]
            parts = {**{f"stage{s}": z for s, z in zip(run.method.exit_stages, shallow, strict=True)}, "final": out,
                     "ensemble": torch.stack([*shallow, out]).mean(0)}
            logits.append(out)
            for name, value in parts.items():
                named.setdefault(name, []).append(value)
    assert torch.equal(pred.logits, torch.cat(logits))
    assert list(pred.extra) == list(named)
    assert all(torch.equal(pred.extra[k], torch.cat(v)) for k, v in named.items())


OLD_STYLE_PLUGIN = '''
from dataclasses import dataclass

import torch.nn.functional as F

from kdbench.distiller import Distiller, register_method


@register_method("old_hooks")
class OldHooks(Distiller):
    """A plugin written against the older contract: prepare_student and eval_logits."""

    @dataclass(frozen=True)
    class Params:
        pass

    def prepare_student(self, student):
        student.prepared_by_plugin = True
        self.prepared = True

    def losses(self, step):
        assert self.prepared, "prepare_student was not called"
        return {"loss_ce": F.cross_entropy(step.student_logits, step.labels)}

    def eval_logits(self, student_logits, student_features):
        return {"doubled": 2 * student_logits, "negated": -student_logits}
'''


@pytest.mark.slow
def test_a_plugin_of_the_older_contract_still_prepares_its_student_and_records_its_extra_predictions(
        results, tmp_path, one_torch_thread):
    plugin = tmp_path / "old_hooks.py"
    plugin.write_text(OLD_STYLE_PLUGIN)
    args = [
        "run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", TINY_STUDENT, "--method", "old_hooks",
        "--plugin", str(plugin), "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu",
        "--no-progress", "--results", str(results), "--teacher-cache", str(tmp_path / "teachers"),
        "--save-students", "none"]
    assert main(args) == 0
    (rec,) = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert rec["status"] == "ok", rec["error"]
    assert rec["exit_top1"]["doubled"] == rec["top1"]
    assert set(rec["exit_top1"]) == {"doubled", "negated"}


# ---------------------------------------------------------------------------------------------------------------
# End to end: kdbench run, --save-students, kdbench export, timm and torch alone


TIMM_ALONE = textwrap.dedent('''
    import sys
    sys.modules["kdbench"] = None  # importing kdbench (or anything of it) fails in this process

    import torch
    import timm

    torch.set_num_threads(1)
    folder, data = sys.argv[1], sys.argv[2]
    batches = torch.load(data, weights_only=True)
    backbone = timm.create_model("local-dir:" + folder, pretrained=True).eval()
    head = torch.export.load(folder + "/head.pt2").module()
    with torch.no_grad():
        logits = torch.cat([head(backbone.forward_features(images)) for images in batches["images"]])
    print(float((logits.argmax(1) == batches["labels"]).float().mean() * 100))
''')


def test_images(record: dict, path: Path) -> Path:
    """The record's test split, batched and normalised as its evaluation, saved for a process without kdbench."""
    splits = load_dataset(DataConfig(name=record["dataset"], val_fraction=record["val_fraction"],
                                     image_size=record["image_size"], device="cpu"))
    batches = list(splits.eval_batches("test", max(256, record["batch_size"])))
    torch.save({"images": [b.images for b in batches], "labels": torch.cat([b.labels for b in batches])}, path)
    return path


test_images.__test__ = False  # a helper, not a test


@pytest.mark.slow
@pytest.mark.parametrize(("student", "extra"), [(TINY_STUDENT, ()), ("test_vit", ("--image-size", "32"))])
def test_simkd_runs_and_its_export_reproduces_the_record_with_timm_and_torch_alone(
        results, tmp_path, one_torch_thread, student, extra):
    args = ["run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", student, "--method", "simkd",
            "--epochs", "2", "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
            "--results", str(results), "--teacher-cache", str(tmp_path / "teachers"), "--save-students", "both",
            *extra]
    assert main(args) == 0
    (path,) = (results / "runs").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "ok" and rec["best_val_epoch"] is not None and "loss_simkd" in rec["history"][0]
    assert all(h["train_top1"] is None for h in rec["history"])  # the student's own classifier is not deployed
    assert all(h["val_top1"] is not None for h in rec["history"])  # the deployed network is
    size = rec["image_size"]
    fresh = create_model(student, num_classes=10, in_chans=1, image_size=size)
    teacher_channels = create_model(TINY_TEACHER, num_classes=10, in_chans=1, image_size=size).num_features
    final = fresh.eval().forward_features(torch.zeros(1, 1, size, size))
    area = 1 if final.ndim == 3 else final.shape[2] * final.shape[3]  # test_resnet's 1x1 map: a ViT pools to it
    projector_params, projector_macs = projector_counts(fresh.num_features, teacher_channels, area)
    own_classifier = sum(p.numel() for p in fresh.get_classifier().parameters())
    params = count_params_m(fresh) * 1e6 - own_classifier + projector_params + teacher_channels * 10 + 10
    assert rec["params_m"] * 1e6 == pytest.approx(params, abs=1e-3)
    backbone_macs = count_flops(create_model(student, num_classes=0, in_chans=1, image_size=size), (1, size, size))[1]
    assert rec["gmacs"] * 1e9 == pytest.approx(backbone_macs * 1e9 + projector_macs + teacher_channels * 10, abs=0.5)
    assert rec["extra_params_m"] * 1e6 == projector_params  # the projector, trained by the method
    data = test_images(rec, tmp_path / "test.pt")
    for which, figure in (("last", "top1"), ("best", "test_top1_at_best_val")):
        out = tmp_path / which
        assert main(["export", rec["run_id"], "--which", which, "--results", str(results), "--out", str(out)]) == 0
        assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "head.pt2", "model.safetensors"]
        assert json.loads((out / "config.json").read_text())["num_classes"] == 0  # the backbone; the head predicts
        assert "torch.export.load" in (out / "README.md").read_text()
        assert (out / "head.pt2").read_bytes() == Store(results).student_head_path(rec["run_id"], which).read_bytes()
        done = subprocess.run([sys.executable, "-c", TIMM_ALONE, str(out), str(data)], capture_output=True,
                              text=True, cwd=tmp_path, check=False)
        assert done.returncode == 0, done.stderr
        assert float(done.stdout) == rec[figure], which  # exactly: same weights, same images, same batches
    assert math.isfinite(rec["agreement"])


@pytest.mark.slow
def test_a_head_file_changed_since_its_run_is_refused_by_export(results, tmp_path, one_torch_thread, capsys):
    args = ["run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", TINY_STUDENT, "--method", "simkd",
            "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
            "--results", str(results), "--teacher-cache", str(tmp_path / "teachers")]
    assert main(args) == 0
    (rec,) = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    head = Store(results).student_head_path(rec["run_id"], "last")
    head.write_bytes(head.read_bytes() + b"x")
    capsys.readouterr()
    assert main(["export", rec["run_id"], "--results", str(results), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "changed since its run saved it" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_the_validation_top1_is_the_deployed_networks(monkeypatch):
    """Each epoch's validation top-1 (and with it the best epoch) goes through the deployed network."""
    run = member("simkd")
    seen = []
    monkeypatch.setattr("kdbench.training.member.predict",
                        lambda model, *a, **k: seen.append(model) or predict(model, *a, **k))
    splits = load_dataset(DataConfig(name="digits", image_size=32, val_fraction=0.1))
    run.stats.steps = 1
    run.end_epoch(0, splits, 256, 0.0)
    assert len(seen) == 1 and isinstance(seen[0], DeployedNetwork)
    assert set(run.best_state) == set(seen[0].state_dict())


@pytest.mark.slow
def test_simkd_in_a_cohort_and_resumed_from_a_checkpoint_writes_its_solo_record(tmp_path, monkeypatch,
                                                                              one_torch_thread):
    """The deployed network (and its saved files' SHA-256) is the same whether the run trains alone, in a cohort
    with kd and byot, or is interrupted mid-way and resumed."""
    from kdbench.options import ExecOptions
    from kdbench.plan import expand
    from kdbench.scheduler import execute
    from tests.conftest import strip_timing
    from tests.helpers import Interrupt, interrupt_at

    specs = expand(dataset="digits", pairs=[(TINY_TEACHER, TINY_STUDENT)], seeds=[0], epochs=2, teacher_epochs=1,
                   batch_size=64, lr=0.05, methods={"simkd": {}, "kd": {}, "byot": {}})

    def run(folder: str, cohort: bool = True) -> dict[str, dict]:
        records = execute(specs, ExecOptions(results=tmp_path / folder, device="cpu", progress=False, measure=False,
                                             log=lambda _: None, teacher_cache=tmp_path / "teachers", cohort=cohort,
                                             save_students="both"))
        assert all(r["status"] == "ok" for r in records)
        return {r["method"]: {k: v for k, v in strip_timing(r).items()
                              if k not in ("cohort_size", "cohort_id", "hostname")} for r in records}

    alone = run("solo", cohort=False)
    assert alone["simkd"]["student_best_sha256"] and alone["simkd"]["best_val_epoch"] is not None
    assert run("cohort") == alone
    interrupt_at(monkeypatch, Member, "train_step", 3 * 21 + 10)  # the cohort's second epoch, mid-way
    with pytest.raises(Interrupt):
        run("resumed")
    assert len(list(Store(tmp_path / "resumed").checkpoints_dir.glob("*.pt"))) == 3  # epoch 1, best state included
    monkeypatch.undo()
    assert run("resumed") == alone


def test_a_deployed_network_of_its_own_is_measured_under_its_own_efficiency_key():
    from kdbench.measure import efficiency_key, network_signature

    run = member("simkd")
    network = run.deployed()
    plain = efficiency_key(TINY_STUDENT, (1, 32, 32), 10)
    assert "network" not in plain  # a bare student keeps the key it always had (cached figures stay valid)
    own = efficiency_key(TINY_STUDENT, (1, 32, 32), 10, network=network_signature(network))
    assert own != plain and own["network"] == network_signature(run.deployed())  # the same structure, the same key
    wider = member("simkd", factor=1).deployed()
    assert network_signature(wider) != network_signature(network)
