"""Write the authors' training trajectories that ``tests/test_trainer_parity.py`` compares kdbench with.

Usage (from the repository root; the authors' code is not part of kdbench, check it out yourself at the pinned
commit)::

    git clone https://github.com/HobbitLong/RepDistiller && git -C RepDistiller checkout <REPDISTILLER_COMMIT>
    python -m tests.trainer_parity.make_fixtures --repdistiller RepDistiller [--only kd,crd]
    git clone https://github.com/megvii-research/mdistiller && git -C mdistiller checkout <MDISTILLER_COMMIT>
    python -m tests.trainer_parity.make_fixtures --mdistiller mdistiller
    python -m tests.trainer_parity.make_fixtures --logit-standardization logit-standardization-KD
    python -m tests.trainer_parity.make_fixtures --ctkd CTKD --mlkd Multi-Level-Logit-Distillation \
        --dist DIST_KD/classification   # DIST_KD's submodule, image_classification_sota at DIST_CLASSIFICATION_COMMIT

The authors' code needs only torch and numpy for what is driven here. For each method it builds the student,
teacher, module list, criterion list and optimiser with the same calls, in the same order, as the authors'
``train_student.py`` (which itself cannot be imported: it parses the command line and loads CIFAR at import),
gives every tensor the initial value :mod:`tests.trainer_parity.common` defines, and then runs the authors' own
functions: ``helper.pretrain.init`` for an initialisation phase, ``helper.util.adjust_learning_rate`` and
``helper.loops.train_distill`` for each epoch, on the fixed batches of :mod:`common` (no augmentation).
Forward hooks on the criteria record every loss component at every step; a global optimiser-step hook closes each
step. For mdistiller it builds the distiller of ``DISTILLER.TYPE`` with the configuration of
``configs/cifar100/<method>.yaml`` (a plain namespace stands in for yacs), wraps it in ``nn.DataParallel`` as
``tools/train.py`` does, builds the optimiser with the trainer's own ``init_optimizer`` (the distiller's
``get_learnable_parameters``), and runs each epoch as ``BaseTrainer.train_epoch`` does before it validates
(``adjust_learning_rate``, ``distiller.train()``, the trainer's own ``train_iter`` for each batch; CRD through
``CRDTrainer``, MLKD through ``AugTrainer`` with :func:`common.strong_view` as the strong view); ``.cuda()`` is
the identity. CTKD (and the logit-standardisation code's copy of it) runs as its ``train_student.py`` runs a
``--distill kd --have_mlp 1`` run (:func:`ctkd_run`), DIST as image_classification_sota's ``tools/train.py`` runs
``dist_cifar.yaml`` (:func:`dist_run`). The fixture holds the trajectory, the digests of the final student,
method modules and momentum buffers, the names and shapes of the authors' tensors (so that kdbench can be given the
same initial values), and its source.
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
    # AB with post-activation maps where the authors ask their models for pre-activation ones (preact=True is
    # passed on as False): kdbench reads post-activation maps, and this run shows that to be the only difference
    "ab_postact": {"distill": "abound", "gamma": 1.0, "alpha": 0.0, "beta": 0.0, "method": "ab", "postact": True},
}
MDISTILLER = "megvii-research/mdistiller"
MDISTILLER_COMMIT = "a08d46f10d6102bd6e3f258ca5ac880b020ea259"

#: kdbench method -> mdistiller's ``DISTILLER.TYPE``, its trainer and its configuration (``configs/cifar100/``:
#: the loss weights of ``mdistiller/engine/cfg.py`` and the yaml; warm-ups shortened to 2 epochs so that the 3
#: epochs cross their end; CRD's nce_k shortened as for RepDistiller)
MDISTILLER_RUNS: dict[str, dict[str, Any]] = {
    "kd": {"type": "KD", "trainer": "base",
           "cfg": {"KD": {"TEMPERATURE": 4, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9}}}},
    "dkd": {"type": "DKD", "trainer": "base",
            "cfg": {"DKD": {"CE_WEIGHT": 1.0, "ALPHA": 1.0, "BETA": 8.0, "T": 4.0, "WARMUP": 2}}},
    "reviewkd": {"type": "REVIEWKD", "trainer": "base",
                 "cfg": {"REVIEWKD": {"CE_WEIGHT": 1.0, "REVIEWKD_WEIGHT": 5.0, "WARMUP_EPOCHS": 2,
                                      "SHAPES": [1, 8, 16, 32], "OUT_SHAPES": [1, 8, 16, 32],
                                      "IN_CHANNELS": [16, 32, 64, 64], "OUT_CHANNELS": [64, 128, 256, 256],
                                      "MAX_MID_CHANNEL": 512, "STU_PREACT": False}}},
    # the same with the teacher's post-activation stage maps in place of its pre-activation ones (its "feats" for
    # its "preact_feats"): kdbench reads post-activation maps, and this run shows that to be the only difference
    "reviewkd_postact": {"type": "REVIEWKD", "trainer": "base", "method": "reviewkd", "postact": True},
    "crd": {"type": "CRD", "trainer": "crd",
            "cfg": {"CRD": {"MODE": "exact", "FEAT": {"DIM": 128, "STUDENT_DIM": 64, "TEACHER_DIM": 256},
                            "LOSS": {"CE_WEIGHT": 1.0, "FEAT_WEIGHT": 0.8},
                            "NCE": {"K": 16, "MOMENTUM": 0.5, "TEMPERATURE": 0.07}}}},
}
LOGIT_STANDARDIZATION = "sunshangquan/logit-standardization-KD"
LOGIT_STANDARDIZATION_COMMIT = "f6e5aa5172bad618e801163c3385322eea673754"
#: the logit-standardisation code (a fork of mdistiller, same trainer): ``tools/train.py --logit-stand`` sets
#: ``EXPERIMENT.LOGIT_STAND``, the base temperature 2 and KD weight 9 (DKD: alpha and beta times 9)
LOGIT_STANDARDIZATION_RUNS: dict[str, dict[str, Any]] = {
    "kd_ls": {"type": "KD", "trainer": "base", "method": "kd_ls",
              "cfg": {"EXPERIMENT": {"LOGIT_STAND": True},
                      "KD": {"TEMPERATURE": 2.0, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 9.0}}}},
    "dkd_ls": {"type": "DKD", "trainer": "base", "method": "dkd_ls",
               "cfg": {"EXPERIMENT": {"LOGIT_STAND": True},
                       "DKD": {"CE_WEIGHT": 1.0, "ALPHA": 9.0, "BETA": 72.0, "T": 2.0, "WARMUP": 2}}},
    # its MLKD (configs/cifar100/mlkd/resnet32x4_resnet8x4.yaml, lr 0.025, the "ours" trainer) with --logit-stand:
    # T 2 and KD weight 9, the kd terms on standardised logits
    "mlkd_ls": {"type": "MLKD", "trainer": "ours", "method": "mlkd", "lr": 0.025,
                "components": {"loss_ce": "cls", "loss_kd": "kd", "loss_cc": "cc", "loss_bc": "bc"},
                "cfg": {"EXPERIMENT": {"LOGIT_STAND": True},
                        "KD": {"TEMPERATURE": 2.0, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 9.0}}}},
}
CTKD = "zhengli97/CTKD"
CTKD_COMMIT = "7d5252241259ae70d38a832371fed9697d15fc14"
#: CTKD's ``scripts/run_cifar_distill.sh``: ``--distill kd -r 0.1 -a 0.9 -b 0 --kd_T 4 --learning_rate 0.05
#: --have_mlp 1 --mlp_name global --cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10`` (``--t_start 1
#: --t_end 20`` by default), the curriculum shortened to 2 epochs so that the 3 epochs cross its end
CTKD_RUNS: dict[str, dict[str, Any]] = {
    "ctkd": {"decay_loops": 2, "alpha": 0.9, "criterion_div": "DistillKL"},
    # the logit-standardisation repository's copy of that code (its CTKD/ folder, LOGIT_STANDARDIZATION_COMMIT):
    # CTKD/scripts/run_cifar_distill.sh has -a 9 and no --logit_stand, with which its train_student.py picks the
    # standardised KL (``DistillKL() if opt.logit_stand else DistillKL_logit_stand()``)
    "ctkd_ls": {"decay_loops": 2, "alpha": 9.0, "criterion_div": "DistillKL_logit_stand",
                "repo": LOGIT_STANDARDIZATION},
}
CTKD_FILES = ["train_student.py", "helper/loops.py", "helper/util.py", "models/temp_global.py", "distiller_zoo/KD.py",
              "models/resnet.py"]
DIST = "hunto/DIST_KD"
DIST_COMMIT = "2418f18b1fedd7c2646a7b1b9a27d5c674c2170b"
#: DIST_KD's CIFAR code is its submodule ``classification``: hunto/image_classification_sota at this commit
DIST_CLASSIFICATION = "hunto/image_classification_sota"
DIST_CLASSIFICATION_COMMIT = "d9662f7df68fe46b973c4580b7c9b896cedcd301"
#: ``configs/strategies/distill/dist_cifar.yaml``: ``kd: dist_t4``, CE 1, DIST 2, SGD lr 0.05 without Nesterov and
#: with weight decay on every parameter (``opt_no_filter``), ``sched: step`` every 30 epochs after a 120-epoch warm-up
#: at the same lr. Its scheduler is stepped after every step with ``epoch * len(loader) + batch_idx + 1`` and its
#: decay counts from the warm-up's last step plus one, so each decay lands on the second step of epochs 150, 180, 210.
#: Shortened: a 1-epoch warm-up and decay every epoch (the decay falls on epoch 3's second step); ``dist_nolag`` runs
#: the same code without a warm-up, decaying every 2 epochs (exactly at epoch 3's start, kdbench's milestone)
DIST_RUNS: dict[str, dict[str, Any]] = {
    "dist": {"warmup_epochs": 1, "decay_epochs": 1},
    "dist_nolag": {"warmup_epochs": 0, "decay_epochs": 2, "method": "dist"},
}
DIST_FILES = ["tools/train.py", "lib/models/losses/kd_loss.py", "lib/models/losses/dist_kd.py",
              "lib/utils/optim.py", "lib/utils/scheduler.py", "lib/models/cifar/resnet.py",
              "configs/strategies/distill/dist_cifar.yaml"]
MLKD = "Jin-Ying/Multi-Level-Logit-Distillation"
MLKD_COMMIT = "5ee473fcf193dfb00a0598b64d0acfe6ad58a482"
#: the MLKD code (a fork of mdistiller): ``tools/train_ours.py`` with ``configs/cifar100/ours/res32x4_res8x4.yaml``
#: (``KD_ours`` at the KD defaults of its ``cfg.py``: T 4, CE 0.1, KD 0.9; lr 0.025; the ``ours`` trainer,
#: ``AugTrainer``, which feeds a weak and a strong view: here the batch and :func:`common.strong_view` of it)
MLKD_RUNS: dict[str, dict[str, Any]] = {
    "mlkd": {"type": "KD_ours", "trainer": "ours", "lr": 0.025,
             "components": {"loss_ce": "cls", "loss_kd": "kd", "loss_cc": "cc", "loss_bc": "bc"},
             "cfg": {"KD": {"TEMPERATURE": 4, "LOSS": {"CE_WEIGHT": 0.1, "KD_WEIGHT": 0.9}}}},
}
MLKD_FILES = ["tools/train_ours.py", "mdistiller/engine/trainer.py", "mdistiller/engine/utils.py",
              "mdistiller/engine/cfg.py", "mdistiller/distillers/KD_ours.py", "mdistiller/distillers/_base.py",
              "mdistiller/models/cifar/resnet.py", "configs/cifar100/ours/res32x4_res8x4.yaml"]
MDISTILLER_FILES = ["mdistiller/engine/trainer.py", "mdistiller/engine/utils.py", "mdistiller/engine/cfg.py",
                    "mdistiller/distillers/", "mdistiller/models/cifar/resnet.py", "configs/cifar100/"]
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


def repdistiller_run(name: str, root: Path) -> dict[str, Any]:
    """Drive RepDistiller's training of one run of :data:`REPDISTILLER_RUNS` from the common start."""
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
    run = REPDISTILLER_RUNS[name]
    method = run.get("method", name)
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
    if run.get("postact"):
        for model in (model_t, model_s):
            forward = type(model).forward
            model.forward = (lambda f: lambda self, x, is_feat=False, preact=False: f(self, x, is_feat, False))(
                forward).__get__(model)
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
                   "files": REPDISTILLER_FILES, "post_activation": bool(run.get("postact")),
                   "options": {k: v for k, v in vars(opt).items() if isinstance(v, int | float | str | list)}},
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


