"""Checkpoints inside a run: everything that decides the rest of a member's training, written as it trains.

A checkpoint is one file per run (:meth:`kdbench.store.Store.checkpoint_path`), written atomically at the end of
every ``checkpoint_every`` epochs and, for long epochs, every ``checkpoint_minutes`` between two steps. It holds the
member's student, its method's parameters and buffers (adapters, memory banks, a learnt temperature, ...), both
optimisers' states (the initialisation phase's and the main one's), the position (generation, phase, epoch, step
within the epoch), the history, the running sums of the epoch in progress, the best-validation state, the timings,
the member's private random state (every rank's, under torchrun) and the states of the cohort's data and view
generators. A resumed run therefore computes what the uninterrupted run would have: on the CPU its record is the
same, bit for bit.

A checkpoint is never trusted blindly: one that cannot be read (truncated, corrupt), that belongs to another run id,
or that was written by another version of the checkpoint format, of the method or of the protocol is reported in
one line and set aside, and its run starts from its beginning. Files load with ``weights_only=True``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from kdbench import distributed
from kdbench.config import PROTOCOL_VERSION
from kdbench.models import create_model
from kdbench.store import Store, atomic_write_bytes
from kdbench.training.member import EpochStats, Member

#: bump when what a checkpoint holds changes: older checkpoints are then set aside and their runs restart
#: (2: the initialisation phase's optimiser holds every parameter ``init_trains`` names)
CHECKPOINT_FORMAT = 2


@dataclass(frozen=True, order=True)
class Position:
    """Where a member's training stands: what is done.

    Attributes:
        generation: the generation being trained (from 0).
        phase: ``init`` (the initialisation phase) or ``train``.
        epoch: epochs of the phase done.
        step: steps of the next epoch done (0 at an epoch's end).
    """

    generation: int = 0
    phase: str = "init"
    epoch: int = 0
    step: int = 0

    def key(self) -> tuple[int, int, int, int]:
        """A sortable form: generation, then the init phase before the main one, epoch, step."""
        return self.generation, 0 if self.phase == "init" else 1, self.epoch, self.step


START = Position()


@dataclass
class Resume:
    """What a checkpoint says about the shared stream, beside each member's own state.

    Attributes:
        position: where the members stand.
        data_state: the data generator's state at the start of the epoch in progress.
        view_states: each extra view's generator state at the position.
    """

    position: Position
    data_state: Tensor | None = None
    view_states: dict[str, Tensor] | None = None


def _versions(member: Member) -> dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "run_id": member.spec.run_id, "method_version": member.spec.method_version,
            "protocol_version": PROTOCOL_VERSION}


def _rng_state(member: Member) -> dict[str, Any]:
    cpu, cuda = member.rng._state
    return {"cpu": cpu, "cuda": cuda, "activations": member.rng._activations}


def _set_rng_state(member: Member, state: dict[str, Any]) -> None:
    member.rng._state = (state["cpu"], state["cuda"] if member.device.type == "cuda" else None)
    member.rng._activations = int(state["activations"])


def _cpu(value: Any) -> Any:
    """Tensors moved to the CPU, recursively (so a checkpoint loads on any device)."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu")
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cpu(v) for v in value]
    return value


def member_state(member: Member, init_optimizer: torch.optim.Optimizer | None,
                 previous: torch.nn.Module | None) -> dict[str, Any]:
    """Everything of ``member`` that decides the rest of its training (tensors on the CPU)."""
    stats = member.stats
    return _cpu({
        **_versions(member),
        "student": member.student.state_dict(), "method": member.method.state_dict(),
        "optimizer": member.optimizer.state_dict(),
        "init_optimizer": init_optimizer.state_dict() if init_optimizer is not None else None,
        "init_trains_student": member._init_trains_student,
        "previous": previous.state_dict() if previous is not None else None,
        "history": member.history, "generation_top1": member.generation_top1, "generation": member.generation,
        "stats": {"loss_sums": {k: torch.as_tensor(v) for k, v in stats.loss_sums.items()},
                  "correct": stats.correct, "seen": stats.seen, "steps": stats.steps},
        "best_val": member.best_val, "best_val_epoch": member.best_val_epoch, "best_state": member.best_state,
        "times": {"own": member.own_time_s, "shared": member.shared_time_s, "teacher": member.teacher_time_s,
                  "samples": member.samples},
    })


