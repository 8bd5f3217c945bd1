"""Every Hypothesis strategy of the suite, in one module.

A drawn :class:`Case` holds float64 NumPy inputs (the suite speaks NumPy at the backend
boundary), the loss keywords and the dtype under test. Its ``repr`` is valid Python, so the
"Falsifying example" Hypothesis prints can be pasted back to rerun a failure by hand.

Strategies cover: ragged lengths, masks with holes, group layouts (one group, many groups,
single-trajectory groups, arbitrary labels), extreme log-probs, positive log-densities, equal
returns, integer returns, temperatures, KL estimators, return normalizations, entropy and KL
coefficients, and dtypes. Large cases (``M`` up to 4096, ``T`` up to 8192, ``L`` down to
``-1e6``) are drawn as a recipe plus an RNG seed (:class:`BigCase`): generating millions of
floats one by one through Hypothesis would dominate the run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = [
    "BigCase",
    "Case",
    "big_cases",
    "cases",
    "dtypes",
    "group_layouts",
    "log_probs",
    "masks",
    "options",
    "padding_fills",
    "returns_arrays",
    "temperatures",
    "with_choice",
    "with_group_shifts",
    "with_permutation",
    "with_seed",
]

KL_ESTIMATORS = ("k1", "k2", "k3")
NORMALIZATIONS = ("zscore", "center", "none")

#: Batch sizes and horizons the ordinary cases are drawn from.
M_BUCKETS = (2, 3, 8)
T_BUCKETS = (1, 5, 12)

_ARRAY_FIELDS = ("logp", "mask", "returns", "group_ids", "entropy", "ref_logp")


def _arr_repr(x: np.ndarray) -> str:
    body = np.array2string(
        x, separator=", ", threshold=1_000_000, max_line_width=100, floatmode="unique"
    )
    body = body.replace("nan", "np.nan").replace("inf", "np.inf")
    return f"np.array({body}, dtype=np.{x.dtype})"


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class Case:
    """One batch: float64 NumPy inputs in the padded layout, keywords, dtype under test.

    ``mask`` False marks padding, whose ``logp``/``entropy``/``ref_logp`` values may be
    anything (NaN and inf included): a correct backend never looks at them.
    """

    logp: np.ndarray
    mask: np.ndarray | None
    returns: np.ndarray
    group_ids: np.ndarray | None = None
    entropy: np.ndarray | None = None
    ref_logp: np.ndarray | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    dtype: str = "float64"

    @property
    def m(self) -> int:
        return int(self.logp.shape[0])

    @property
    def valid(self) -> np.ndarray:
        return np.ones(self.logp.shape, bool) if self.mask is None else self.mask

    def inputs(self) -> dict[str, np.ndarray]:
        """The loss arguments that are present, by name."""
        return {k: getattr(self, k) for k in _ARRAY_FIELDS if getattr(self, k) is not None}

    def replace(self, **changes: Any) -> Case:
        return dataclasses.replace(self, **changes)

    def groups(self) -> np.ndarray:
        """Group label of each trajectory (0 for all when ``group_ids`` is None)."""
        return np.zeros(self.m, np.int64) if self.group_ids is None else self.group_ids

    def packed(self, order: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The case as packed inputs over its valid steps (taken in ``order``, a permutation
        of them, when given) and the ``[2, N]`` (row, column) position of each step."""
        rows, cols = np.nonzero(self.valid)
        if order is not None:
            rows, cols = rows[order], cols[order]
        packed = {
            "logp": self.logp[rows, cols],
            "segment_ids": rows.astype(np.int64),
            "returns": self.returns,
        }
        for key in ("entropy", "ref_logp"):
            v = getattr(self, key)
            if v is not None:
                packed[key] = v[rows, cols]
        if self.group_ids is not None:
            packed["group_ids"] = self.group_ids
        return packed, np.stack([rows, cols])

    def __repr__(self) -> str:
        return case_repr(self, [f"dtype={self.dtype!r}"], _ARRAY_FIELDS)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis prints falsifying examples with IPython-style pretty printers: give it
        # the pasteable repr (np.array(...)) rather than its generic dataclass layout.
        printer.text(repr(self))


