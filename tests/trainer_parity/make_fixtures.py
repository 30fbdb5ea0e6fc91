"""Write the authors' training trajectories that ``tests/test_trainer_parity.py`` compares kdbench with.

Usage (from the repository root; the authors' code is not part of kdbench, check it out yourself at the pinned
commit)::

    git clone https://github.com/HobbitLong/RepDistiller && git -C RepDistiller checkout <REPDISTILLER_COMMIT>
    python -m tests.trainer_parity.make_fixtures --repdistiller RepDistiller [--only kd,crd]

The authors' code needs only torch and numpy for what is driven here. For each method it builds the student,
teacher, module list, criterion list and optimiser with the same calls, in the same order, as the authors'
``train_student.py`` (which itself cannot be imported: it parses the command line and loads CIFAR at import),
gives every tensor the initial value :mod:`tests.trainer_parity.common` defines, and then runs the authors' own
functions: ``helper.pretrain.init`` for an initialisation phase, ``helper.util.adjust_learning_rate`` and
``helper.loops.train_distill`` for each epoch, on the fixed batches of :mod:`common` (no augmentation).
Forward hooks on the criteria record every loss component at every step; a global optimiser-step hook closes each
step. The fixture holds the trajectory, the digests of the final student, method modules and momentum buffers, the
names and shapes of the authors' tensors (so that kdbench can be given the same initial values), and its source.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from tests.trainer_parity import common

FIXTURES = Path(__file__).parent / "fixtures"
REPDISTILLER = "HobbitLong/RepDistiller"
REPDISTILLER_COMMIT = "b84f547c5db6a35318d4671d7d5c4de74c822403"

#: kdbench method -> the authors' ``--distill`` and weights (``scripts/run_cifar_distill.sh``, resnet32x4 ->
#: resnet8x4 rows) and extra options; nce_k is shortened to fit the 24-image set (kdbench is given the same)
REPDISTILLER_RUNS: dict[str, dict[str, Any]] = {
    "kd": {"distill": "kd", "gamma": 0.1, "alpha": 0.9, "beta": 0.0},
    "fitnets": {"distill": "hint", "gamma": 1.0, "alpha": 0.0, "beta": 100.0},
    "at": {"distill": "attention", "gamma": 1.0, "alpha": 0.0, "beta": 1000.0},
    "sp": {"distill": "similarity", "gamma": 1.0, "alpha": 0.0, "beta": 3000.0},
    "vid": {"distill": "vid", "gamma": 1.0, "alpha": 0.0, "beta": 1.0},
    "rkd": {"distill": "rkd", "gamma": 1.0, "alpha": 0.0, "beta": 1.0},
    "crd": {"distill": "crd", "gamma": 1.0, "alpha": 0.0, "beta": 0.8, "nce_k": 16},
    "ab": {"distill": "abound", "gamma": 1.0, "alpha": 0.0, "beta": 0.0},
    "ft": {"distill": "factor", "gamma": 1.0, "alpha": 0.0, "beta": 200.0},
}
REPDISTILLER_FILES = ["train_student.py", "helper/loops.py", "helper/pretrain.py", "helper/util.py",
                      "distiller_zoo/", "crd/", "models/resnet.py", "models/util.py"]


class Recorder:
    """Collects the criteria's outputs of one step and closes the step when an optimiser steps."""

    def __init__(self) -> None:
        self.phase = "init"
        self.epoch = 0
        self.current: dict[str, float] = {}
        self.steps: list[dict[str, Any]] = []

    def hook(self, name: str) -> Any:
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            value = sum(output) if isinstance(output, list | tuple) else output
            self.current[name] = self.current.get(name, 0.0) + float(value)
        return record

    def step_done(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        self.steps.append({"phase": self.phase, "epoch": self.epoch, "lr": optimizer.param_groups[0]["lr"],
                           "raw": dict(self.current)})
        self.current = {}


def _state_keys(module: nn.Module) -> list[list[Any]]:
    return [[k, list(v.shape)] for k, v in module.state_dict().items()]


def _initialise(owner: str, module: nn.Module, keep: tuple[str, ...] = ()) -> None:
    """Give ``module`` the common initial values (entries whose name ends with one of ``keep`` stay)."""
    keys = [(k, tuple(v.shape)) for k, v in module.state_dict().items() if not k.endswith(keep)]
    module.load_state_dict(common.initial_state(owner, keys), strict=False)


def _digests(module: nn.Module) -> dict[str, list[float]]:
    return {k: common.digest(v) for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def _momentum(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, list[float]]:
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None and id(p) in names:
                out[names[id(p)]] = common.digest(buf)
    return out


def _git_commit(path: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def repdistiller_run(method: str, root: Path) -> dict[str, Any]:
    """Drive RepDistiller's training of one method from the common start; returns the fixture."""
    import crd.memory
    from crd.criterion import CRDLoss
    from distiller_zoo import ABLoss, Attention, DistillKL, FactorTransfer, HintLoss, RKDLoss, Similarity, VIDLoss
    from helper.loops import train_distill
    from helper.pretrain import init
    from helper.util import adjust_learning_rate
    from models import model_dict
    from models.util import Connector, ConvReg, Paraphraser, Translator

    if not torch.cuda.is_available():  # ContrastMemory moves its (here unused) sampler to the GPU unconditionally
        crd.memory.AliasMethod.cuda = lambda self: self
    run = REPDISTILLER_RUNS[method]
    opt = SimpleNamespace(
        print_freq=10**9, distill=run["distill"], model_s=common.STUDENT, init_epochs=common.INIT_EPOCHS,
        epochs=common.EPOCHS, learning_rate=0.05, lr_decay_epochs=list(common.LR_DECAY_EPOCHS), lr_decay_rate=0.1,
        weight_decay=5e-4, momentum=0.9, gamma=run["gamma"], alpha=run["alpha"], beta=run["beta"], kd_T=4.0,
        feat_dim=128, mode="exact", nce_k=run.get("nce_k", 16384), nce_t=0.07, nce_m=0.5, hint_layer=2,
        batch_size=common.BATCH_SIZE)
    images, labels = common.images_and_labels()
    torch.manual_seed(0)
    model_t = model_dict[common.TEACHER](num_classes=common.NUM_CLASSES)
    model_s = model_dict[common.STUDENT](num_classes=common.NUM_CLASSES)
    _initialise("teacher", model_t)
    _initialise("student", model_s)
    data = torch.randn(2, 3, 32, 32)
    model_t.eval()
    model_s.eval()
    feat_t, _ = model_t(data, is_feat=True)
    feat_s, _ = model_s(data, is_feat=True)

    recorder = Recorder()
    rng = torch.Generator().manual_seed(common.DATA_SEED)
    contrast: list[list[list[int]]] = []

    def loader(k: int) -> list[tuple[torch.Tensor, ...]]:
        out = []
        for x, y, idx in common.batches(k):
            if opt.distill != "crd":
                out.append((x, y, idx))
                continue
            # CIFAR100InstanceSample('exact'): the sample itself, then nce_k negatives of other classes
            rows = []
            for i, label in zip(idx.tolist(), y.tolist(), strict=True):
                others = torch.nonzero(labels != label).flatten()
                pick = others[torch.randint(0, len(others), (opt.nce_k,), generator=rng)]
                rows.append([i, *pick.tolist()])
            contrast.append(rows)
            out.append((x, y, idx, torch.tensor(rows)))
        return out

    modules: dict[str, nn.Module] = {}  # the method's own modules, for the initial values and the digests
    module_list = nn.ModuleList([model_s])
    trainable_list = nn.ModuleList([model_s])
    criterion_cls = nn.CrossEntropyLoss()
    criterion_div = DistillKL(opt.kd_T)
    init_phase = None
    if opt.distill == "kd":
        criterion_kd = DistillKL(opt.kd_T)
    elif opt.distill == "hint":
        criterion_kd = HintLoss()
        regress_s = ConvReg(feat_s[opt.hint_layer].shape, feat_t[opt.hint_layer].shape)
        modules["regress_s"] = regress_s
        module_list.append(regress_s)
        trainable_list.append(regress_s)
    elif opt.distill == "crd":
        opt.s_dim, opt.t_dim, opt.n_data = feat_s[-1].shape[1], feat_t[-1].shape[1], common.NUM_TRAIN
        criterion_kd = CRDLoss(opt)
        modules["crd"] = criterion_kd
        module_list.append(criterion_kd.embed_s)
        module_list.append(criterion_kd.embed_t)
        trainable_list.append(criterion_kd.embed_s)
        trainable_list.append(criterion_kd.embed_t)
    elif opt.distill == "attention":
        criterion_kd = Attention()
    elif opt.distill == "similarity":
        criterion_kd = Similarity()
    elif opt.distill == "rkd":
        criterion_kd = RKDLoss()
    elif opt.distill == "vid":
        s_n = [f.shape[1] for f in feat_s[1:-1]]
        t_n = [f.shape[1] for f in feat_t[1:-1]]
        criterion_kd = nn.ModuleList([VIDLoss(s, t, t) for s, t in zip(s_n, t_n, strict=True)])
        modules["vid"] = criterion_kd
        trainable_list.append(criterion_kd)
    elif opt.distill == "abound":
        s_shapes = [f.shape for f in feat_s[1:-1]]
        t_shapes = [f.shape for f in feat_t[1:-1]]
        connector = Connector(s_shapes, t_shapes)
        modules["connector"] = connector
        init_trainable_list = nn.ModuleList([connector, model_s.get_feat_modules()])
        criterion_kd = ABLoss(len(feat_s[1:-1]))
        init_phase = (init_trainable_list, criterion_kd)
        module_list.append(connector)
    elif opt.distill == "factor":
        s_shape, t_shape = feat_s[-2].shape, feat_t[-2].shape
        paraphraser = Paraphraser(t_shape)
        translator = Translator(s_shape, t_shape)
        modules["paraphraser"], modules["translator"] = paraphraser, translator
        init_phase = (nn.ModuleList([paraphraser]), nn.MSELoss())
        criterion_kd = FactorTransfer()
        module_list.append(translator)
        module_list.append(paraphraser)
        trainable_list.append(translator)
    else:
        raise NotImplementedError(opt.distill)
    for name, module in modules.items():
        _initialise(f"{method}:{name}", module, keep=("contrast.params",))

    names = {id(p): f"student.{k}" for k, p in model_s.named_parameters()}
    for name, module in modules.items():
        names.update({id(p): f"{name}.{k}" for k, p in module.named_parameters()})
    handle = register_optimizer_step_post_hook(recorder.step_done)
    hooks = [criterion_cls.register_forward_hook(recorder.hook("cls")),
             criterion_div.register_forward_hook(recorder.hook("div"))]
    for kd_module in (criterion_kd if isinstance(criterion_kd, nn.ModuleList) else [criterion_kd]):
        hooks.append(kd_module.register_forward_hook(recorder.hook("kd")))
    passes = 0
    if init_phase is not None:  # train_student.py runs init() here, before building the main optimiser
        init_modules, init_criterion = init_phase
        if init_criterion is not criterion_kd:
            hooks.append(init_criterion.register_forward_hook(recorder.hook("init")))
        logger = SimpleNamespace(log_value=lambda *a, **k: None)

        class OneLoader(list):
            """init() iterates the loader once per epoch: hand out the next epoch's batches each time."""

            def __iter__(self) -> Any:
                nonlocal passes
                recorder.epoch = passes
                batches = loader(passes)
                passes += 1
                return iter(batches)

        init(model_s, model_t, init_modules, init_criterion, OneLoader(), logger, opt)
    recorder.phase = "train"
    criterion_list = nn.ModuleList([criterion_cls, criterion_div, criterion_kd])
    optimizer = torch.optim.SGD(trainable_list.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    module_list.append(model_t)
    for epoch in range(1, opt.epochs + 1):
        adjust_learning_rate(epoch, opt, optimizer)
        recorder.epoch = epoch - 1
        train_distill(epoch, loader(passes), module_list, criterion_list, optimizer, opt)
        passes += 1
    handle.remove()
    for h in hooks:
        h.remove()
    weights = {"cls": opt.gamma, "div": opt.alpha, "kd": opt.beta, "init": 1.0}
    steps = []
    for s in recorder.steps:
        raw = s.pop("raw")
        if s["phase"] == "init":
            s["losses"] = {"init": raw.get("init", raw.get("kd"))}
        else:
            s["losses"] = {k: weights[k] * v for k, v in raw.items()}
        steps.append(s)
    return {
        "method": method,
        "source": {"repo": REPDISTILLER, "commit": _git_commit(root) or REPDISTILLER_COMMIT,
                   "files": REPDISTILLER_FILES, "options": {k: v for k, v in vars(opt).items()
                                                            if isinstance(v, int | float | str | list)}},
        "schedule": {"epochs": common.EPOCHS, "init_epochs": common.INIT_EPOCHS if init_phase else 0,
                     "lr_decay_epochs": list(common.LR_DECAY_EPOCHS), "lr": opt.learning_rate,
                     "weight_decay": opt.weight_decay, "momentum": opt.momentum},
        "keys": {"student": _state_keys(model_s), "teacher": _state_keys(model_t),
                 **{f"module:{k}": _state_keys(m) for k, m in modules.items()}},
        "contrast_idx": contrast,
        "steps": steps,
        "final": {"student": _digests(model_s), **{f"module:{k}": _digests(m) for k, m in modules.items()},
                  "momentum": _momentum(optimizer, names)},
    }


def main(argv: list[str] | None = None) -> None:
    """Write one fixture per method of the authors' code bases given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repdistiller", type=Path, help="a checkout of HobbitLong/RepDistiller")
    parser.add_argument("--only", default="", help="comma-separated kdbench method names")
    args = parser.parse_args(argv)
    only = {m for m in args.only.split(",") if m}
    torch.set_num_threads(1)
    # float64 throughout (tests/test_trainer_parity.py says why); the loops cast their inputs with .float(), which
    # is made to mean "the default floating type" here (the one stand-in besides ContrastMemory's .cuda())
    torch.set_default_dtype(torch.float64)
    torch.Tensor.float = lambda self, *args, **kwargs: self.to(torch.get_default_dtype())
    FIXTURES.mkdir(parents=True, exist_ok=True)
    if args.repdistiller:
        sys.path.insert(0, str(args.repdistiller.resolve()))
        for method in REPDISTILLER_RUNS:
            if only and method not in only:
                continue
            fixture = repdistiller_run(method, args.repdistiller)
            path = FIXTURES / f"repdistiller_{method}.json"
            path.write_text(json.dumps(fixture, indent=None, separators=(",", ":")) + "\n")
            print(f"{path.name}: {len(fixture['steps'])} steps, {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
