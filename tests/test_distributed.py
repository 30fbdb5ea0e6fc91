"""Data-parallel runs under torchrun on CPU (gloo, 2 processes): one record, one teacher cache, the one-process
result, and a killed rank that fails the run instead of hanging. Plus the helpers of :mod:`kdbench.distributed`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kdbench import distributed
from kdbench.errors import ConfigError
from tests.conftest import TINY_STUDENT, TINY_TEACHER, as_rank
from tests.helpers import torchrun

RUN = ["run", "--dataset", "digits", "--teacher", TINY_TEACHER, "--student", TINY_STUDENT, "--epochs", "3",
       "--teacher-epochs", "2", "--batch-size", "64", "--device", "cpu", "--no-progress"]


def test_world_from_env_reads_torchrun_variables(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.world_from_env() == distributed.World(1, 0, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.world_from_env() == distributed.World(4, 3, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="inconsistent"):
        distributed.world_from_env()


def test_more_processes_than_gpus_is_one_line(monkeypatch):
    as_rank(monkeypatch, 0, size=4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="torchrun started 4 processes on a node with 2 GPUs: .*--nproc-per-node 2"):
        distributed.setup(torch.device("cuda"))
    assert distributed.world() == distributed.World()  # nothing joined


@pytest.mark.parametrize("command", [["list", "methods"], ["report"], ["bench", "test_vit"]])
def test_commands_that_train_nothing_refuse_torchrun_in_one_line(monkeypatch, capsys, tmp_path, command):
    from kdbench import cli

    for rank, printed in ((1, False), (0, True)):
        as_rank(monkeypatch, rank)
        monkeypatch.chdir(tmp_path)
        assert cli.main(command) == 2
        out, err = capsys.readouterr()
        assert out == ""
        if printed:
            assert len(err.strip().splitlines()) == 1 and "does not run under torchrun" in err
        else:
            assert err == ""
    assert list(tmp_path.iterdir()) == []


def test_helpers_are_no_ops_in_a_world_of_one():
    x = torch.arange(6)
    with distributed.collective():
        assert distributed.shard(x)[0] is x
        assert distributed.mine(5)
        assert distributed.gather_batches([(1, "b"), (0, "a")]) == ["a", "b"]
        assert distributed.broadcast({"a": 1}) == {"a": 1}


def test_a_last_batch_too_small_to_share_is_dropped_under_torchrun(monkeypatch):
    from kdbench.data.base import train_batch_count

    assert train_batch_count(10, 4) == 3  # one process: a last batch of 2 trains
    monkeypatch.setattr(distributed, "_WORLD", distributed.World(4, 0, 0))
    assert train_batch_count(10, 4) == 3  # outside a collective block, as in one process
    with distributed.collective():
        assert train_batch_count(10, 4) == 2  # 2 images cannot give 4 processes a share each
        assert train_batch_count(12, 8) == 2
        assert distributed.share_weight(3, 7) == pytest.approx(3 * 4 / 7)


def test_a_batch_smaller_than_the_process_count_is_one_line(monkeypatch, capsys):
    from kdbench import cli

    as_rank(monkeypatch, 0, size=4)
    assert cli.main([*RUN, "--batch-size", "2", "--method", "ce"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "--batch-size 2 is smaller than the 4 processes" in err


KILLER = textwrap.dedent('''
    import os, signal
    from dataclasses import dataclass
    import torch.nn.functional as F
    from kdbench.distiller import Distiller, register_method

    @register_method("dies_on_rank1")
    class DiesOnRank1(Distiller):
        """Cross-entropy, but rank 1's process is killed at its fourth step (test)."""
        needs_teacher = False

        @dataclass(frozen=True)
        class Params:
            pass

        def losses(self, step):
            if os.environ.get("RANK") == "1" and step.epoch == 1 and step.iteration == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return {"loss_ce": F.cross_entropy(step.student_logits, step.labels)}