def case_repr(case: Any, head: list[str], fields: tuple[str, ...]) -> str:
    """A pasteable repr of a case: ``Kind(head..., field=np.array(...)..., options=...)``
    over the array ``fields`` that are not None."""
    parts = list(head)
    for k in fields:
        v = getattr(case, k)
        if v is not None:
            parts.append(f"{k}={_arr_repr(v)}")
    parts.append(f"options={case.options!r}")
    return f"{type(case).__name__}(" + ", ".join(parts) + ")"


def dtypes(names: tuple[str, ...] | list[str]) -> st.SearchStrategy[str]:
    """The dtype under test, among ``names``."""
    return st.sampled_from(list(names))


def temperatures() -> st.SearchStrategy[float]:
    """``tau``: the common values and anything in [0.25, 4]."""
    return st.one_of(st.just(1.0), st.sampled_from([0.5, 2.0]), st.floats(0.25, 4.0))


def group_layouts(m: int) -> st.SearchStrategy[np.ndarray | None]:
    """``group_ids`` for ``m`` trajectories: None (one group), all equal, single-trajectory
    groups, or arbitrary (negative, sparse) integer labels."""
    labels = st.sampled_from([-7, 0, 1, 3, 1000])
    return st.one_of(
        st.none(),
        st.just(np.zeros(m, np.int64)),
        st.just(np.arange(m, dtype=np.int64)[::-1].copy()),
        hnp.arrays(np.int64, (m,), elements=labels),
    )


def _multi_group(m: int) -> st.SearchStrategy[np.ndarray]:
    """Labels that form at least two groups (``m >= 2``)."""

    def fix(ids: np.ndarray) -> np.ndarray:
        if len(np.unique(ids)) < 2:
            ids = ids.copy()
            ids[-1] = ids[0] + 5
        return ids

    return hnp.arrays(np.int64, (m,), elements=st.sampled_from([-7, 0, 3, 1000])).map(fix)


def masks(m: int, t: int) -> st.SearchStrategy[np.ndarray | None]:
    """Validity masks with at least one valid step per trajectory: None (all valid), ragged
    prefixes (right padding), left padding, or holes anywhere."""

    def ragged(lengths: list[int]) -> np.ndarray:
        return np.arange(t)[None, :] < np.asarray(lengths)[:, None]

    def left(lengths: list[int]) -> np.ndarray:
        return np.arange(t)[None, :] >= t - np.asarray(lengths)[:, None]

    def holes(bits: np.ndarray) -> np.ndarray:
        bits = bits.copy()
        bits[~bits.any(axis=1), 0] = True
        return bits

    lengths = st.lists(st.integers(1, t), min_size=m, max_size=m)
    return st.one_of(
        st.none(),
        lengths.map(ragged),
        lengths.map(left),
        hnp.arrays(np.bool_, (m, t)).map(holes),
    )


def log_probs(m: int, t: int) -> st.SearchStrategy[np.ndarray]:
    """``logp [M, T]``: likely tokens in [-1, 0] (weights far from collapse, where bugs in
    the softmax show), ordinary log-probs in [-20, 0], positive log-densities (continuous
    actions) up to 5, exact zeros, and extreme values down to -1e4."""
    ordinary = st.floats(-20.0, 0.0)
    return st.one_of(
        hnp.arrays(np.float64, (m, t), elements=st.floats(-1.0, 0.0)),
        hnp.arrays(np.float64, (m, t), elements=ordinary),
        hnp.arrays(
            np.float64,
            (m, t),
            elements=st.one_of(
                ordinary, st.floats(0.0, 5.0), st.just(0.0), st.floats(-1e4, -100.0)
            ),
        ),
    )


def padding_fills() -> st.SearchStrategy[float]:
    """What padding holds: zero, garbage, NaN or +-inf (none of it may matter)."""
    return st.sampled_from([0.0, -3.5, 1e30, float("nan"), float("inf"), float("-inf")])


