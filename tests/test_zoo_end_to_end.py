"""A CIFAR zoo pair trains end to end with kd and fitnets on synthetic 32x32 data, under the CIFAR protocol's
schedule (multistep, no validation split, last epoch reported on test)."""

from __future__ import annotations

import pytest

from kdbench.options import ExecOptions
from kdbench.plan import expand
from kdbench.scheduler import execute


@pytest.mark.slow
def test_zoo_pair_runs_kd_and_fitnets_on_synthetic_32x32(tmp_path):
    specs = expand(dataset="synthetic", pairs=[("cifar_resnet14", "cifar_resnet8")],
                   methods={"ce": {}, "kd": {}, "fitnets": {}}, seeds=[0], epochs=2, teacher_epochs=1, batch_size=32,
                   schedule="multistep", milestones=(1,), val_fraction=0.0,
                   data_options={"size": 32, "num_samples": 160, "num_classes": 100})
    records = execute(specs, ExecOptions(results=tmp_path, device="cpu", progress=False, measure=False,
                                         log=lambda _: None))
    assert [r["status"] for r in records] == ["ok"] * 3, [r["error"] for r in records]
    by_method = {r["method"]: r for r in records}
    for record in records:
        assert record["image_size"] == 32 and record["num_classes"] == 100
        assert record["val_fraction"] == 0 and record["val_top1"] is None
        assert record["eval_split"] == "test" and record["selection"] == "last_epoch"
        assert [h["lr"] for h in record["history"]] == pytest.approx([0.05, 0.005])  # multistep: x0.1 at epoch 1
    assert by_method["kd"]["teacher"] == by_method["fitnets"]["teacher"] == "cifar_resnet14"
    assert by_method["fitnets"]["extra_params_m"] > 0 and by_method["kd"]["extra_params_m"] == 0
    assert by_method["fitnets"]["cohort_size"] == 3  # one teacher pass for kd and fitnets, ce shares the batches
