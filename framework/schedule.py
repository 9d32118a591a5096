"""Scheduled scalars and the Updateable protocol (where annealing lives).

A scheduled scalar is either a number or ``[start_step, start_value, end_value, end_step]``:
``start_value`` up to ``start_step``, linear to ``end_value`` at ``end_step``, then constant.
``start_step == end_step`` makes a step change.
"""

from __future__ import annotations

from typing import Sequence, Union

from .errors import ConfigError

Scalar = Union[float, int, Sequence[float]]


def check_scheduled(value: Scalar, name: str) -> None:
    """Raise ConfigError if ``value`` is not a number or a well-formed 4-item schedule."""
    if isinstance(value, (int, float)):
        return
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        if value[3] < value[0]:
            raise ConfigError(
                f"Schedule {name}={list(value)} ends (step {value[3]}) before it starts (step {value[0]}); "
                f"write [start_step, start_value, end_value, end_step] with end_step >= start_step."
            )
        return
    raise ConfigError(
        f"{name}={value!r} is neither a number nor a schedule [start_step, start_value, end_value, end_step]."
    )


def scheduled(value: Scalar, step: int) -> float:
    """The value of scheduled scalar ``value`` at training step ``step``."""
    if isinstance(value, (int, float)):
        return float(value)
    start_step, start_value, end_value, end_step = value
    if step <= start_step:
        return float(start_value) if step < start_step or end_step > start_step else float(end_value)
    if step >= end_step:
        return float(end_value)
    frac = (step - start_step) / (end_step - start_step)
    return float(start_value + frac * (end_value - start_value))


class Updateable:
    """A part that changes with the training step (annealing, schedules, progressive levels).

    The system calls ``do_update_step`` on every part each step; it walks attributes (and
    ``torch.nn.Module`` children) that are themselves Updateable, then calls ``update_step``.
    """

    def update_step(self, step: int, max_steps: int) -> None:  # override in parts that anneal
        pass

    def do_update_step(self, step: int, max_steps: int, _seen: set | None = None) -> None:
        seen = _seen if _seen is not None else set()
        if id(self) in seen:
            return
        seen.add(id(self))
        for value in list(vars(self).values()) + list(getattr(self, "_modules", {}).values()):
            if isinstance(value, Updateable):
                value.do_update_step(step, max_steps, seen)
        self.update_step(step, max_steps)
