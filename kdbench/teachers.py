"""Teachers: trained by kdbench once per (model, dataset, budget, seed) and cached, or loaded.

A teacher is trained by kdbench and cached, loaded from a checkpoint, or taken from timm's pretrained weights.
A cached teacher is a pair of files in the teacher cache (by default ``<results>/teachers``): the weights
(``<name>.pt``, a plain state dict) and, written last, the metadata (``<name>.json``) with the weights' SHA-256.
A checkpoint whose hash does not match, or that cannot be read, is retrained. Training is guarded by a file lock,
so concurrent processes (two sweeps, Ray workers on a shared folder) train each teacher once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdbench.config import RunSpec, params_dict, spec_hash
from kdbench.data import Splits
from kdbench.distiller import get_method
from kdbench.errors import KDBenchError, ModelError
from kdbench.features import ModelInfo, describe_model
from kdbench.models import create_model
from kdbench.pretrained import check_top1, load_pretrained
from kdbench.published import published_teacher_top1
from kdbench.store import TeacherCache, atomic_write_bytes, atomic_write_text
from kdbench.training import Member, predict, top1, train_members

ProgressFactory = Callable[[int, str], contextlib.AbstractContextManager[Callable[[int], None]]]


@dataclass
class Teacher:
    """A ready teacher: the model in eval mode on the training device, and what records say about it.

    Its predictions on an evaluation split are computed on first use (:meth:`logits`), so a run evaluated on the
    validation split (a tuning trial) never reads the test split, not even through its teacher.
    """

    name: str
    model: nn.Module
    source: str
    sha256: str | None
    info: ModelInfo
    splits: Splits | None = None
    spec: RunSpec | None = None
    _logits: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def logits(self, split: str) -> Tensor | None:
        """The teacher's logits on ``split`` (``test`` or ``val``), computed once; ``None`` without data."""
        if split not in self._logits:
            if self.splits is None or self.spec is None:
                return None
            self._logits[split] = _eval_teacher(self.model, self.splits, self.spec, split)
        return self._logits[split]

    def top1_on(self, split: str) -> float | None:
        """The teacher's top-1 accuracy (percent) on ``split``."""
        logits = self.logits(split)
        if logits is None or self.splits is None:
            return None
        return top1(logits, self.splits.labels(split).to(logits.device))

    @property
    def top1(self) -> float | None:
        """The teacher's top-1 accuracy on the test split (computed on first use)."""
        return self.top1_on("test")

    @property
    def test_logits(self) -> Tensor | None:
        """The teacher's logits on the test split (computed on first use)."""
        return self.logits("test")


def teacher_spec(spec: RunSpec) -> RunSpec:
    """The run that trains ``spec``'s teacher: plain cross-entropy under the teacher budget and seed."""
    assert spec.teacher is not None
    ce = get_method("ce")  # the baseline with its registered defaults
    return dataclasses.replace(
        spec, student=spec.teacher, method="ce", method_params=params_dict(ce.Params()), teacher=None,
        teacher_source="none", teacher_ckpt_sha256=None, teacher_ckpt=None, seed=spec.teacher_seed,
        epochs=spec.teacher_epochs, lr=spec.teacher_lr or spec.lr, teacher_lr=None,
        weight_decay=spec.weight_decay if spec.teacher_weight_decay is None else spec.teacher_weight_decay,
        teacher_weight_decay=None,
        method_version=ce.version, eval_split="test",
    )


def teacher_key(spec: RunSpec) -> str:
    """File stem of ``spec``'s cached teacher: ``<model>-<dataset>-<hash of the teacher's training run>``."""
    tspec = teacher_spec(spec)
    return f"{tspec.student}-{tspec.dataset}-{spec_hash(tspec)[:12]}"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


SAVE_HINT = "save one with torch.save(model.state_dict(), path)"