def _namespace(tree: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(**{k: _namespace(v) if isinstance(v, dict) else v for k, v in tree.items()})


def contrast_rows(indices: torch.Tensor, labels: torch.Tensor, nce_k: int, rng: torch.Generator) -> list[list[int]]:
    """CRD's 'exact' sampling: each sample itself, then ``nce_k`` samples of other classes (drawn from ``rng``)."""
    images_labels = common.images_and_labels()[1]
    rows = []
    for i, label in zip(indices.tolist(), labels.tolist(), strict=True):
        others = torch.nonzero(images_labels != label).flatten()
        pick = others[torch.randint(0, len(others), (nce_k,), generator=rng)]
        rows.append([i, *pick.tolist()])
    return rows


def mdistiller_run(name: str, root: Path, repo: str = MDISTILLER) -> dict[str, Any]:
    """Drive mdistiller's training of one run of :data:`MDISTILLER_RUNS` from the common start; returns the fixture.

    ``repo`` is :data:`LOGIT_STANDARDIZATION` for its fork's runs (:data:`LOGIT_STANDARDIZATION_RUNS`).
    """
    from mdistiller.distillers import distiller_dict
    from mdistiller.engine import trainer as trainers
    from mdistiller.engine.utils import AverageMeter, adjust_learning_rate
    from mdistiller.models import cifar_model_dict

    runs, commit, files = {LOGIT_STANDARDIZATION: (LOGIT_STANDARDIZATION_RUNS, LOGIT_STANDARDIZATION_COMMIT,
                                                   MDISTILLER_FILES),
                           MLKD: (MLKD_RUNS, MLKD_COMMIT, MLKD_FILES)}.get(
        repo, (MDISTILLER_RUNS, MDISTILLER_COMMIT, MDISTILLER_FILES))
    run = runs[name]
    method = run.get("method", name)
    if "cfg" not in run:
        run = {**runs[method], **run}
    cfg = _namespace({"SOLVER": {"EPOCHS": common.EPOCHS, "LR": run.get("lr", 0.05),
                                 "LR_DECAY_STAGES": list(common.LR_DECAY_EPOCHS), "LR_DECAY_RATE": 0.1,
                                 "WEIGHT_DECAY": 5e-4, "MOMENTUM": 0.9, "TYPE": "SGD",
                                 "BATCH_SIZE": common.BATCH_SIZE, "TRAINER": run["trainer"]},
                      "DISTILLER": {"TYPE": run["type"], "TEACHER": common.TEACHER, "STUDENT": common.STUDENT},
                      **run["cfg"]})
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the trainer moves every batch to the GPU
    sys.modules["mdistiller.distillers.CRD"].AliasMethod.cuda = lambda self: self  # (the package's CRD is the class)
    torch.manual_seed(0)
    model_t = cifar_model_dict[common.TEACHER][0](num_classes=common.NUM_CLASSES)
    model_s = cifar_model_dict[common.STUDENT][0](num_classes=common.NUM_CLASSES)
    _initialise("teacher", model_t)
    _initialise("student", model_s)
    if run.get("postact"):
        forward = type(model_t).forward

        def post_activation(self: nn.Module, x: torch.Tensor) -> Any:
            logits, feats = forward(self, x)
            return logits, {**feats, "preact_feats": feats["feats"]}

        model_t.forward = post_activation.__get__(model_t)
    distiller_class = distiller_dict[run["type"]]
    if run["type"] == "CRD":
        distiller = distiller_class(model_s, model_t, cfg, common.NUM_TRAIN)
    else:
        distiller = distiller_class(model_s, model_t, cfg)
    modules: dict[str, nn.Module] = {}
    if run["type"] == "REVIEWKD":  # its ModuleList runs deepest first; listed here shallowest first, as kdbench
        modules["abfs"] = nn.ModuleList(list(distiller.abfs)[::-1])
    elif run["type"] == "CRD":
        crd = nn.Module()
        crd.embed_s, crd.embed_t, crd.contrast = distiller.embed_s, distiller.embed_t, distiller.contrast
        modules["crd"] = crd
    for name, module in modules.items():
        _initialise(f"{method}:{name}", module, keep=("contrast.params",))

    recorder = Recorder()
    recorder.phase = "train"
    forward_train = distiller.forward_train

    components = run.get("components")

    def recording(**kwargs: Any) -> Any:
        preds, losses = forward_train(**kwargs)
        if components:  # each of the authors' terms on its own
            recorder.current = {components[k]: float(v.detach().mean()) for k, v in losses.items()}
        else:
            recorder.current = {"cls" if k == "loss_ce" else "kd": float(v.detach().mean()) for k, v in losses.items()}
        return preds, losses

    distiller.forward_train = recording
    trainer = object.__new__({"crd": trainers.CRDTrainer, "ours": getattr(trainers, "AugTrainer", None)}.get(
        run["trainer"], trainers.BaseTrainer))
    trainer.cfg, trainer.distiller = cfg, nn.DataParallel(distiller)
    trainer.optimizer = trainer.init_optimizer(cfg)
    names = {id(p): f"student.{k}" for k, p in model_s.named_parameters()}
    for name, module in modules.items():
        names.update({id(p): f"{name}.{k}" for k, p in module.named_parameters()})
    rng = torch.Generator().manual_seed(common.DATA_SEED)
    contrast: list[list[list[int]]] = []
    handle = register_optimizer_step_post_hook(recorder.step_done)
    try:
        for epoch in range(1, cfg.SOLVER.EPOCHS + 1):  # BaseTrainer.train_epoch up to its validation
            recorder.epoch = epoch - 1
            adjust_learning_rate(epoch, cfg, trainer.optimizer)
            meters = {k: AverageMeter() for k in ("training_time", "data_time", "losses", "top1", "top5")}
            trainer.distiller.train()
            for x, y, idx in common.batches(epoch - 1):
                data: tuple[torch.Tensor, ...] = (x, y, idx)
                if run["type"] == "CRD":
                    rows = contrast_rows(idx, y, cfg.CRD.NCE.K, rng)
                    contrast.append(rows)
                    data = (x, y, idx, torch.tensor(rows))
                elif run["trainer"] == "ours":  # AugTrainer: (weak, strong) views of the batch
                    data = ((x, common.strong_view(x)), y, idx)
                trainer.train_iter(data, epoch, meters)
    finally:
        handle.remove()
        torch.Tensor.cuda = cuda
    steps = []
    for s in recorder.steps:
        s["losses"] = s.pop("raw")
        steps.append(s)
    return {
        "method": method,
        "source": {"repo": repo, "commit": _git_commit(root) or commit, "files": files,
                   "distiller": run["type"], "trainer": run["trainer"], "teacher_post_activation": bool(
                       run.get("postact")), "cfg": json.loads(json.dumps(cfg, default=vars))},
        "schedule": {"epochs": common.EPOCHS, "init_epochs": 0, "lr_decay_epochs": list(common.LR_DECAY_EPOCHS),
                     "lr": cfg.SOLVER.LR, "weight_decay": cfg.SOLVER.WEIGHT_DECAY, "momentum": cfg.SOLVER.MOMENTUM},
        "keys": {"student": _state_keys(model_s), "teacher": _state_keys(model_t),
                 **{f"module:{k}": _state_keys(m) for k, m in modules.items()}},
        "contrast_idx": contrast,
        "steps": steps,
        "final": {"student": _digests(model_s), **{f"module:{k}": _digests(m) for k, m in modules.items()},
                  "momentum": _momentum(trainer.optimizer, names)},
    }


def _schedule(lr: float, init_epochs: int = 0) -> dict[str, Any]:
    return {"epochs": common.EPOCHS, "init_epochs": init_epochs, "lr_decay_epochs": list(common.LR_DECAY_EPOCHS),
            "lr": lr, "weight_decay": 5e-4, "momentum": 0.9}


def _final_steps(recorder: Recorder, weights: dict[str, float]) -> list[dict[str, Any]]:
    steps = []
    for s in recorder.steps:
        raw = s.pop("raw")
        s["losses"] = {k: weights[k] * v for k, v in raw.items()}
        steps.append(s)
    return steps


def ctkd_run(name: str, root: Path) -> dict[str, Any]:
    """Drive CTKD's ``train_student.py`` training of one run of :data:`CTKD_RUNS` from the common start (``root``:
    the CTKD checkout, or the CTKD folder of the logit-standardisation checkout for its run).

    Its own ``Global_T`` (the learnable temperature, initialised by its constructor to t = 1), ``CosineDecay``
    (the reversal strength of each epoch), ``helper.util.adjust_learning_rate`` and ``helper.loops.train_distill``,
    with the module, criterion and optimiser lists built as its ``main_worker`` builds them for ``--distill kd``.
    """
    import train_student
    from helper.loops import train_distill
    from helper.util import adjust_learning_rate
    from models import model_dict

    run = CTKD_RUNS[name]
    repo = run.get("repo", CTKD)
    commit = LOGIT_STANDARDIZATION_COMMIT if repo == LOGIT_STANDARDIZATION else CTKD_COMMIT
    opt = SimpleNamespace(
        print_freq=10**9, distill="kd", model_s=common.STUDENT, epochs=common.EPOCHS, learning_rate=0.05,
        lr_decay_epochs=list(common.LR_DECAY_EPOCHS), lr_decay_rate=0.1, weight_decay=5e-4, momentum=0.9,
        gamma=0.1, alpha=run["alpha"], beta=0.0, kd_T=4.0, have_mlp=1, mlp_name="global", t_start=1.0, t_end=20.0,
        cosine_decay=1, decay_max=0.0, decay_min=-1.0, decay_loops=run["decay_loops"],
        batch_size=common.BATCH_SIZE, gpu=None, multiprocessing_distributed=False)
    torch.manual_seed(0)
    model_t = model_dict[common.TEACHER](num_classes=common.NUM_CLASSES)
    model_s = model_dict[common.STUDENT](num_classes=common.NUM_CLASSES)
    _initialise("teacher", model_t)
    _initialise("student", model_s)
    mlp = train_student.Global_T()  # its own initial value (kdbench's default is the same)
    module_list = nn.ModuleList([model_s])
    trainable_list = nn.ModuleList([model_s])
    trainable_list.append(mlp)
    criterion_cls = nn.CrossEntropyLoss()
    criterion_div = getattr(train_student, run["criterion_div"])()
    criterion_list = nn.ModuleList([criterion_cls, criterion_div, train_student.DistillKL()])
    module_list.append(model_t)
    optimizer = torch.optim.SGD(trainable_list.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    gradient_decay = train_student.CosineDecay(max_value=opt.decay_max, min_value=opt.decay_min,
                                               num_loops=opt.decay_loops)
    recorder = Recorder()
    recorder.phase = "train"
    temperatures: list[float] = []
    hooks = [criterion_cls.register_forward_hook(recorder.hook("cls")),
             criterion_div.register_forward_hook(recorder.hook("div")),
             mlp.register_forward_hook(lambda _m, _i, t: temperatures.append(
                 float(opt.t_start + opt.t_end * torch.sigmoid(t.detach())[0])))]
    handle = register_optimizer_step_post_hook(recorder.step_done)
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # its loop moves the temperature to the GPU
    reversal = []
    try:
        for epoch in range(1, opt.epochs + 1):  # main_worker's loop up to its validation
            adjust_learning_rate(epoch, opt, optimizer)
            decay_value = gradient_decay.get_value(epoch)
            reversal.append(decay_value)
            recorder.epoch = epoch - 1
            train_distill(epoch, [(x, y) for x, y, _ in common.batches(epoch - 1)], module_list, mlp, decay_value,
                          criterion_list, optimizer, opt)
    finally:
        torch.Tensor.cuda = cuda
        handle.remove()
        for h in hooks:
            h.remove()
    steps = _final_steps(recorder, {"cls": opt.gamma, "div": opt.alpha})
    for s, t in zip(steps, temperatures, strict=True):
        s["temperature"] = t
    names = {id(p): f"student.{k}" for k, p in model_s.named_parameters()}
    names.update({id(p): f"temp.{k}" for k, p in mlp.named_parameters()})
    return {
        "method": name,
        "source": {"repo": repo, "commit": _git_commit(root) or commit,
                   "files": [f"CTKD/{f}" for f in CTKD_FILES] if repo == LOGIT_STANDARDIZATION else CTKD_FILES,
                   "reversal_per_epoch": reversal,
                   "options": {k: v for k, v in vars(opt).items() if isinstance(v, int | float | str | list)}},
        "schedule": _schedule(opt.learning_rate),
        "keys": {"student": _state_keys(model_s), "teacher": _state_keys(model_t), "module:temp": _state_keys(mlp)},
        "own_init": ["temp"],
        "steps": steps,
        "final": {"student": _digests(model_s), "module:temp": _digests(mlp),
                  "momentum": _momentum(optimizer, names)},
    }


def dist_run(name: str, root: Path) -> dict[str, Any]:
    """Drive DIST's CIFAR-100 training (image_classification_sota's ``tools/train.py``) of one run of
    :data:`DIST_RUNS` from the common start.

    Its ``KDLoss`` wrapper with ``DIST`` (``kd: dist_t4``), ``build_optimizer``, ``build_scheduler`` and
    ``train_epoch`` (``tools/train.py``), set up as its ``main`` sets them up from ``dist_cifar.yaml``. One stand-in:
    ``train_epoch``'s loss meters all-reduce across processes, here a meter of one process.
    """
    import importlib.util

    from lib.models.cifar import model_dict
    from lib.models.losses.kd_loss import KDLoss
    from lib.utils import misc
    from lib.utils.optim import build_optimizer
    from lib.utils.scheduler import build_scheduler

    spec = importlib.util.spec_from_file_location("dist_train", root / "tools" / "train.py")
    assert spec is not None and spec.loader is not None
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    train.AverageMeter = lambda dist=False: misc.AverageMeter(dist=False)
    run = DIST_RUNS[name]
    args = SimpleNamespace(
        kd="dist_t4", ori_loss_weight=1.0, kd_loss_weight=2.0, lr=0.05, warmup_lr=0.05,
        warmup_epochs=run["warmup_epochs"], decay_epochs=run["decay_epochs"], decay_rate=0.1, sched="step",
        decay_by_epoch=True, min_lr=1e-6, epochs=common.EPOCHS, momentum=0.9, weight_decay=5e-4, opt="sgd",
        opt_eps=1e-8, opt_no_filter=True, sgd_no_nesterov=True, dyrep=False, log_interval=10**9,
        clip_grad_norm=False, student_module="", teacher_module="", batch_size=common.BATCH_SIZE)
    torch.manual_seed(0)
    model = model_dict[common.STUDENT](num_classes=common.NUM_CLASSES)
    teacher = model_dict[common.TEACHER](num_classes=common.NUM_CLASSES)
    _initialise("teacher", teacher)
    _initialise("student", model)
    loss_fn = KDLoss(model, teacher, nn.CrossEntropyLoss(), args.kd, args.student_module, args.teacher_module,
                     args.ori_loss_weight, args.kd_loss_weight)
    optimizer = build_optimizer(args.opt, model, args.lr, eps=args.opt_eps, momentum=args.momentum,
                                weight_decay=args.weight_decay, filter_bias_and_bn=not args.opt_no_filter,
                                nesterov=not args.sgd_no_nesterov, sort_params=args.dyrep)
    steps_per_epoch = common.STEPS_PER_EPOCH
    scheduler = build_scheduler(args.sched, optimizer, args.warmup_epochs * steps_per_epoch, args.warmup_lr,
                                args.decay_epochs * steps_per_epoch, args.decay_rate,
                                args.epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch,
                                decay_by_epoch=args.decay_by_epoch, min_lr=args.min_lr)
    recorder = Recorder()
    recorder.phase = "train"
    hooks = [loss_fn.ori_loss.register_forward_hook(recorder.hook("cls")),
             loss_fn.kd_loss.register_forward_hook(recorder.hook("kd"))]
    handle = register_optimizer_step_post_hook(recorder.step_done)
    try:
        for epoch in range(args.epochs):  # main's loop up to its validation
            recorder.epoch = epoch
            train.train_epoch(args, epoch, model, None, [(x, y) for x, y, _ in common.batches(epoch)], optimizer,
                              loss_fn, scheduler)
    finally:
        handle.remove()
        for h in hooks:
            h.remove()
    names = {id(p): f"student.{k}" for k, p in model.named_parameters()}
    return {
        "method": run.get("method", name),
        "source": {"repo": DIST, "commit": _git_commit(root.parent) or DIST_COMMIT,
                   "classification": {"repo": DIST_CLASSIFICATION,
                                      "commit": _git_commit(root) or DIST_CLASSIFICATION_COMMIT},
                   "files": DIST_FILES,
                   "options": {k: v for k, v in vars(args).items() if isinstance(v, int | float | str | list)}},
        "schedule": _schedule(args.lr),
        "keys": {"student": _state_keys(model), "teacher": _state_keys(teacher)},
        "steps": _final_steps(recorder, {"cls": args.ori_loss_weight, "kd": args.kd_loss_weight}),
        "final": {"student": _digests(model), "momentum": _momentum(optimizer, names)},
    }


def _forget(root: Path, packages: tuple[str, ...]) -> None:
    """Take one code base off the import path, with its top-level packages (the next may reuse their names)."""
    if str(root.resolve()) in sys.path:
        sys.path.remove(str(root.resolve()))
    for name in [m for m in sys.modules if m.split(".")[0] in packages]:
        del sys.modules[name]


#: the authors' architecture name -> the zoo's (every network of the CIFAR-100 tables; RepDistiller's ``model_dict``)
ZOO_NAMES = {**{f"resnet{d}": f"cifar_resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)},
             "resnet8x4": "cifar_resnet8x4", "resnet32x4": "cifar_resnet32x4", "ResNet50": "cifar_resnet50",
             **{f"wrn_{d}_{w}": f"cifar_wrn_{d}_{w}" for d in (16, 40) for w in (1, 2)},
             **{f"vgg{d}": f"cifar_vgg{d}" for d in (8, 11, 13, 16, 19)},
             "MobileNetV2": "cifar_mobilenetv2", "ShuffleV1": "cifar_shufflenetv1", "ShuffleV2": "cifar_shufflenetv2"}


def checkpoint_models(repo: str) -> dict[str, dict[str, Any]]:
    """Each architecture of the authors' model dict, with the common initial values (BatchNorm statistics
    included), in eval mode: its state dict's names and shapes in saved order and its logits on
    :func:`common.checkpoint_images`. The tests save that state dict as the authors' checkpoints hold it and load
    it through ``--teacher-ckpt``'s path into the zoo's network."""
    if repo == REPDISTILLER:
        from models import model_dict
    else:
        from mdistiller.models import cifar_model_dict

        model_dict = {name: entry[0] for name, entry in cifar_model_dict.items()}
    out = {}
    for name, zoo in ZOO_NAMES.items():
        if name not in model_dict:
            continue
        model = model_dict[name](num_classes=common.NUM_CLASSES)
        keys = _state_keys(model)
        model.load_state_dict(common.initial_state(f"checkpoint:{name}", [(k, tuple(s)) for k, s in keys]))
        with torch.no_grad():
            logits = model.eval()(common.checkpoint_images())
        logits = logits[0] if isinstance(logits, tuple) else logits  # mdistiller's networks return (logits, feats)
        out[name] = {"zoo": zoo, "keys": keys, "logits": logits.tolist()}
    return out


def main(argv: list[str] | None = None) -> None:
    """Write one fixture per method of the authors' code bases given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repdistiller", type=Path, help="a checkout of HobbitLong/RepDistiller")
    parser.add_argument("--mdistiller", type=Path, help="a checkout of megvii-research/mdistiller")
    parser.add_argument("--logit-standardization", type=Path,
                        help="a checkout of sunshangquan/logit-standardization-KD")
    parser.add_argument("--ctkd", type=Path, help="a checkout of zhengli97/CTKD")
    parser.add_argument("--dist", type=Path, help="a checkout of hunto/DIST_KD's submodule classification "
                        "(hunto/image_classification_sota at DIST_CLASSIFICATION_COMMIT)")
    parser.add_argument("--mlkd", type=Path, help="a checkout of Jin-Ying/Multi-Level-Logit-Distillation")
    parser.add_argument("--only", default="", help="comma-separated kdbench method names (and/or 'checkpoints')")
    args = parser.parse_args(argv)
    only = {m for m in args.only.split(",") if m}
    torch.set_num_threads(1)
    # float64 throughout (tests/test_trainer_parity.py says why); the loops cast their inputs with .float(), which
    # is made to mean "the default floating type" here (the one stand-in besides ContrastMemory's .cuda())
    torch.set_default_dtype(torch.float64)
    torch.Tensor.float = lambda self, *args, **kwargs: self.to(torch.get_default_dtype())
    FIXTURES.mkdir(parents=True, exist_ok=True)
    checkpoints: dict[str, Any] = {}
    if args.repdistiller:
        sys.path.insert(0, str(args.repdistiller.resolve()))
        for name, run in REPDISTILLER_RUNS.items():
            if only and run.get("method", name) not in only:
                continue
            write(f"repdistiller_{name}", repdistiller_run(name, args.repdistiller))
        if not only or "checkpoints" in only:
            checkpoints[REPDISTILLER] = {"commit": _git_commit(args.repdistiller) or REPDISTILLER_COMMIT,
                                         "files": ["models/"], "models": checkpoint_models(REPDISTILLER)}
        sys.path.remove(str(args.repdistiller.resolve()))
        for name in [m for m in sys.modules if m.split(".")[0] in ("models", "helper", "crd", "distiller_zoo")]:
            del sys.modules[name]  # RepDistiller's top-level packages, before another code base is imported
    if args.mdistiller:
        sys.path.insert(0, str(args.mdistiller.resolve()))
        for name, run in MDISTILLER_RUNS.items():
            if only and run.get("method", name) not in only:
                continue
            write(f"mdistiller_{name}", mdistiller_run(name, args.mdistiller))
        if not only or "checkpoints" in only:
            checkpoints[MDISTILLER] = {"commit": _git_commit(args.mdistiller) or MDISTILLER_COMMIT,
                                       "files": ["mdistiller/models/cifar/"],
                                       "models": checkpoint_models(MDISTILLER)}
    if args.logit_standardization:
        for name in [m for m in sys.modules if m.split(".")[0] == "mdistiller"]:
            del sys.modules[name]  # its fork's package has the same name
        if args.mdistiller:
            sys.path.remove(str(args.mdistiller.resolve()))
        sys.path.insert(0, str(args.logit_standardization.resolve()))
        for name, run in LOGIT_STANDARDIZATION_RUNS.items():
            if only and run.get("method", name) not in only:
                continue
            write(f"logit_standardization_{name}",
                  mdistiller_run(name, args.logit_standardization, LOGIT_STANDARDIZATION))
    if args.mlkd:
        for name in [m for m in sys.modules if m.split(".")[0] == "mdistiller"]:
            del sys.modules[name]  # its fork's package has the same name
        for other in (args.mdistiller, args.logit_standardization):
            if other is not None:
                _forget(other, ("mdistiller",))
        sys.path.insert(0, str(args.mlkd.resolve()))
        for name, run in MLKD_RUNS.items():
            if only and run.get("method", name) not in only:
                continue
            write(f"mlkd_{name}", mdistiller_run(name, args.mlkd, MLKD))
        _forget(args.mlkd, ("mdistiller",))
    ctkd_roots = {CTKD: args.ctkd,
                  LOGIT_STANDARDIZATION: args.logit_standardization / "CTKD" if args.logit_standardization else None}
    packages = ("models", "helper", "crd", "distiller_zoo", "dataset", "train_student")  # RepDistiller's layout
    for name, run in CTKD_RUNS.items():
        root = ctkd_roots[run.get("repo", CTKD)]
        if root is None or (only and name not in only):
            continue
        for module in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[module]
        sys.path.insert(0, str(root.resolve()))
        # dataset/imagenet.py (imported by train_student.py, never run here) imports imgaug at import time
        imgaug = sys.modules.setdefault("imgaug", type(sys)("imgaug"))
        imgaug.augmenters = sys.modules.setdefault("imgaug.augmenters", type(sys)("imgaug.augmenters"))
        prefix = "logit_standardization" if run.get("repo") == LOGIT_STANDARDIZATION else "ctkd"
        write(f"{prefix}_{name}", ctkd_run(name, root))
        _forget(root, packages)
    if args.dist:
        sys.path.insert(0, str(args.dist.resolve()))
        for name, run in DIST_RUNS.items():
            if only and run.get("method", name) not in only:
                continue
            write(f"dist_{name}", dist_run(name, args.dist))
        _forget(args.dist, ("lib",))
    if checkpoints:
        ours = checkpoints.get(MDISTILLER, {}).get("models", {})
        theirs = checkpoints.get(REPDISTILLER, {}).get("models", {})
        for name, entry in ours.items():  # an identical network is stored once
            other = theirs.get(name, {})
            if other.get("keys") == entry["keys"] and other.get("logits") == entry["logits"]:
                ours[name] = {"zoo": entry["zoo"], "same_as": REPDISTILLER}
        path = FIXTURES / "authors_checkpoints.json"
        stored = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**stored, **checkpoints}, separators=(",", ":")) + "\n")
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB")


def write(name: str, fixture: dict[str, Any]) -> None:
    """Store one fixture (compact JSON)."""
    path = FIXTURES / f"{name}.json"
    path.write_text(json.dumps(fixture, indent=None, separators=(",", ":")) + "\n")
    print(f"{path.name}: {len(fixture['steps'])} steps, {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