def returns_arrays(m: int, group_ids: np.ndarray | None) -> st.SearchStrategy[np.ndarray]:
    """``returns [M]`` on a grid of eighths in [-50, 50] (exact in float32, so a float32
    backend sees the same returns as the float64 reference), integers, or all equal within
    each group (which must give ``R~ = 0`` exactly)."""
    grid = st.integers(-400, 400).map(lambda i: i / 8.0)
    floats = hnp.arrays(np.float64, (m,), elements=grid)
    distinct = hnp.arrays(np.float64, (m,), elements=grid, unique=True)

    def equalize(r: np.ndarray) -> np.ndarray:
        r = r.copy()
        g = np.zeros(m, np.int64) if group_ids is None else group_ids
        for label in np.unique(g):
            r[g == label] = r[g == label][0]
        return r

    # All-distinct returns first: most bugs need distinct returns in a group to show.
    return st.one_of(
        distinct,
        floats,
        hnp.arrays(np.int64, (m,), elements=st.integers(-5, 5)),
        floats.map(equalize),
    )


def options(*, regularizers: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """The seven loss keywords (coefficients 0 half of the time)."""
    coef = st.one_of(st.just(0.0), st.floats(0.01, 0.5))
    return st.fixed_dictionaries(
        {
            "entropy_coef": coef if regularizers else st.just(0.0),
            "kl_coef": coef if regularizers else st.just(0.0),
            "kl_estimator": st.sampled_from(KL_ESTIMATORS),
            "normalize_returns": st.sampled_from(NORMALIZATIONS),
            "temperature": temperatures(),
            "length_normalize": st.booleans(),
            "eps": st.just(1e-8),
        }
    )


@st.composite
def cases(
    draw: st.DrawFn,
    dtype_names: tuple[str, ...] = ("float64",),
    *,
    max_m: int = 8,
    max_t: int = 12,
    min_groups: int = 1,
    regularizers: bool = True,
) -> Case:
    """A full random batch (see the module docstring for what it covers)."""
    # Two trajectories at least: a batch of one has no policy gradient and hides most bugs
    # (one-trajectory groups, the same edge case, come from group_layouts). Shapes come from a
    # few buckets (raggedness comes from the masks): JAX and torch.compile compile once per
    # shape, so a handful of shapes keeps a run on them short.
    m = draw(st.sampled_from([v for v in M_BUCKETS if v <= max_m]))
    t = draw(st.sampled_from([v for v in T_BUCKETS if v <= max_t]))
    if min_groups > 1:
        group_ids = draw(_multi_group(m))
    else:
        group_ids = draw(group_layouts(m))
    mask = draw(masks(m, t))
    logp = draw(log_probs(m, t))
    fill = draw(padding_fills())
    valid = np.ones((m, t), bool) if mask is None else mask
    logp = np.where(valid, logp, fill)
    returns = draw(returns_arrays(m, group_ids))
    opts = draw(options(regularizers=regularizers))
    entropy = ref_logp = None
    if opts["entropy_coef"] > 0 or (regularizers and draw(st.booleans())):
        ent = draw(hnp.arrays(np.float64, (m, t), elements=st.floats(0.0, 10.0)))
        entropy = np.where(valid, ent, fill)
    if opts["kl_coef"] > 0 or (regularizers and draw(st.booleans())):
        # The reference policy stays close to the current one, as in training: r in [-3, 3].
        delta = draw(hnp.arrays(np.float64, (m, t), elements=st.floats(-3.0, 3.0)))
        ref_logp = np.where(valid, logp + delta, fill)
    return Case(
        logp=logp,
        mask=mask,
        returns=returns,
        group_ids=group_ids,
        entropy=entropy,
        ref_logp=ref_logp,
        options=opts,
        dtype=draw(dtypes(dtype_names)),
    )


@dataclasses.dataclass(frozen=True)
class BigCase:
    """A large batch given as a recipe plus an RNG seed (see :meth:`build`).

    ``kind``: ``"extreme_L"`` (``L_k`` spread over ``[-1e6, 0]``), ``"many_trajectories"``
    (``M`` up to 4096 in one group, ``L_k`` over ``[-1e6, 0]`` too) or ``"long"`` (``T`` up
    to 8192, log-probs in [-20, 0], so ``L_k`` down to about -1.6e5).
    """

    kind: str
    m: int
    t: int
    seed: int
    dtype: str = "float32"
    temperature: float = 1.0
    top: float = 0.0

    def build(self) -> Case:
        rng = np.random.default_rng(self.seed)
        m, t = self.m, self.t
        lengths = rng.integers(1, t + 1, size=m)
        lengths[0] = t
        mask = np.arange(t)[None, :] < lengths[:, None]
        if self.kind in ("extreme_L", "many_trajectories"):
            # L_k spans [-1e6, top]: one trajectory at top (the largest L, 0 or far below:
            # then every exp(L / tau) underflows unless the max is taken out first), one at
            # -1e6.
            targets = rng.uniform(-1e6, self.top, size=m)
            targets[0], targets[-1] = self.top, -1e6
            if self.dtype == "float16":
                # float16 stops at 65504: L (an output, in logp's dtype) of -1e6 cannot be
                # represented, so float16 batches keep L within [-6e4, 0].
                targets = np.maximum(targets, -6e4)
            logp = np.repeat((targets / lengths)[:, None], t, axis=1)
        else:
            low = 20.0 if self.dtype != "float16" else min(20.0, 6e4 / t)
            logp = rng.uniform(-low, 0.0, size=(m, t))
        logp = np.where(mask, logp, np.nan)
        returns = rng.integers(-8, 9, size=m).astype(np.float64) / 2.0
        return Case(
            logp=logp,
            mask=mask,
            returns=returns,
            group_ids=None,
            options={
                "entropy_coef": 0.0,
                "kl_coef": 0.0,
                "kl_estimator": "k3",
                "normalize_returns": "zscore",
                "temperature": self.temperature,
                "length_normalize": False,
                "eps": 1e-8,
            },
            dtype=self.dtype,
        )


def big_cases(dtype_names: tuple[str, ...]) -> st.SearchStrategy[BigCase]:
    """Large batches at the limits the spec promises to keep finite."""
    seed = st.integers(0, 2**32 - 1)
    dt = dtypes(dtype_names)
    tau = st.sampled_from([1.0, 0.5, 4.0])
    top = st.sampled_from([-1e3, 0.0, -1e5])

    def build(kind: str, m: list[int], t: list[int], *extra: Any) -> st.SearchStrategy[BigCase]:
        return st.builds(
            BigCase, st.just(kind), st.sampled_from(m), st.sampled_from(t), seed, dt, tau, *extra
        )

    return st.one_of(
        build("extreme_L", [2, 16, 64], [1, 16, 64], top),
        build("many_trajectories", [1024, 4096], [1, 4], top),
        build("long", [2, 4], [2048, 8192]),
    )


@st.composite
def with_permutation(draw: st.DrawFn, case_strategy: st.SearchStrategy[Case]) -> tuple:
    """A case and a permutation of its trajectories."""
    case = draw(case_strategy)
    return case, np.asarray(draw(st.permutations(range(case.m))), np.int64)


@st.composite
def with_group_shifts(draw: st.DrawFn, case_strategy: st.SearchStrategy[Case]) -> tuple:
    """A case and one constant per group (large ones included: +-800 leaves float64 exp())."""
    case = draw(case_strategy)
    n = len(np.unique(case.groups()))
    shift = st.one_of(st.sampled_from([-1000.0, -800.0, 800.0, 37.5]), st.floats(-100.0, 100.0))
    return case, np.asarray(draw(st.lists(shift, min_size=n, max_size=n)), np.float64)


def with_seed(case_strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple]:
    """A case and an RNG seed (finite-difference directions, packing orders)."""
    return st.tuples(case_strategy, st.integers(0, 2**32 - 1))


def with_choice(
    case_strategy: st.SearchStrategy[Case], choices: tuple[str, ...] | list[str]
) -> st.SearchStrategy[tuple]:
    """A case and one of ``choices`` (the kind of bad input to make of it)."""
    return st.tuples(case_strategy, st.sampled_from(list(choices)))