def _unreadable(path: Path, err: BaseException) -> str:
    """One line on what the file at ``path`` is not, from its first bytes and torch's refusal ``err``."""
    if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
        what = ("it holds pickled Python objects, not a state dict of tensors: kdbench loads state dicts only "
                f"(weights_only), never arbitrary pickles; {SAVE_HINT}")
    else:
        with path.open("rb") as handle:
            head = handle.read(4)
        if not head:
            what = "the file is empty"
        elif head.startswith(b"PK"):
            what = "it is a damaged PyTorch checkpoint (a truncated or corrupt zip archive)"
        elif head.startswith(b"\x80"):
            what = "it is a damaged or foreign pickle, not a PyTorch checkpoint"
        else:
            what = f"it is not a PyTorch checkpoint (not a file written by torch.save); {SAVE_HINT}"
    return f"cannot read checkpoint {path}: {what}"


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Load a state dict with ``weights_only=True``; accepts a bare state dict or one nested under a usual key.

    Raises:
        KDBenchError: the file cannot be read as a PyTorch checkpoint, or holds something else than a state dict.
    """
    try:
        if path.suffix == ".safetensors":  # timm's hub format (pretrained weights); no pickle at all
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on pickle protocols; the error below says it all
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a truncated or foreign file
        raise KDBenchError(_unreadable(path, err)) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise KDBenchError(f"checkpoint {path} holds no state dict of tensors; {SAVE_HINT}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, state: dict[str, Tensor], source: str, name: str) -> None:
    """Load ``state`` into ``model`` strictly; a mismatch is a one-line error naming both.

    A zoo network also takes the CIFAR KD authors' checkpoints (RepDistiller's, mdistiller's), renamed by
    :func:`kdbench.zoo.authors.from_authors`.
    """
    from kdbench.zoo.authors import from_authors

    state = from_authors(model, state) or state
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ModelError(f"checkpoint {source} does not fit model {name!r}: {detail[:200]}") from None


def _eval_teacher(model: nn.Module, splits: Splits, spec: RunSpec, split: str) -> Tensor:
    return predict(model, splits, split, max(256, spec.batch_size), amp=spec.amp,
                   channels_last=spec.channels_last).logits


def _finish(name: str, model: nn.Module, source: str, sha256: str | None, splits: Splits, spec: RunSpec,
            device: torch.device) -> Teacher:
    model = model.to(device).eval().requires_grad_(False)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    info = splits.info
    return Teacher(name=name, model=model, source=source, sha256=sha256,
                   info=describe_model(model, name, info.in_chans, info.image_size), splits=splits, spec=spec)


def prepare_teacher(spec: RunSpec, splits: Splits, device: torch.device, cache_dir: Path,
                    progress: ProgressFactory | None = None, log: Callable[[str], None] = print,
                    train: bool = True) -> Teacher:
    """The teacher of ``spec``, ready on ``device``: loaded from the cache, a checkpoint or timm, or trained.

    Args:
        spec: a run whose method uses a teacher.
        splits: the run's dataset.
        device: the training device.
        cache_dir: the teacher cache folder.
        progress: makes a progress bar for teacher training.
        log: where one-line notes go (a retrained corrupt checkpoint, say).
        train: train a teacher the cache lacks (``False``: the cache must hold it; the other ranks under torchrun).

    Raises:
        KDBenchError: a given checkpoint is missing, unreadable, changed since the spec was made, or does not fit;
            or, with ``train=False``, the cache lacks the teacher.
    """
    assert spec.teacher is not None
    info = splits.info
    build = dict(num_classes=info.num_classes, in_chans=info.in_chans, image_size=info.image_size)
    if spec.teacher_source == "pretrained":
        model = load_pretrained(spec.teacher, spec.teacher_ckpt or "", spec.teacher_ckpt_sha256, info)
        teacher = _finish(spec.teacher, model, "pretrained", spec.teacher_ckpt_sha256, splits, spec, device)
        if spec.eval_split == "test":  # before any student trains: a wrong class order or preprocessing shows here
            check_top1(spec.teacher, teacher.top1, published_teacher_top1(spec.dataset, spec.teacher), log)
        return teacher
    if spec.teacher_source == "checkpoint":
        path = Path(spec.teacher_ckpt or "")
        if not path.is_file():
            raise KDBenchError(f"teacher checkpoint not found: {spec.teacher_ckpt}")
        sha = file_sha256(path)
        if sha != spec.teacher_ckpt_sha256:
            raise KDBenchError(f"teacher checkpoint {path} changed since the run was planned; plan the run again")
        model = create_model(spec.teacher, **build)
        load_weights(model, read_state_dict(path), str(path), spec.teacher)
        return _finish(spec.teacher, model, "checkpoint", sha, splits, spec, device)
    return _cached_or_trained(spec, splits, device, cache_dir, progress, log, train)


def _cached_or_trained(spec: RunSpec, splits: Splits, device: torch.device, cache_dir: Path,
                       progress: ProgressFactory | None, log: Callable[[str], None], train: bool = True) -> Teacher:
    assert spec.teacher is not None
    info = splits.info
    key = teacher_key(spec)
    cache = TeacherCache(cache_dir)
    weights, meta_path = cache.weights(key), cache.meta(key)
    with cache.lock(key).held():
        cached = _read_cached(cache_dir, key, spec.teacher, info, log)
        if cached is not None:
            model, sha = cached
            return _finish(spec.teacher, model, "trained", sha, splits, spec, device)
        if not train:
            raise KDBenchError(f"the trained teacher {spec.teacher} is not in the teacher cache {cache_dir} on this "
                               "node; under torchrun on several nodes, put the results folder (or --teacher-cache) "
                               "on a file system every node shares")
        tspec = teacher_spec(spec)
        member = Member(tspec, info, None, device, train_labels=splits.labels("train"))
        total = tspec.epochs * splits.num_batches("train", tspec.batch_size)
        desc = f"teacher {spec.teacher} ({spec.dataset}, {tspec.epochs} ep)"
        bar = progress(total, desc) if progress else contextlib.nullcontext(None)
        with bar as update:
            train_members([member], splits, None, progress=update)
        if not member.active:
            raise KDBenchError(f"training the teacher {spec.teacher!r} failed: {member.error}")
        model = member.student
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        _atomic_torch_save(state, weights)
        sha = file_sha256(weights)
        teacher = _finish(spec.teacher, model, "trained", sha, splits, spec, device)
        meta = {
            "teacher": spec.teacher, "dataset": spec.dataset, "sha256": sha,
            "val_top1": member.history[-1].get("val_top1") if member.history else None,
            "spec": tspec.as_dict(), "history": member.history,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(meta_path, json.dumps(meta, indent=1, sort_keys=True, allow_nan=False) + "\n")
        return teacher


def verified_cache_sha256(cache_dir: Path, key: str) -> str | None:
    """The SHA-256 of the cache entry ``key`` if it is complete and its weights match it, else ``None``."""
    cache = TeacherCache(Path(cache_dir))
    weights, meta_path = cache.weights(key), cache.meta(key)
    try:
        expected = json.loads(meta_path.read_text())["sha256"]
        return expected if weights.is_file() and file_sha256(weights) == expected else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def teacher_cached(cache_dir: Path, key: str) -> bool:
    """Whether the teacher cache holds a complete entry for ``key`` whose weights match the recorded hash."""
    return verified_cache_sha256(cache_dir, key) is not None


def _read_cached(cache_dir: Path, key: str, name: str, info: Any,
                 log: Callable[[str], None]) -> tuple[nn.Module, str] | None:
    """The cached teacher if its files are complete and its hash matches; ``None`` (after a note) otherwise."""
    cache = TeacherCache(cache_dir)
    weights, meta_path = cache.weights(key), cache.meta(key)
    if not meta_path.is_file():
        return None
    sha = verified_cache_sha256(cache_dir, key)
    if sha is None:
        log(f"teacher checkpoint {weights.name} is missing or corrupt (unreadable entry or hash mismatch); "
            "retraining the teacher")
        return None
    model = create_model(name, num_classes=info.num_classes, in_chans=info.in_chans, image_size=info.image_size)
    try:
        load_weights(model, read_state_dict(weights), str(weights), name)
    except KDBenchError as err:
        log(f"{err}; retraining the teacher")
        return None
    return model, sha


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` written atomically (see :func:`kdbench.store.atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())
