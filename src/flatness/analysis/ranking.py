"""How well a measure ranks the generalisation gaps of a grid of runs: the field's statistics.

A grid is a table of runs, one row each, with a column per hyperparameter (a factorial:
every combination of levels, though cells may be missing), a ``seed`` column, the gap, and
the measures. Every statistic here is computed on the *cells* of the grid, each cell's
measure and gap averaged over its seeds, and gets a bootstrap interval over seeds: each draw
resamples, within every cell, that cell's seeds with replacement (a bootstrap stratified by
cell), and recomputes the statistic. With two seeds a cell's mean takes three values, so the
interval shows the spread the seeds can show and no more. The rank statistics' intervals are
centred on the estimate (the private ``_percentile`` says why).

- :func:`kendall_tau`: Kendall's tau-b between a measure and the gap over all cells (ties
  counted as scipy counts them, infinities included).
- :func:`granulated`: Jiang et al.'s (2020) granulated tau: for hyperparameter *i*, psi_i is
  tau over the cells that differ in *i* alone, averaged over the settings of the others, and
  Psi is the mean of the psi_i. A measure that tracks one hyperparameter, and nothing else,
  scores on that psi_i only.
- :func:`conditional_mi`: the conditional mutual information score of Jiang et al. (2020),
  scored by the NeurIPS 2020 "Predicting Generalization in Deep Learning" competition. Over
  ordered pairs of distinct cells, V_g is whether the first has the larger gap and V_mu
  whether it has the larger measure; for each set S of at most two hyperparameters, U_S is
  the pair's values of S. The score is ``min_S I(V_mu; V_g | U_S) / H(V_g | U_S)``. A measure
  that only follows a hyperparameter which also drives the gap has a high tau and a score
  near zero: conditioning on that hyperparameter leaves it nothing to tell. (The
  competition's scorer averages the cells of U_S without their weights and takes sets of
  exactly two hyperparameters only; this follows the paper's definition.)
- :func:`sign_error`: Dziugaite et al.'s (2020) sign-error on coupled runs. An environment is
  a pair of cells that differ in one hyperparameter alone; in it, each seed's run of one cell
  is coupled with the same seed's run of the other, and the sign-error is 1 where the measure
  orders the two runs' gaps wrongly, 0 where rightly, 1/2 where it ties, averaged over the
  seeds (its expectation over the environment). Environments whose mean gaps differ by less
  than ``threshold`` (the test set's noise) are left out, as they left out pairs within Monte
  Carlo noise. The robust sign-error is the worst environment's; the mean over environments
  is reported beside it. Its bootstrap resamples the seeds once for every cell, keeping the
  coupling.

>>> kendall_tau([1, 2, 3, 4], [10, 20, 40, 30])
0.6666666666666666
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flatness.analysis.stats import LEVEL, Interval
from flatness.errors import FlatnessError
from flatness.validation import as_float, as_int

#: bootstrap draws of every interval
DRAWS = 1000
#: at most this many hyperparameters are conditioned on by the conditional MI score
MAX_CONDITION = 2


def kendall_tau(x, y) -> float:
    """Kendall's tau-b of two equally long sequences; NaN where either is constant.

    Tau-b is scipy's default: ties in ``x`` or ``y`` count in neither the concordant nor the
    discordant pairs and shrink the denominator.
    """
    try:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    except (TypeError, ValueError):
        raise FlatnessError("kendall_tau needs two sequences of numbers") from None
    if x.shape != y.shape or x.ndim != 1:
        raise FlatnessError(
            f"kendall_tau needs two equally long 1-d sequences, got {x.shape}, {y.shape}"
        )
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = _signs(x[i], x[j]), _signs(y[i], y[j])
    denominator = math.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy)))
    return float((sx * sy).sum() / denominator) if denominator else math.nan


@dataclass(frozen=True)
class Ranking:
    """Every statistic of one measure on one grid, each with its bootstrap interval.

    ``psi`` maps each hyperparameter to its psi_i; ``condition`` names the hyperparameters
    whose conditioning gave the minimum of the conditional MI score (empty: none);
    ``environments`` counts the coupled pairs the sign-error was judged on (after the noise
    filter), ``cells`` and ``seeds`` the grid.
    """

    measure: str
    tau: Interval
    big_psi: Interval
    psi: dict
    cmi: Interval
    condition: tuple[str, ...]
    sign_error: Interval
    mean_sign_error: Interval
    environments: int
    cells: int
    seeds: int
    #: the cells of the full factorial (``cells`` may be fewer)
    full: int


class Grid:
    """A factorial of runs over ``hypers``, its cells and their seeds, ready for the
    statistics. Built once per grid; the statistics of many measures reuse it.

    A grid may miss cells, and a cell may hold fewer seeds than another (runs that failed, or
    never reached a stopping loss): every statistic uses the cells at hand, and ``cells``
    beside ``full`` says how many those are.

    Raises:
        FlatnessError: a missing column; no runs; a hyperparameter at one level only;
            non-finite gaps.
    """

    def __init__(self, runs: pd.DataFrame, hypers, *, gap: str = "gap", seed: str = "seed"):
        hypers = (hypers,) if isinstance(hypers, str) else tuple(hypers)
        if len(set(hypers)) != len(hypers):
            raise FlatnessError(f"the hyperparameters {list(hypers)} name one twice")
        missing = [c for c in (*hypers, gap, seed) if c not in runs.columns]
        if missing:
            raise FlatnessError(
                f"the runs have no column {missing}; they have {list(runs.columns)}"
            )
        if not hypers:
            raise FlatnessError("name at least one hyperparameter of the grid")
        if runs.empty:
            raise FlatnessError("the grid holds no runs")
        holes = [h for h in (*hypers, seed) if runs[h].isna().any()]
        if holes:
            raise FlatnessError(
                f"the columns {holes} hold missing values: every run needs its level of every "
                "hyperparameter, and its seed"
            )
        repeated = runs[runs.duplicated([*hypers, seed], keep=False)]
        if len(repeated):
            first = repeated.iloc[0]
            cell = ", ".join(f"{h}={first[h]}" for h in hypers)
            raise FlatnessError(
                f"{len(repeated)} runs repeat a cell and seed (e.g. {cell}, seed {first[seed]}): "
                "each seed of a cell is one run; list each once"
            )
        self.hypers, self.gap = hypers, gap
        self.levels = {h: sorted(runs[h].unique(), key=_order) for h in hypers}
        few = [h for h, v in self.levels.items() if len(v) < 2]
        if few:
            raise FlatnessError(f"{few} take one value only: a grid varies each hyperparameter")
        self.runs = runs.sort_values([*hypers, seed], key=lambda c: c.map(_order))
        self.runs = self.runs.reset_index(drop=True)
        groups = self.runs.groupby(list(hypers), sort=False).indices
        #: the cells that hold runs (a grid may miss some: runs that failed, or never reached
        #: a stopping loss), and how many seeds each holds
        self.cells = len(groups)
        self.full = math.prod(len(v) for v in self.levels.values())
        counts = np.array([len(rows) for rows in groups.values()])
        self.seeds = int(counts.max())
        self.counts = counts
        #: (cells, len(hypers)) integer level of each cell
        keys = [k if isinstance(k, tuple) else (k,) for k in groups]
        self.codes = np.array(
            [[self.levels[h].index(v) for h, v in zip(hypers, key, strict=True)] for key in keys]
        )
        #: (cells, seeds) row of each seed of each cell; a cell with fewer seeds repeats its own,
        #: and :attr:`counts` says how many are distinct
        self._rows = np.array([np.resize(rows, self.seeds) for rows in groups.values()], dtype=int)
        g = self._matrix(gap)
        if not np.isfinite(g).all():
            raise FlatnessError(f"the gap column {gap!r} holds NaN or infinite values")
        self.gaps = g
        n = self.cells
        self._pairs = np.array([(a, b) for a in range(n) for b in range(n) if a != b])
        self._prepare()

    def _matrix(self, column: str) -> np.ndarray:
        """(cells, seeds) values of ``column``."""
        return self.runs[column].to_numpy(dtype=float)[self._rows]

    def means(self, column: str) -> np.ndarray:
        """Each cell's mean of ``column`` over its distinct seeds.

        Raises:
            FlatnessError: an unknown column, or one with NaN, infinite or non-numeric values.
        """
        values = self.values(column)
        return np.array([v[:c].mean() for v, c in zip(values, self.counts, strict=True)])

    def values(self, column: str) -> np.ndarray:
        """(cells, seeds) values of the measure ``column``, checked (see :meth:`means`)."""
        if column not in self.runs.columns:
            raise FlatnessError(
                f"the runs have no column {column!r}; they have {list(self.runs.columns)}"
            )
        try:
            values = self._matrix(column)
        except (TypeError, ValueError):
            raise FlatnessError(
                f"the measure {column!r} holds values that are not numbers"
            ) from None
        if not np.isfinite(values).all():
            raise FlatnessError(f"the measure {column!r} holds NaN or infinite values")
        return values

    # ---- the statistics on cell means ----------------------------------------------------

    def tau(self, m: np.ndarray, g: np.ndarray) -> float:
        return kendall_tau(m, g)

    def _prepare(self) -> None:
        """Index arrays every draw reuses: the coupled pairs of each hyperparameter (with
        their group), and each conditioning set's value for every ordered pair of cells."""
        self._coupled = []  # per hyperparameter: (first cells, second cells, group ids)
        for i in range(len(self.hypers)):
            others = np.delete(self.codes, i, axis=1)
            keys = others @ _radix(others) if others.shape[1] else np.zeros(self.cells, int)
            p, q, group = [], [], []
            for gid, k in enumerate(np.unique(keys)):
                members = np.flatnonzero(keys == k)
                for x, y in itertools.combinations(members, 2):
                    p.append(x), q.append(y), group.append(gid)
            self._coupled.append((np.array(p, int), np.array(q, int), np.array(group, int)))
        a, b = self._pairs[:, 0], self._pairs[:, 1]
        self._conditions = []
        for size in range(MAX_CONDITION + 1):
            for subset in itertools.combinations(range(len(self.hypers)), size):
                _, u = np.unique(self._condition(subset, a, b), return_inverse=True)
                names = tuple(self.hypers[j] for j in subset)
                self._conditions.append((names, u.ravel(), int(u.max()) + 1 if len(u) else 1))

    def psi(self, m: np.ndarray, g: np.ndarray) -> dict[str, float]:
        out = {}
        for h, (p, q, group) in zip(self.hypers, self._coupled, strict=True):
            if not len(p):
                out[h] = math.nan
                continue
            sm, sg = np.sign(m[p] - m[q]), np.sign(g[p] - g[q])
            n = int(group.max()) + 1
            # tau-b of each group from its pairs' signs, as kendall_tau counts them
            concord = np.bincount(group, sm * sg, minlength=n)
            denominator = np.sqrt(
                np.bincount(group, sm != 0, minlength=n) * np.bincount(group, sg != 0, minlength=n)
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                taus = concord / denominator
            taus = taus[np.isfinite(taus)]
            out[h] = float(taus.mean()) if len(taus) else math.nan
        return out

    def cmi(self, m: np.ndarray, g: np.ndarray) -> tuple[float, tuple[str, ...]]:
        a, b = self._pairs[:, 0], self._pairs[:, 1]
        vg = (g[a] > g[b]).astype(int)
        vm = (m[a] > m[b]).astype(int)
        best, where = math.inf, ()
        for names, u, n in self._conditions:
            score = _conditional_score(vm, vg, u, n)
            if score < best:
                best, where = score, names
        # a gap that never changes leaves nothing to predict: the score is undefined
        return (best, where) if math.isfinite(best) else (math.nan, ())

    def _condition(self, subset, a, b) -> np.ndarray:
        if not subset:
            return np.zeros(len(a), dtype=int)
        codes = self.codes[:, list(subset)]
        cell = codes @ _radix(codes)
        return cell[a] * (cell.max() + 1) + cell[b]

    def environments(self):
        """(hyperparameter index, first cell, second cell) of every coupled pair: cells that
        differ in that hyperparameter alone, each unordered pair once."""
        return [
            (i, int(x), int(y))
            for i, (p, q, _) in enumerate(self._coupled)
            for x, y in zip(p, q, strict=True)
        ]

    def sign_errors(self, values: np.ndarray, gaps: np.ndarray, threshold: float) -> np.ndarray:
        """The expected sign-error of every coupled pair whose mean gaps differ by more than
        ``threshold``: over the seeds the two cells share (a run of one cell against the run
        of the other with the same seed, coupled as Dziugaite et al. couple networks), 1 where
        the measure orders the two runs' gaps wrongly, 0 where rightly, 1/2 where it ties.
        ``values`` and ``gaps`` are (cells, seeds) in seed order."""
        p = np.concatenate([c[0] for c in self._coupled])
        q = np.concatenate([c[1] for c in self._coupled])
        shared = np.minimum(self.counts[p], self.counts[q])
        mask = np.arange(self.seeds)[None, :] < shared[:, None]
        dg, dm = gaps[p] - gaps[q], values[p] - values[q]
        mean_gap = (dg * mask).sum(1) / shared
        errors = (1 - _signs(dm, 0.0) * _signs(dg, 0.0)) / 2
        expected = (errors * mask).sum(1) / shared
        return expected[np.abs(mean_gap) > threshold]

    # ---- the bootstrap -----------------------------------------------------------------

    def rank(
        self, measure: str, *, seed: int, draws: int = DRAWS, threshold: float = 0.0
    ) -> Ranking:
        """Every statistic of the column ``measure``, with intervals from ``draws`` resamples.

        Raises:
            FlatnessError: an unknown column, or a measure with NaN or infinite values.
        """
        values = self.values(measure)
        draws = as_int("draws", draws, minimum=1)
        seed = as_int("seed", seed, minimum=0)
        threshold = _threshold(threshold)
        rng = np.random.default_rng(seed)
        point = self._statistics(
            self.means(measure), self.means(self.gap), threshold, values, self.gaps
        )
        rows = np.arange(self.cells)[:, None]
        samples = []
        for _ in range(draws):
            # each cell resamples its own seeds, as many draws as the largest cell has
            pick = (rng.random((self.cells, self.seeds)) * self.counts[:, None]).astype(int)
            m, g = values[rows, pick].mean(1), self.gaps[rows, pick].mean(1)
            # the sign-error keeps its coupling: every cell takes the same resampled seeds
            cols = rng.integers(0, self.seeds, size=self.seeds)
            samples.append(self._statistics(m, g, threshold, values[:, cols], self.gaps[:, cols]))
        n = (self.cells, self.seeds)

        def interval(name):
            drawn = np.array([s[name] for s in samples], dtype=float)
            kind = name.split(".")[0]
            return _percentile(point[name], drawn, n, BOUNDS[kind], centred=kind in CENTRED)

        return Ranking(
            measure=measure,
            tau=interval("tau"),
            big_psi=interval("Psi"),
            psi={h: interval(f"psi.{h}") for h in self.hypers},
            cmi=interval("cmi"),
            condition=point["condition"],
            sign_error=interval("robust"),
            mean_sign_error=interval("mean"),
            environments=point["environments"],
            cells=self.cells,
            seeds=self.seeds,
            full=self.full,
        )

    def _statistics(self, m, g, threshold, values, gaps) -> dict:
        psi = self.psi(m, g)
        cmi, condition = self.cmi(m, g)
        errors = self.sign_errors(values, gaps, threshold)
        finite = [v for v in psi.values() if math.isfinite(v)]
        return {
            "tau": self.tau(m, g),
            "Psi": float(np.mean(finite)) if finite else math.nan,
            **{f"psi.{h}": v for h, v in psi.items()},
            "cmi": cmi,
            "condition": condition,
            "robust": float(errors.max()) if len(errors) else math.nan,
            "mean": float(errors.mean()) if len(errors) else math.nan,
            "environments": len(errors),
        }


def rank(
    runs: pd.DataFrame,
    measure: str,
    hypers,
    *,
    seed: int,
    gap: str = "gap",
    draws: int = DRAWS,
    threshold: float = 0.0,
) -> Ranking:
    """Every statistic of ``measure`` on the grid ``runs`` over ``hypers`` (see the module)."""
    return Grid(runs, hypers, gap=gap).rank(measure, seed=seed, draws=draws, threshold=threshold)


def granulated(runs: pd.DataFrame, measure: str, hypers, *, gap: str = "gap") -> dict[str, float]:
    """psi_i of each hyperparameter and their mean ``"Psi"``, on cell means (no interval)."""
    grid = Grid(runs, hypers, gap=gap)
    psi = grid.psi(grid.means(measure), grid.means(grid.gap))
    finite = [v for v in psi.values() if math.isfinite(v)]
    return psi | {"Psi": float(np.mean(finite)) if finite else math.nan}


def conditional_mi(
    runs: pd.DataFrame, measure: str, hypers, *, gap: str = "gap"
) -> tuple[float, tuple[str, ...]]:
    """The conditional MI score on cell means and the conditioning set that minimises it."""
    grid = Grid(runs, hypers, gap=gap)
    return grid.cmi(grid.means(measure), grid.means(grid.gap))


def sign_error(
    runs: pd.DataFrame, measure: str, hypers, *, gap: str = "gap", threshold: float = 0.0
) -> tuple[float, float, int]:
    """The robust (worst) and mean sign-error over coupled cells, and how many were judged."""
    grid = Grid(runs, hypers, gap=gap)
    errors = grid.sign_errors(grid.values(measure), grid.gaps, _threshold(threshold))
    if not len(errors):
        return math.nan, math.nan, 0
    return float(errors.max()), float(errors.mean()), len(errors)


def _threshold(value) -> float:
    value = as_float("threshold", value, minimum=0.0)
    if not math.isfinite(value):
        raise FlatnessError(f"threshold must be a finite difference of gaps, got {value}")
    return value


def _conditional_score(vm: np.ndarray, vg: np.ndarray, u: np.ndarray, n: int) -> float:
    """I(V_m; V_g | U) / H(V_g | U) in any base, from the counts of each (u, v_g, v_m); ``u``
    takes the values 0 .. n - 1."""
    counts = np.bincount(u * 4 + vg * 2 + vm, minlength=4 * n).reshape(-1, 2, 2)
    counts = counts.astype(float)
    total = counts.sum()
    p_u = counts.sum(axis=(1, 2)) / total
    with np.errstate(divide="ignore", invalid="ignore"):
        joint = counts / counts.sum(axis=(1, 2), keepdims=True)
        pg, pm = joint.sum(2, keepdims=True), joint.sum(1, keepdims=True)
        mi = np.nansum(np.where(joint > 0, joint * np.log(joint / (pg * pm)), 0.0), axis=(1, 2))
        h = -np.nansum(np.where(pg > 0, pg * np.log(pg), 0.0), axis=(1, 2))
    entropy = float((p_u * h).sum())
    return float((p_u * mi).sum() / entropy) if entropy > 0 else math.nan


def _signs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The sign of ``a - b`` by comparison, so that equal infinities tie (their difference
    is NaN) and NaN compares as neither."""
    return (a > b).astype(float) - (a < b).astype(float)


def _radix(codes: np.ndarray) -> np.ndarray:
    """Weights that turn each row of small non-negative integers into one distinct integer."""
    base = int(codes.max()) + 1 if codes.size else 1
    return base ** np.arange(codes.shape[1])


def _order(value):
    """Levels sort by number where they are numbers, else by text."""
    return (
        (0, float(value), "")
        if isinstance(value, (int, float, np.number))
        else (1, 0.0, str(value))
    )


#: the range each statistic can take, to which a centred interval is clipped
BOUNDS = {"tau": (-1, 1), "Psi": (-1, 1), "psi": (-1, 1), "cmi": (0, 1), "robust": (0, 1),
          "mean": (0, 1)}  # fmt: skip


#: the rank statistics, whose intervals are centred (:func:`_percentile`); the sign-errors'
#: are the draws' plain percentiles (their worst case is no average that noise shrinks)
CENTRED = ("tau", "Psi", "psi", "cmi")


def _percentile(
    estimate: float, drawn: np.ndarray, n, bounds=(-1, 1), *, centred: bool = True
) -> Interval:
    """The 95 % interval of the bootstrap draws, centred on ``estimate``: the distances of the
    2.5th and 97.5th percentiles from the draws' median, laid either side of the estimate.

    Why centred: a resampled cell's mean over two seeds is noisier than the mean of both, and
    noise pulls a rank statistic towards zero, so the draws' percentiles sit below the
    estimate (they can miss it). Centring keeps their spread, the seeds' say, and drops that
    shift, which is an artefact of resampling rather than a property of the grid."""
    finite = drawn[np.isfinite(drawn)]
    if not math.isfinite(estimate) or len(finite) < len(drawn) / 2:
        return Interval(
            estimate,
            math.nan,
            math.nan,
            0.0,
            "bootstrap over seeds",
            n,
            reason="undefined in the grid",
        )
    tail = 100 * (1 - LEVEL) / 2
    low, median, high = np.percentile(finite, [tail, 50, 100 - tail])
    if centred:
        low = float(np.clip(estimate - (median - low), *bounds))
        high = float(np.clip(estimate + (high - median), *bounds))
    if low == high:
        # every draw agrees (a statistic the seeds cannot move): the interval is that point
        return Interval(
            estimate,
            float(low),
            float(high),
            0.0,
            "bootstrap over seeds",
            n,
            reason="every resample gives the same value",
        )
    return Interval(estimate, float(low), float(high), 0.0, "bootstrap over seeds", n)
