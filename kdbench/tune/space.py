"""Search spaces: what a method declares on its ``Params`` fields, and the harness's learning rate and weight decay."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kdbench.config import dataclass_field_types

HARNESS_PARAMS = ("lr", "weight_decay")
#: how far the default search range of the learning rate and the weight decay reaches either side of the budget's
#: value (log scale)
HARNESS_RANGE_FACTOR = 10.0
#: the weight-decay range when the budget's weight decay is 0
ZERO_WEIGHT_DECAY_RANGE = (1e-5, 1e-3)
SIGNIFICANT_DIGITS = 4


@dataclass(frozen=True)
class SearchParam:
    """One searched parameter.

    Attributes:
        name: the ``Params`` field, or ``lr`` / ``weight_decay`` for the harness's own.
        kind: ``float``, ``int`` or ``categorical``.
        low: lower end of a range.
        high: upper end of a range.
        log: sample the range on a log scale.
        choices: the values of a categorical parameter.
        source: ``method`` (declared in the method file) or ``harness``.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    source: str = "method"

    def distribution(self) -> Any:
        """The Optuna distribution of this parameter."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices or ()))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def normalise(self, value: Any) -> Any:
        """A sampled value as it goes into a run: floats rounded to 4 significant digits and kept in range."""
        if self.kind != "float":
            return value
        rounded = float(f"{float(value):.{SIGNIFICANT_DIGITS}g}")
        return min(max(rounded, float(self.low)), float(self.high))

    def describe(self) -> str:
        """``temperature in [1, 8]``, ``lr in [0.005, 0.5] (log)``, ``mode in {a, b}``."""
        if self.kind == "categorical":
            return f"{self.name} in {{{', '.join(str(c) for c in self.choices or ())}}}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "")

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the study summary."""
        out = dataclasses.asdict(self)
        out["choices"] = list(self.choices) if self.choices is not None else None
        return out


def method_search_space(cls: type, fixed: Mapping[str, Any] = ()) -> list[SearchParam]:
    """The search space a method declares on its ``Params`` fields (those in ``fixed`` left out).

    Args:
        cls: a registered method class.
        fixed: parameters the spec sets to one value; they are not searched.
    """
    types_by_name = dataclass_field_types(cls.Params)
    space = []
    for f in dataclasses.fields(cls.Params):
        search = f.metadata.get("search") if f.metadata else None
        if not search or f.name in fixed:
            continue
        if "choices" in search:
            space.append(SearchParam(f.name, "categorical", choices=tuple(search["choices"])))
        else:
            kind = "int" if types_by_name[f.name] is int else "float"
            space.append(SearchParam(f.name, kind, low=search["low"], high=search["high"], log=bool(search["log"])))
    return space


def harness_search_space(budget: Mapping[str, Any], lr: Sequence[float] | None = None,
                         weight_decay: Sequence[float] | None = None) -> list[SearchParam]:
    """The learning rate and weight decay, searched for every method (``ce`` included) on a log scale.

    By default each spans a factor of :data:`HARNESS_RANGE_FACTOR` either side of the budget's value (a weight
    decay of 0 searches :data:`ZERO_WEIGHT_DECAY_RANGE`); ``lr`` / ``weight_decay`` give explicit ``[low, high]``.
    """
    base_lr, base_wd = float(budget["lr"]), float(budget["weight_decay"])
    lr_range = tuple(lr) if lr else (base_lr / HARNESS_RANGE_FACTOR, base_lr * HARNESS_RANGE_FACTOR)
    if weight_decay:
        wd_range = tuple(weight_decay)
    elif base_wd > 0:
        wd_range = (base_wd / HARNESS_RANGE_FACTOR, base_wd * HARNESS_RANGE_FACTOR)
    else:
        wd_range = ZERO_WEIGHT_DECAY_RANGE
    return [SearchParam("lr", "float", low=lr_range[0], high=lr_range[1], log=True, source="harness"),
            SearchParam("weight_decay", "float", low=wd_range[0], high=wd_range[1], log=True, source="harness")]


def describe_search_space(cls: type) -> str:
    """One line: the method's declared search space plus the harness's (for ``kdbench list methods --verbose``)."""
    own = [p.describe() for p in method_search_space(cls)]
    harness = "lr and weight decay (log, x1/10 to x10 of the budget's)"
    return ", ".join(own + [harness]) if own else f"{harness} only"
