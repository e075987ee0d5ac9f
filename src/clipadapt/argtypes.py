"""Checked numeric argparse types: every int/float option of the CLI is finite and inside its documented range.

Torch-free and at the bottom layer, so the CLI parser and the `eval --method` runners (which add their own options)
both use it. `number(float, low=0, high=1)` makes a type that rejects 'nan', 'inf' and values outside [0, 1] with
argparse's usual one-line error (exit 2), and the command's `--help` shows the range (`Range.text`, appended by
`cli._conventions.HelpFormatter`). `numbers(...)` is the comma-separated list form ('1,2,4').
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval of allowed values; None = unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    @property
    def text(self) -> str:
        """'[0, 1]', '>= 1', '> 0', '(0, 1)' as shown in --help."""
        if self.low is not None and self.high is not None:
            return f"{'(' if self.low_open else '['}{_fmt(self.low)}, {_fmt(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_fmt(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_fmt(self.high)}"
        return "any finite number"


def _fmt(v: float) -> str:
    if v == 2**32 - 1:
        return "2^32-1"
    return str(int(v)) if float(v).is_integer() else repr(v)


class _Number:
    """argparse type for one finite number of `kind` inside `range`."""

    def __init__(self, kind: type, range: Range, words: dict[str, object] | None = None):
        self.kind, self.range, self.words = kind, range, dict(words or {})
        self.__name__ = kind.__name__  # argparse names the type in its messages

    @property
    def range_text(self) -> str:
        text = f"{'integer' if self.kind is int else 'number'} {self.range.text}"
        return text + "".join(f" or '{w}'" for w in self.words)

    def convert(self, text: str) -> int | float:
        word = str(text).strip().lower()
        if word in self.words:
            return self.words[word]
        expected = f"{'an integer' if self.kind is int else 'a finite number'} {self.range.text}"
        expected += "".join(f" or '{w}'" for w in self.words)
        try:
            value = self.kind(str(text).strip())
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if (self.kind is float and not math.isfinite(value)) or not self.range.contains(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    __call__ = convert

    def __repr__(self) -> str:
        return f"number({self.kind.__name__}, {self.range.text})"


class _Numbers(_Number):
    """argparse type for a comma-separated list (at least one item) of checked numbers."""

    @property
    def range_text(self) -> str:
        return f"list of {super().range_text}"

    def __call__(self, text: str) -> list:
        items = [v for v in str(text).split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return [self.convert(v) for v in items]

    def __repr__(self) -> str:
        return f"numbers({self.kind.__name__}, {self.range.text})"


def number(kind: type = float, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, words: dict[str, object] | None = None) -> _Number:
    """argparse `type=`: a finite `kind` (int or float) in [low, high] (open ends with low_open/high_open), or one of
    the `words` (lower-case; 'all' -> None), which map to their values."""
    return _Number(kind, Range(low, high, low_open, high_open), words)


def numbers(kind: type = float, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> _Numbers:
    """argparse `type=`: a comma-separated list of finite `kind` values, each in the range."""
    return _Numbers(kind, Range(low, high, low_open, high_open))


def range_text(type_: object) -> str | None:
    """The range a checked type documents (for --help), or None for any other type."""
    return getattr(type_, "range_text", None) if isinstance(type_, _Number) else None


# The ranges used across the commands, named once.
COUNT = number(int, low=1)  # batch sizes, epochs, views, chunk sizes, k, bins: at least 1
NON_NEGATIVE_INT = number(int, low=0)  # workers, epochs that may be 0
SAMPLES = number(int, low=1, words={"all": None})  # DN's unlabeled sample count; 'all' = every row
SEED = number(int, low=0, high=2**32 - 1)  # numpy's and torch's seeds
SEEDS = numbers(int, low=0, high=2**32 - 1)
COUNTS = numbers(int, low=1)  # shots
LAMBDA = number(float, low=0.0, high=1.0)  # DN's λ (docs/dn.md: 0 = plain CLIP, 1 = the whole mean)
LAMBDAS = numbers(float, low=0.0, high=1.0)
POSITIVE = number(float, low=0.0, low_open=True)  # learning rates
NON_NEGATIVE = number(float, low=0.0)  # weight decay, residual scale, costs
PROBABILITIES = numbers(float, low=0.0, high=1.0)  # confidence thresholds
NON_NEGATIVES = numbers(float, low=0.0)
DROPOUT = number(float, low=0.0, high=1.0, high_open=True)
