"""Checks of numeric arguments at the boundary (command-line flags, API arguments): finite, and in range.

Every check raises ``ValueError`` with one line naming the argument, the range and the value, so that
``nan``, ``inf`` or a value out of range is refused where it enters, not found later as a NaN loss or a
NaN checkpoint. Commands turn the ValueError into their one-line error (README "Training").
"""
import math
from typing import Optional


def check_number(name: str, value, *, minimum: Optional[float] = None, maximum: Optional[float] = None,
                 above: Optional[float] = None, below: Optional[float] = None) -> float:
    """``value`` as a float when it is a finite number within the bounds (``minimum``/``maximum`` inclusive,
    ``above``/``below`` exclusive); otherwise ValueError, one line."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    bounds = [f">= {minimum:g}" if minimum is not None else None, f"> {above:g}" if above is not None else None,
              f"<= {maximum:g}" if maximum is not None else None, f"< {below:g}" if below is not None else None]
    wanted = " and ".join(b for b in bounds if b)
    if not math.isfinite(number) or (minimum is not None and number < minimum) or (
            above is not None and number <= above) or (maximum is not None and number > maximum) or (
            below is not None and number >= below):
        raise ValueError(f"{name} must be a finite number{' ' + wanted if wanted else ''}, got {value!r}")
    return number


def check_positive(name: str, value) -> float:
    """A finite number > 0 (temperatures, learning rates, scales)."""
    return check_number(name, value, above=0)


def check_non_negative(name: str, value) -> float:
    """A finite number >= 0 (loss weights, weight decay)."""
    return check_number(name, value, minimum=0)


def check_fraction(name: str, value) -> float:
    """A finite number in [0, 1] (confidences, opacities)."""
    return check_number(name, value, minimum=0, maximum=1)


def check_count(name: str, value, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (sizes, counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value