class Checkpoints:
    """Writes and reads the checkpoints of one cohort's members.

    Args:
        store: the results store.
        every_epochs: write at the end of every this many epochs (0: never at epoch ends).
        every_minutes: also write between two steps once this many minutes passed since the last write.
        log: where one-line notes go.
    """

    def __init__(self, store: Store, every_epochs: int = 1, every_minutes: float | None = None,
                 log: Callable[[str], None] = lambda line: None) -> None:
        self.store = store
        self.every_epochs = every_epochs
        self.every_minutes = every_minutes
        self.log = log
        self._last = time.monotonic()
        #: the initialisation optimisers of the members in that phase, by member id
        self.init_optimizers: dict[int, torch.optim.Optimizer] = {}

    @property
    def enabled(self) -> bool:
        """Whether any checkpoint is written."""
        return self.every_epochs > 0 or bool(self.every_minutes)

    def due_at_epoch_end(self, epochs_done: int, last: bool) -> bool:
        """Whether to write after ``epochs_done`` epochs of a phase (always after the last one)."""
        return self.every_epochs > 0 and (last or epochs_done % self.every_epochs == 0)

    def due_between_steps(self) -> bool:
        """Whether the time-based interval has passed."""
        return bool(self.every_minutes) and time.monotonic() - self._last >= 60 * float(self.every_minutes)

    # -- writing -----------------------------------------------------------------------------------------------

    def save(self, members: Sequence[Member], resume: Resume) -> None:
        """Write each active member's checkpoint at ``resume.position``.

        Under torchrun every rank calls it: rank 0 writes, with every rank's random state.
        """
        self._last = time.monotonic()
        for member in members:
            if not member.active:
                continue
            state = member_state(member, self.init_optimizers.get(id(member)), member.previous_student)
            rngs = distributed.gather_objects(_cpu(_rng_state(member)))
            if not distributed.is_main():
                continue
            state.update(position=asdict(resume.position), rng=rngs,
                         data_state=_cpu(resume.data_state), view_states=_cpu(resume.view_states or {}))
            buffer = io.BytesIO()
            torch.save(state, buffer)
            atomic_write_bytes(self.store.checkpoint_path(member.spec.run_id), buffer.getvalue())

    def remove(self, run_id: str) -> None:
        """Delete the checkpoint of a run whose record is written."""
        self.store.checkpoint_path(run_id).unlink(missing_ok=True)

    # -- reading -----------------------------------------------------------------------------------------------

    def read(self, member: Member) -> dict[str, Any] | None:
        """The checkpoint of ``member``'s run if there is one it can trust; ``None`` (after one line) otherwise."""
        path = self.store.checkpoint_path(member.spec.run_id)
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError("not a checkpoint")
        except Exception as err:  # noqa: BLE001 - any unreadable file is one line and a fresh start
            return self._distrust(path, f"it cannot be read ({type(err).__name__})")
        expected = _versions(member)
        for name, value in expected.items():
            if state.get(name) != value:
                return self._distrust(path, f"its {name} is {state.get(name)!r}, not {value!r}")
        return state

    def _distrust(self, path: Any, why: str) -> None:
        self.log(f"warning: checkpoint {path.name} is not this run's ({why}); the run starts from its beginning")
        if distributed.is_main():
            path.unlink(missing_ok=True)
        return None

    def restore(self, member: Member) -> Resume:
        """Load ``member``'s checkpoint into it (if it has one it can trust); where it then stands."""
        state = self.read(member)
        if state is None:
            return Resume(START)
        position = Position(**state["position"])
        if position.generation > 0:  # rebuild the generation being trained, with its teacher, the previous one
            previous = create_model(member.spec.student, num_classes=member.info.num_classes,
                                    in_chans=member.info.in_chans, image_size=member.info.image_size)
            previous.load_state_dict(state["previous"])
            member.generation = position.generation - 1
            member.student = previous.to(member.device)
            member.next_generation()
        member.student.load_state_dict(state["student"])
        member.method.load_state_dict(state["method"])
        member.optimizer.load_state_dict(state["optimizer"])
        member.generation = int(state["generation"])
        member._init_trains_student = bool(state["init_trains_student"])
        if position.phase == "init" and state["init_optimizer"] is not None:
            optimizer = member.init_optimizer()
            optimizer.load_state_dict(state["init_optimizer"])
            self.init_optimizers[id(member)] = optimizer
        member.history = list(state["history"])
        member.generation_top1 = list(state["generation_top1"])
        stats = state["stats"]
        device = member.device
        member.stats = EpochStats(loss_sums={k: v.to(device) for k, v in stats["loss_sums"].items()},
                                  correct=stats["correct"].to(device) if stats["correct"] is not None else None,
                                  seen=int(stats["seen"]), steps=int(stats["steps"]))
        member.best_val, member.best_val_epoch = state["best_val"], state["best_val_epoch"]
        member.best_state = ({k: v.to(device) for k, v in state["best_state"].items()}
                             if state["best_state"] is not None else None)
        times = state["times"]
        member.own_time_s, member.shared_time_s = float(times["own"]), float(times["shared"])
        member.teacher_time_s, member.samples = float(times["teacher"]), int(times["samples"])
        rngs = state["rng"]
        world = distributed.world()  # a world of one without torchrun
        rank = world.rank
        if len(rngs) != world.size:
            self.log(f"warning: checkpoint of {member.label} was written by {len(rngs)} process(es); resuming "
                     "with another number: its in-step randomness differs from an uninterrupted run's")
        _set_rng_state(member, rngs[min(rank, len(rngs) - 1)])
        data_state = state["data_state"]
        return Resume(position, data_state=data_state, view_states=dict(state["view_states"]))