''')


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_without_hanging(tmp_path: Path):
    plugin = tmp_path / "killer.py"
    plugin.write_text(KILLER)
    results = tmp_path / "ddp"
    done = torchrun([*RUN, "--method", "dies_on_rank1", "--plugin", str(plugin), "--results", str(results)],
                    timeout=600)
    assert done.returncode != 0
    ok = [p for p in (results / "runs").glob("*.json") if json.loads(p.read_text())["status"] == "ok"]
    assert ok == []


@pytest.mark.slow
def test_collectives_match_one_process():
    """Global-batch BatchNorm (forward, both gradients, running statistics), gather, broadcast_state, rank_seed."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "tests.ddp_checks"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "KDBENCH_DIST_TIMEOUT": "60"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ddp checks passed" in done.stdout


@pytest.mark.slow
def test_a_batchnorm_student_trains_as_in_one_process(tmp_path: Path):
    """Sharded batches, global-batch BatchNorm, averaged gradients, gathered evaluation = the one-process run.

    Batch 63: shares of 31 and 32 images, weighted so that their averaged gradients are the whole batch's.
    """
    args = [*RUN, "--epochs", "2", "--batch-size", "63", "--method", "ce", "--method", "kd"]
    done = torchrun([*args, "--results", str(tmp_path / "two")], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "kdbench", *args, "--results", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=900, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "two" / "runs").glob("*.json"))]
    assert sorted(r["method"] for r in records) == ["ce", "kd"]  # rank 0 alone wrote them, once each
    for record in records:
        assert record["status"] == "ok", record["error"]
        assert record["batch_size"] == 63 and [h["epoch"] for h in record["history"]] == [1, 2]
        assert record["top1"] > 25.0  # digits, 10 classes: far above chance
    teachers = [p for p in (tmp_path / "two" / "teachers").iterdir() if p.suffix == ".pt"]
    assert len(teachers) == 1  # trained and cached by rank 0 alone, read by rank 1
    for method in ("ce", "kd"):
        (two,) = [r for r in records if r["method"] == method]
        (one,) = [r for r in map(json.loads, map(Path.read_text, (tmp_path / "one" / "runs").glob("*.json")))
                  if r["method"] == method]
        assert two["world_size"] == 2 and one["world_size"] == 1
        assert two["top1"] == pytest.approx(one["top1"], abs=0.3)
        for a, b in zip(two["history"], one["history"], strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)


BANK_DUMP = textwrap.dedent('''
    import os
    from pathlib import Path
    from kdbench.methods.crd import CRD
    from kdbench.distiller import register_method

    @register_method("crd_dump")
    class CRDDump(CRD):
        """CRD that writes its memory banks and Z at its last step, one file per rank (test)."""

        def losses(self, step):
            terms = super().losses(step)
            if step.epoch == step.epochs - 1 and step.iteration == step.iterations - 1:
                import torch
                out = Path(os.environ["BANK_DIR"]) / f"rank{os.environ.get('RANK', '0')}.pt"
                torch.save({"s": self.memory_s.cpu(), "t": self.memory_t.cpu(), "z": self.nce_z.cpu()}, out)
            return terms
''')


@pytest.mark.slow
def test_memory_banks_are_the_same_on_every_rank(tmp_path: Path):
    """CRD's banks take every rank's rows, and Z is fixed on the whole first batch: one state on all ranks."""
    plugin = tmp_path / "crd_dump.py"
    plugin.write_text(BANK_DUMP)
    os.environ["BANK_DIR"] = str(tmp_path)
    try:
        done = torchrun([*RUN, "--epochs", "1", "--method", "crd_dump", "--plugin", str(plugin), "--set",
                         "crd_dump.nce_k=64", "--results", str(tmp_path / "ddp")], timeout=900)
    finally:
        del os.environ["BANK_DIR"]
    assert done.returncode == 0, done.stderr[-3000:]
    zero, one = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("s", "t", "z"):
        assert torch.equal(zero[key], one[key]), key
    assert bool((zero["z"] > 0).all())
    moved = (zero["s"].norm(dim=1) - 1).abs() < 1e-4  # updated rows are renormalised; untouched ones are not
    assert moved.sum() >= 1000  # every training sample of the epoch, from both ranks' shards


def test_the_folder_loader_loads_only_its_share_under_torchrun(tmp_path: Path, monkeypatch):
    from kdbench.data import DataConfig, clear_dataset_cache, load_dataset
    from tests.helpers import write_image_folder

    write_image_folder(tmp_path)
    clear_dataset_cache()
    splits = load_dataset(DataConfig("imagenet", root=str(tmp_path), image_size=8, options={"workers": 0}))
    assert splits.shards_train_batches
    whole = [b.indices for b in splits.train_batches(10, torch.Generator().manual_seed(3))]
    monkeypatch.setattr(distributed, "_WORLD", distributed.World(2, 1, 1))
    with distributed.collective():
        mine = [b for b in splits.train_batches(10, torch.Generator().manual_seed(3))]
        assert [b.indices.tolist() for b in mine] == [distributed.shard(w)[0].tolist() for w in whole]
    assert [len(b.labels) for b in mine] == [len(w) - len(w) // 2 for w in whole]
    clear_dataset_cache()


def test_the_folder_loader_loads_only_its_evaluation_batches_under_torchrun(tmp_path: Path, monkeypatch):
    from kdbench.data import DataConfig, clear_dataset_cache, load_dataset
    from tests.helpers import write_image_folder

    write_image_folder(tmp_path)
    clear_dataset_cache()
    splits = load_dataset(DataConfig("imagenet", root=str(tmp_path), image_size=8, options={"workers": 0}))
    assert splits.shards_eval_batches
    whole = [b.indices.tolist() for b in splits.eval_batches("test", 3)]
    assert len(whole) >= 3
    loaded: list[int] = []
    dataset = splits._datasets["test"]
    original = type(dataset).__getitem__
    monkeypatch.setattr(type(dataset), "__getitem__", lambda self, key: loaded.append(key[0]) or original(self, key))
    monkeypatch.setattr(distributed, "_WORLD", distributed.World(2, 1, 1))
    with distributed.collective():
        mine = [b.indices.tolist() for b in splits.eval_batches("test", 3)]
    assert mine == whole[1::2]
    assert sorted(loaded) == sorted(i for batch in whole[1::2] for i in batch)  # the others' images are not read
    clear_dataset_cache()
