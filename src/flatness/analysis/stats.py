"""Effect sizes with 95 % intervals that fit the number of seeds, and the words that judge them.

Every judgement in the book (sharper, better, no clear difference, cannot be judged) is chosen
here from an :class:`Interval`, never written by hand:

- :func:`welch` and :func:`ratio`: a difference of means (or a ratio, on the log scale) between
  two groups of seeds, with Welch's t interval (Welch 1947; the Satterthwaite degrees of
  freedom), so that 3 seeds per group get the wide interval 3 seeds deserve.
- :func:`paired_bootstrap`: a difference in test accuracy, resampling seeds within each group
  and, with the same draw for both groups, the test examples (every model is scored on the same
  examples, so the test-set noise they share cancels; Efron and Tibshirani 1993, ch. 13).
- :func:`binomial`: a proportion (e.g. how often an estimate covered the truth) with its
  Clopper-Pearson interval.

With one seed in a group, or a spread of exactly zero, an interval *cannot be judged*:
:attr:`Interval.judgeable` is false and :func:`judge` says so, rather than falling back to the
sign of the difference.

>>> iv = welch([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
>>> round(iv.estimate, 6), round(iv.df, 6), judge(iv)
(-1.0, 4.0, 'lower')
>>> judge(welch([1.0], [2.0, 2.1]))
'cannot be judged'
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from flatness.errors import FlatnessError

LEVEL = 0.95
JUDGEMENTS = ("higher", "lower", "no clear difference", "cannot be judged")


def check_seeds(seeds) -> tuple[int, ...]:
    """Seeds as a tuple of non-negative integers, refusing duplicates.

    A duplicate seed repeats a run: it would count one result twice and shrink every interval.

    Raises:
        FlatnessError: a duplicate, a non-integer or a negative seed, or no seeds at all.
    """
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        seeds = [seeds]
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise FlatnessError(f"seeds must be a list of integers, got {seeds!r}")
    out = []
    for s in seeds:
        if isinstance(s, float) and s.is_integer():
            s = int(s)
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise FlatnessError(f"seeds must be non-negative integers, got {s!r}")
        out.append(int(s))
    if not out:
        raise FlatnessError("seeds must name at least one seed")
    repeated = sorted({s for s in out if out.count(s) > 1})
    if repeated:
        raise FlatnessError(
            f"duplicate seeds {repeated}: each seed is one independent run; list each once"
        )
    return tuple(out)


@dataclass(frozen=True)
class Interval:
    """An effect (``estimate``) and its two-sided interval ``[low, high]`` at ``level``.

    ``low`` and ``high`` are NaN when the data cannot give an interval (one seed in a group,
    or no spread at all); then :attr:`judgeable` is false and :attr:`reason` says why.
    ``null`` is the value of no effect: 0 for differences, 1 for ratios.
    """

    estimate: float
    low: float
    high: float
    null: float
    method: str
    n: tuple[int, int]
    level: float = LEVEL
    df: float = math.nan
    reason: str = ""

    @property
    def judgeable(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high

    def describe(self, fmt: str = ".3g", unit: str = "") -> str:
        """``"2.1 (95 % CI 1.4 to 3.0)"``, or the estimate and why it cannot be judged."""
        if not self.judgeable:
            return f"{number(self.estimate, fmt)}{unit} ({self.reason or 'no interval'})"
        pct = round(100 * self.level)
        return (
            f"{number(self.estimate, fmt)}{unit} ({pct} % CI {number(self.low, fmt)}{unit} to "
            f"{number(self.high, fmt)}{unit})"
        )

    def short(self, fmt: str = ".3g", scale: float = 1.0) -> str:
        """``"2.1 [1.4, 3.0]"`` (the interval in brackets), or ``"2.1 (one seed)"``."""
        est = number(scale * self.estimate, fmt)
        if not self.judgeable:
            return f"{est} ({self.reason.split(':')[0] or 'no interval'})"
        return f"{est} [{number(scale * self.low, fmt)}, {number(scale * self.high, fmt)}]"


def number(value: float, fmt: str) -> str:
    """``value`` in ``fmt``, except that an exact zero reads ``0``: a signed format would write
    ``+0.00``, which a reader cannot tell from a small positive value.

    >>> number(0.0, "+.2f"), number(0.001, "+.2f"), number(0.25, "+.2f")
    ('0', '+0.00', '+0.25')
    """
    return "0" if value == 0 else f"{value:{fmt}}"


def _unjudgeable(estimate, null, method, n, reason) -> Interval:
    return Interval(float(estimate), math.nan, math.nan, null, method, n, reason=reason)


def _values(name: str, values) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    if a.size == 0:
        raise FlatnessError(f"{name}: no values")
    if not np.isfinite(a).all():
        raise FlatnessError(f"{name}: values must be finite, got {a.tolist()}")
    return a


def welch(a, b, *, level: float = LEVEL) -> Interval:
    """Mean of ``a`` minus mean of ``b`` with Welch's t interval (unequal variances).

    Args:
        a, b: one value per seed in each group (1-d, finite).
        level: coverage of the interval.

    Returns:
        An :class:`Interval` with ``null=0``; not judgeable with fewer than 2 values in a group
        or a standard error of exactly zero.
    """
    a, b = _values("a", a), _values("b", b)
    n = (a.size, b.size)
    diff = a.mean() - b.mean()
    if min(n) < 2:
        return _unjudgeable(diff, 0.0, "Welch t", n, "one seed: cannot be judged")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0.0:
        return _unjudgeable(diff, 0.0, "Welch t", n, "no spread over seeds: cannot be judged")
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = sps.t.ppf(0.5 + level / 2, df) * se
    return Interval(float(diff), diff - half, diff + half, 0.0, "Welch t", n, level, float(df))


def ratio(a, b, *, level: float = LEVEL) -> Interval:
    """Geometric mean of ``a`` over that of ``b``: Welch's interval on the logs, exponentiated.

    Hessian measures span decades and are positive, so their effects are ratios.

    Raises:
        FlatnessError: a value that is not positive.
    """
    a, b = _values("a", a), _values("b", b)
    if (a <= 0).any() or (b <= 0).any():
        raise FlatnessError("a ratio needs positive values")
    d = welch(np.log(a), np.log(b), level=level)
    return Interval(
        math.exp(d.estimate),
        math.exp(d.low) if d.judgeable else math.nan,
        math.exp(d.high) if d.judgeable else math.nan,
        1.0,
        "Welch t on logs",
        d.n,
        level,
        d.df,
        d.reason,
    )


def paired_bootstrap(
    correct_a, correct_b, *, resamples: int = 2000, level: float = LEVEL, seed: int = 0
) -> Interval:
    """Accuracy of group ``a`` minus group ``b``, paired over test examples.

    Each resample draws seeds with replacement within each group and one set of test examples
    with replacement shared by both groups; the interval is the percentile interval of the
    mean-accuracy difference. This counts both sources of noise: which seeds were run and which
    examples the test set happens to hold.

    Args:
        correct_a: ``(seeds_a, examples)`` array, 1 where a model of group ``a`` is right.
        correct_b: ``(seeds_b, examples)``, the same examples in the same order.
        resamples: bootstrap resamples.

    Raises:
        FlatnessError: arrays that are not 2-d or do not share their examples.
    """
    a = np.asarray(correct_a, dtype=float)
    b = np.asarray(correct_b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise FlatnessError(
            f"paired_bootstrap needs (seeds, examples) arrays on the same examples, got "
            f"{a.shape} and {b.shape}"
        )
    n = (a.shape[0], b.shape[0])
    diff = a.mean() - b.mean()
    if min(n) < 2:
        return _unjudgeable(diff, 0.0, "paired bootstrap", n, "one seed: cannot be judged")
    rng = np.random.default_rng(seed)
    examples = a.shape[1]
    stats = np.empty(resamples)
    chunk = max(1, 2_000_000 // examples)
    for start in range(0, resamples, chunk):
        m = min(chunk, resamples - start)
        # example weights of m bootstrap draws (multinomial counts), shared by both groups
        idx = rng.integers(0, examples, size=(m, examples))
        w = np.zeros((m, examples))
        np.add.at(w, (np.arange(m)[:, None], idx), 1.0)
        acc_a = w @ a.T / examples  # (m, seeds_a)
        acc_b = w @ b.T / examples
        pick_a = rng.integers(0, n[0], size=(m, n[0]))
        pick_b = rng.integers(0, n[1], size=(m, n[1]))
        rows = np.arange(m)[:, None]
        stats[start : start + m] = acc_a[rows, pick_a].mean(1) - acc_b[rows, pick_b].mean(1)
    low, high = np.quantile(stats, [0.5 - level / 2, 0.5 + level / 2])
    if low == high:
        return _unjudgeable(diff, 0.0, "paired bootstrap", n, "no spread: cannot be judged")
    return Interval(float(diff), float(low), float(high), 0.0, "paired bootstrap", n, level)


def binomial(successes: int, trials: int, *, level: float = LEVEL) -> Interval:
    """A proportion with its exact (Clopper-Pearson) interval; ``null`` is NaN.

    >>> iv = binomial(10, 10)
    >>> round(iv.low, 3)  # 10 of 10 is consistent with a true rate near 69 %
    0.692
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise FlatnessError(
            f"binomial needs 0 <= successes <= trials and trials >= 1, got {successes} of {trials}"
        )
    ci = sps.binomtest(successes, trials).proportion_ci(confidence_level=level, method="exact")
    return Interval(
        successes / trials, ci.low, ci.high, math.nan, "Clopper-Pearson", (trials, 0), level
    )


def points_format(interval: Interval, decimals: int = 2, scale: float = 1.0) -> str:
    """A signed fixed-point format for ``interval`` (times ``scale``) with at least
    ``decimals`` decimals and as many more (up to 6) as it takes for no end that is not zero
    to read as zero, so a reader sees on which side of 0 an interval ends.

    >>> iv = Interval(0.4, 0.004, 0.74, 0.0, "t", (3, 3))
    >>> points_format(iv)
    '+.3f'
    >>> f"{iv.low:{points_format(iv)}}"
    '+0.004'
    """
    values = [scale * v for v in (interval.estimate, interval.low, interval.high)]
    values = [v for v in values if math.isfinite(v) and v != 0.0]
    d = decimals
    while d < 6 and any(round(v, d) == 0.0 for v in values):
        d += 1
    return f"+.{d}f"


def judge(interval: Interval) -> str:
    """One of :data:`JUDGEMENTS`: above or below the null by the interval, or neither."""
    if not interval.judgeable:
        return "cannot be judged"
    if interval.low > interval.null:
        return "higher"
    if interval.high < interval.null:
        return "lower"
    return "no clear difference"
