"""The cohort loop: every member trained on one shared data stream with one teacher pass per batch."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from kdbench import distributed
from kdbench.data import Batch, Splits
from kdbench.training.checkpoint import START, Checkpoints, Position, Resume
from kdbench.training.evaluation import predict, to_memory_format, top1
from kdbench.training.forward import teacher_outputs
from kdbench.training.member import Member
from kdbench.training.rng import host_rngs_preserved
from kdbench.views import VIEW_AUGMENTATIONS, view_seed

ProgressHook = Callable[[int], None]


def train_members(members: Sequence[Member], splits: Splits, teacher: nn.Module | None, *,
                  progress: ProgressHook | None = None, checkpoints: Checkpoints | None = None,
                  resume: Resume | None = None) -> None:
    """Train every member for its budget on one shared data stream.

    All members share the dataset, seed, batch size and epochs (see :func:`kdbench.config.cohort_key`); each
    batch is drawn and augmented once (and each extra view any member asked for made once), the teacher runs once
    on it (logits plus the union of the stages and the embedding any member asked for), and each active member
    takes its own step. A member whose loss turns non-finite, or whose method raises, is marked failed and the
    others go on. Members whose methods have an initialisation phase run it first, together, on a data stream of
    its own (so the shared stream, and the other members' results, do not depend on it): see :func:`_init_phase`.

    Args:
        members: the cohort; members with several generations must train alone.
        splits: the dataset.
        teacher: the teacher in eval mode, or ``None`` when no member needs one.
        progress: called with the number of steps done, for a progress bar.
        checkpoints: writes the members' checkpoints as they train (``None``: none).
        resume: where the members stand, restored from their checkpoints (they all stand at the same position);
            ``None``: at the start.
    """
    if not members:
        return
    first = members[0].spec
    generations = members[0].generations
    if generations > 1 and len(members) > 1:
        raise ValueError("a member with several generations trains alone")
    eval_batch_size = max(256, first.batch_size)
    iterations = splits.num_batches("train", first.batch_size)
    resume = resume or Resume(START)
    with host_rngs_preserved():
        for generation in range(resume.position.generation, generations):
            if generation > resume.position.generation:  # a restored member stands in its generation already
                members[0].next_generation()
            here = resume if generation == resume.position.generation else Resume(Position(generation))
            # a later generation of a method that teaches itself is distilled from the one before
            taught_by = teacher if teacher is not None else members[0].previous_student
            if here.position.phase == "init":
                _init_phase([m for m in members if m.active and m.method.init_epochs > 0], splits, taught_by,
                            eval_batch_size, iterations, progress, checkpoints, here, cohort=members)
                here = Resume(Position(generation, "train"))
            _train_epochs([m for m in members if m.active], splits, taught_by, first.seed, first.epochs,
                          iterations, eval_batch_size, progress, phase="train", checkpoints=checkpoints, resume=here)
            if generations > 1 and members[0].active:
                pred = predict(members[0].student, splits, first.eval_split, eval_batch_size, amp=first.amp,
                               channels_last=first.channels_last)
                members[0].generation_top1.append(top1(pred.logits, pred.labels))


INIT_STREAM = "init"


def _init_phase(members: Sequence[Member], splits: Splits, teacher: nn.Module | None, eval_batch_size: int,
                iterations: int, progress: ProgressHook | None, checkpoints: Checkpoints | None,
                resume: Resume, cohort: Sequence[Member] = ()) -> None:
    """Run the members' initialisation phases together, on a data stream seeded apart from the shared one.

    The stream is seeded by the run seed alone, which the members of a cohort share, so every member draws the
    same batches as it would alone, and one teacher pass per batch serves them all. Each member trains its own
    ``init_epochs`` with its own optimiser over what its ``init_trains`` names, and drops out when they are done; its
    record is the one it would have trained alone.
    """
    optimizers = checkpoints.init_optimizers if checkpoints is not None else {}  # restored ones are there
    for member in members:
        try:
            if id(member) not in optimizers:
                optimizers[id(member)] = member.init_optimizer()
        except Exception as err:  # noqa: BLE001 - a method's failure is its run's failure
            member.fail(err)
    members = [m for m in members if m.active]
    if not members:
        return
    budgets = {id(m): m.method.init_epochs for m in members}
    _train_epochs(members, splits, teacher, view_seed(members[0].spec.seed, INIT_STREAM), max(budgets.values()),
                  iterations, eval_batch_size, progress, phase="init", optimizers=optimizers, budgets=budgets,
                  checkpoints=checkpoints, resume=resume, cohort=cohort)
    optimizers.clear()  # the main phase's checkpoints hold none
    for member in members:
        if member.active:
            member.end_init_phase()


def _train_epochs(members: Sequence[Member], splits: Splits, teacher: nn.Module | None, seed: int, epochs: int,
                  iterations: int, eval_batch_size: int, progress: ProgressHook | None, *, phase: str,
                  optimizers: dict[int, torch.optim.Optimizer] | None = None,
                  budgets: dict[int, int] | None = None, checkpoints: Checkpoints | None = None,
                  resume: Resume | None = None, cohort: Sequence[Member] = ()) -> None:
    """``epochs`` epochs of the members on one data stream seeded ``seed`` (the shared loop of both phases).

    ``optimizers`` maps a member's ``id`` to the optimiser of its steps (default: its own), ``budgets`` to the
    epochs it trains (default: all ``epochs``); a member whose budget is spent takes no more steps. From a
    ``resume`` position the stream's generators are set to their saved states, and the steps of the epoch in
    progress that were done already are drawn again (so the stream stays the same) but not trained. Checkpoints
    are written for the whole ``cohort`` (default: ``members``), so that members waiting for the next phase
    resume with the others.
    """
    if not members:
        return
    first = members[0].spec
    device = members[0].device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    view_names = sorted({v for m in members for v in m.method.extra_views})
    view_generators = {}
    for name in view_names:
        view_generators[name] = torch.Generator(device=device)
        view_generators[name].manual_seed(distributed.rank_seed(view_seed(seed, name)))
    position = (resume or Resume(START)).position
    generation = members[0].generation
    if resume is not None and resume.data_state is not None:
        generator.set_state(resume.data_state)
        for name, state in (resume.view_states or {}).items():
            if name in view_generators:
                view_generators[name].set_state(state)
    if progress is not None and position.epoch * iterations + position.step:
        progress(position.epoch * iterations + position.step)
    clock = StepClock(device)
    num_train = int(splits.info.sizes.get("train", 0))
    optimizers = optimizers if optimizers is not None else {}

    def save(epoch: int, step: int, data_state: torch.Tensor) -> None:
        assert checkpoints is not None
        checkpoints.save(cohort or members, Resume(Position(generation, phase, epoch, step), data_state,
                                         {n: g.get_state() for n, g in view_generators.items()}))

    for epoch in range(position.epoch, epochs):
        in_epoch = [m for m in members if budgets is None or epoch < budgets[id(m)]]
        shared_before = {id(m): m.shared_time_s + m.own_time_s for m in in_epoch}
        epoch_start = generator.get_state()
        batches = splits.train_batches(first.batch_size, generator)
        done = position.step if epoch == position.epoch else 0
        for iteration in range(iterations):
            tick = clock.mark()
            try:
                batch = next(batches)
            except StopIteration:
                break
            if iteration < done:  # trained before the interruption: drawn again, not trained
                continue
            if not splits.shards_train_batches:
                batch = Batch(*distributed.shard(batch.images, batch.labels, batch.indices))
            # under torchrun, this rank's share of the global batch (the epoch's last batch may be short)
            whole = min(first.batch_size, num_train - iteration * first.batch_size)
            weight = distributed.share_weight(len(batch.labels), whole)
            active = [m for m in in_epoch if m.active]
            if not active:
                clock.settle()
                return
            images = to_memory_format(batch.images, first.channels_last)
            wanted = sorted({v for m in active for v in m.method.extra_views})
            views = {name: to_memory_format(VIEW_AUGMENTATIONS.get(name)(batch.images, splits.info,
                                                                         view_generators[name]),
                                            first.channels_last)
                     for name in wanted}
            tock = clock.mark()
            clock.charge(tick, tock, [(m, "shared_time_s", 1 / len(active)) for m in active])
            users = [m for m in active if m.takes_teacher]
            out = None
            if teacher is not None and users:
                tick = tock
                out = teacher_outputs(teacher, images, views, users, first.amp)
                tock = clock.mark()
                clock.charge(tick, tock, [(m, name, 1 / len(users)) for m in users
                                          for name in ("teacher_time_s", "shared_time_s")])
            for m in active:
                tick = tock
                # every member but the last gets its own copy of the batch: what one edits in place, the next never
                # sees (the teacher's outputs are copied per member too, see TeacherOutput.copy_for)
                own = (lambda t: t) if m is active[-1] else torch.clone
                try:
                    m.train_step(own(images), own(batch.labels), own(batch.indices), out, epoch, iteration,
                                 iterations, views={v: own(views[v]) for v in m.method.extra_views}, phase=phase,
                                 optimizer=optimizers.get(id(m)), weight=weight)
                except Exception as err:  # noqa: BLE001 - one member's failure must not stop the others
                    m.fail(err)
                tock = clock.mark()
                clock.charge(tick, tock, [(m, "own_time_s", 1.0)])
                m.samples += len(batch.labels)
            if progress is not None:
                progress(1)
            if (checkpoints is not None and checkpoints.every_minutes and iteration % 16 == 15
                    and iteration + 1 < iterations
                    and distributed.broadcast(checkpoints.due_between_steps())):  # every rank decides alike
                save(epoch, iteration + 1, epoch_start)
        clock.settle()
        for m in in_epoch:
            if not m.active:
                continue
            try:
                spent = m.shared_time_s + m.own_time_s - shared_before[id(m)]
                m.end_epoch(epoch, splits, eval_batch_size, spent, phase=phase)
            except Exception as err:  # noqa: BLE001 - as above
                m.fail(err)
        if checkpoints is not None and checkpoints.due_at_epoch_end(epoch + 1, last=epoch + 1 == epochs):
            save(epoch + 1, 0, generator.get_state())


class StepClock:
    """Timings of the training loop without a host synchronisation per step.

    A mark is the wall clock on the CPU. On a GPU it is a CUDA event recorded on the current stream, so a span
    between two marks is the device time between them (including any time the device sat idle waiting for the
    host, e.g. for the data loader, which is charged to the span in which the host was late). Spans on a GPU are
    resolved in one synchronisation at :meth:`settle` (the cohort loop calls it at each epoch's end, and it runs by
    itself every :attr:`SETTLE_EVERY` spans so that the events of a long epoch do not pile up).

    Args:
        device: the training device.
    """

    SETTLE_EVERY = 4096

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._spans: list[tuple[Any, Any, list[tuple[Any, str, float]]]] = []

    def mark(self) -> Any:
        """A point in time: ``time.perf_counter()`` on the CPU, a recorded CUDA event on a GPU."""
        if not self._cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def charge(self, start: Any, end: Any, targets: list[tuple[Any, str, float]]) -> None:
        """Add ``weight`` times the span from ``start`` to ``end`` (seconds) to ``target.<attribute>``, for each."""
        if not self._cuda:
            _add_time(end - start, targets)
            return
        self._spans.append((start, end, targets))
        if len(self._spans) >= self.SETTLE_EVERY:
            self.settle()

    def settle(self) -> None:
        """Resolve the pending spans (on a GPU: wait for the last event once)."""
        if not self._spans:
            return
        self._spans[-1][1].synchronize()
        for start, end, targets in self._spans:
            _add_time(start.elapsed_time(end) / 1000.0, targets)
        self._spans.clear()


def _add_time(seconds: float, targets: list[tuple[Any, str, float]]) -> None:
    for target, attribute, weight in targets:
        setattr(target, attribute, getattr(target, attribute) + seconds * weight)
