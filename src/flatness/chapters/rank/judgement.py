"""One judgement per candidate bound of "Is the Hessian low-rank?" (claim C6), from every test
of the chapter: the exact ranks of the small nets and SLQ's bracket on the larger one.

The rank page and the verdict page both print :attr:`Judgement.outcome` and
:attr:`Judgement.effect`, so they cannot disagree. A test counts only where it could have
failed: a bound at or above the largest rank the Hessian can have (:attr:`Architecture.ceiling
<flatness.chapters.rank.networks.Architecture.ceiling>`) holds whatever the network does, and an
SLQ bracket that straddles the bound's prediction decides nothing. Every name here is also
served by :mod:`flatness.chapters.rank`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from flatness.chapters.rank.design import BOUND_NAMES, BOUNDS

#: a bound is *nearly vacuous* where it is at least this share of the largest possible rank
#: (it can fail only in the top tenth of ranks), *vacuous* where it is at least that rank
NEARLY_VACUOUS = 0.9

#: the outcome labels, each with what it means for a bound
OUTCOMES = {
    "reproduced": "it holds in every case that could decide it",
    "partly reproduced": "it holds in at least half of the cases that could decide it and "
    "fails in the others",
    "not reproduced": "it fails in more than half of the cases that could decide it (the row "
    "says in how many it holds)",
    "inconclusive": "no test could decide it: it cannot fail on the small nets and SLQ's "
    "bracket straddles its prediction in every case",
    "cannot be judged": "there is nothing to judge it on",
}


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %"


def vacuity(bound: int, ceiling: int) -> str:
    """``"vacuous"`` where ``bound >= ceiling`` (no rank on the net can exceed it),
    ``"nearly vacuous"`` where ``bound >= NEARLY_VACUOUS * ceiling``, else ``""``."""
    if bound >= ceiling:
        return "vacuous"
    return "nearly vacuous" if bound >= NEARLY_VACUOUS * ceiling else ""


@dataclass(frozen=True)
class Judgement:
    """What every test of the chapter says about one bound.

    A case is one network, state, weight decay, seed and tolerance: an exact rank on the small
    nets, or one SLQ run of the larger net.
    """

    bound: str
    #: the bound, P and the ceiling on the small nets (exact ranks)
    value: int
    parameters: int
    ceiling: int
    exact_cases: int
    exact_failed: int
    #: the bound, P and the ceiling on the larger net (SLQ); ``None`` without SLQ cases
    large_value: int | None
    large_parameters: int | None
    large_ceiling: int | None
    slq_cases: int
    slq_failed: int
    slq_held: int

    @property
    def name(self) -> str:
        return BOUND_NAMES[self.bound]

    @property
    def vacuity(self) -> str:
        """The bound's :func:`vacuity` on the small nets."""
        return vacuity(self.value, self.ceiling)

    @property
    def failed(self) -> int:
        return self.exact_failed + self.slq_failed

    @property
    def held(self) -> int:
        """Cases that could have failed and did not."""
        exact = 0 if self.vacuity == "vacuous" else self.exact_cases - self.exact_failed
        return exact + self.slq_held

    @property
    def decided(self) -> int:
        return self.held + self.failed

    @property
    def outcome(self) -> str:
        """One of :data:`OUTCOMES`: a bound that fails in any case is never "reproduced"."""
        if self.exact_cases + self.slq_cases == 0:
            return "cannot be judged"
        if self.decided == 0:
            return "inconclusive"
        if self.failed == 0:
            return "reproduced"
        # a bound that fails in most cases is refuted, not "partly" true
        return "partly reproduced" if self.held >= self.failed else "not reproduced"

    def _exact(self) -> str:
        if not self.exact_cases:
            return "no exact cases"
        share = f"bound {self.value:,} = {_percent(self.value, self.parameters)} of P = {self.parameters:,}"
        if self.vacuity == "vacuous":
            text = (
                f"small nets: {share}, at or above the largest rank possible ({self.ceiling:,}; "
                f"vacuous), so none of {self.exact_cases} exact cases can fail"
            )
            if self.exact_failed:  # only rounding could do this
                text += f", yet {self.exact_failed} did: a numerical problem"
            return text
        nearly = f" ({self.vacuity})" if self.vacuity else ""
        return (
            f"small nets: {share}{nearly}, fails in {self.exact_failed} of {self.exact_cases} "
            "exact cases"
        )

    def _slq(self) -> str:
        if not self.slq_cases:
            return "no SLQ cases"
        undecided = self.slq_cases - self.slq_failed - self.slq_held
        nearly = vacuity(self.large_value, self.large_ceiling)
        text = (
            f"{self.large_parameters:,}-parameter net: bound {self.large_value:,} = "
            f"{_percent(self.large_value, self.large_parameters)} of P"
            + (f" ({nearly})" if nearly else "")
            + f", fails in {self.slq_failed} of {self.slq_cases} SLQ cases"
        )
        if self.slq_held:
            text += f", holds in {self.slq_held}"
        return text + (f", {undecided} undecided" if undecided else "")

    @property
    def effect(self) -> str:
        """How many deciding cases it holds in, then the exact and the SLQ counts."""
        head = (
            f"holds in {self.held} of {self.decided} cases that could decide it"
            if self.decided
            else "no case could decide it"
        )
        return f"{head}; {self._exact()}; {self._slq()}"

    def sentence(self) -> str:
        """The rank page's line for this bound: its outcome and :attr:`effect`."""
        return f"**{self.name}**: {self.outcome}; {self.effect}."


def judge(table: pd.DataFrame, cases: pd.DataFrame) -> dict[str, Judgement]:
    """Every bound's :class:`Judgement` from the exact
    :func:`~flatness.chapters.rank.tables.rank_table` (columns ``holds_<bound>``, ``<bound>``,
    ``parameters``, ``ceiling``) and SLQ's
    :func:`~flatness.chapters.rank.slq.slq_cases` (a verdict column per bound; ``attrs``
    ``parameters``, ``ceiling`` and ``bounds`` of the larger net), either of them possibly
    empty."""
    out = {}
    large = cases.attrs.get("bounds", {})
    for b in BOUNDS:
        first = table.iloc[0] if len(table) else None
        out[b] = Judgement(
            bound=b,
            value=int(first[b]) if first is not None else 0,
            parameters=int(first.parameters) if first is not None else 0,
            ceiling=int(first.ceiling) if first is not None else 0,
            exact_cases=len(table),
            exact_failed=int((~table[f"holds_{b}"].astype(bool)).sum()) if len(table) else 0,
            large_value=large.get(b),
            large_parameters=cases.attrs.get("parameters"),
            large_ceiling=cases.attrs.get("ceiling"),
            slq_cases=len(cases),
            slq_failed=int((cases[b] == "fails").sum()) if len(cases) else 0,
            slq_held=int((cases[b] == "holds").sum()) if len(cases) else 0,
        )
    return out
