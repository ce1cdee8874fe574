"""SOV'99 (protrans_cli/heads/metrics.py: vectorised over a whole set, each overlapping pair of
segments found as a run of agreeing residues) equals a plain reading of its definition (Zemla et
al., Proteins 1999), written here segment pair by segment pair, for any observed and predicted
states, masked residues and number of proteins (Hypothesis). Not asserted: symmetry, which SOV
does not have (observed and predicted segments play different parts)."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from protrans_cli.heads.metrics import sov99, sov99_parts  # noqa: E402
from protrans_cli.heads.tasks import IGNORE  # noqa: E402


def segments(states: list[int], state: int) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of `state` (a masked residue, -1 here, ends any run)."""
    out, start = [], None
    for i, s in enumerate(list(states) + [-1]):
        if s == state and start is None:
            start = i
        elif s != state and start is not None:
            out.append((start, i))
            start = None
    return out


def reference(observed: np.ndarray, predicted: np.ndarray, n_classes: int) -> tuple[list[float], list[float]]:
    """(numerator, N) per state of one protein, straight from the definition."""
    obs = [int(t) if t >= 0 else -1 for t in observed]
    pred = [int(p) if t >= 0 else -1 for t, p in zip(observed, predicted)]  # (not scored where masked)
    numerator, normaliser = [0.0] * n_classes, [0.0] * n_classes
    for i in range(n_classes):
        for a, b in segments(obs, i):
            pairs = [(c, d) for c, d in segments(pred, i) if c < b and a < d]
            if not pairs:  # S'(i)
                normaliser[i] += b - a
            for c, d in pairs:  # S(i)
                minov = min(b, d) - max(a, c)
                maxov = max(b, d) - min(a, c)
                delta = min(maxov - minov, minov, (b - a) // 2, (d - c) // 2)
                numerator[i] += (minov + delta) / maxov * (b - a)
                normaliser[i] += b - a
    return numerator, normaliser


@st.composite
def proteins(draw):
    """(number of states, observed, predicted): 1-4 proteins of blocky states, some masked."""
    n = draw(st.sampled_from([3, 8]))
    observed, predicted = [], []
    for _ in range(draw(st.integers(1, 4))):
        runs = draw(st.lists(st.tuples(st.integers(-1, n - 1), st.integers(1, 8)), min_size=1, max_size=8))
        obs = np.array([IGNORE if s < 0 else s for s, k in runs for _ in range(k)])
        if draw(st.booleans()):
            pred = obs.copy()
            pred[pred < 0] = 0
            for i in draw(st.lists(st.integers(0, len(obs) - 1), max_size=len(obs))):
                pred[i] = draw(st.integers(0, n - 1))
        else:
            pred = np.array(draw(st.lists(st.integers(0, n - 1), min_size=len(obs), max_size=len(obs))))
        observed.append(obs)
        predicted.append(pred)
    return n, observed, predicted


@given(proteins())
def test_sov99_equals_its_definition_pair_by_pair(case):
    n, observed, predicted = case
    numerator, normaliser = sov99_parts(observed, predicted, n)
    for k, (o, p) in enumerate(zip(observed, predicted)):
        num, norm = reference(o, p, n)
        assert numerator[k] == pytest.approx(num, abs=1e-9) and normaliser[k] == pytest.approx(norm, abs=1e-9)
    got = sov99(observed, predicted, tuple(range(n)))
    per_protein = [100 * sum(num) / sum(norm) for num, norm in (reference(o, p, n) for o, p in zip(observed, predicted))
                   if sum(norm)]
    mean = got["sov99_per_protein"]["mean"]
    if per_protein:
        assert mean == pytest.approx(np.mean(per_protein), abs=1e-9) and 0 <= mean <= 100
        assert 0 <= got["sov99_pooled"]["overall"] <= 100
    else:  # (every residue masked)
        assert math.isnan(mean) and got["sov99_per_protein"]["n_proteins"] == 0


@given(proteins())
def test_sov99_of_the_observation_itself_is_100(case):
    n, observed, _ = case
    got = sov99(observed, [np.where(o < 0, 0, o) for o in observed], tuple(range(n)))
    if got["sov99_per_protein"]["n_proteins"]:
        assert got["sov99_per_protein"]["mean"] == pytest.approx(100)
        assert got["sov99_pooled"]["overall"] == pytest.approx(100)
        assert all(math.isnan(v) or v == pytest.approx(100) for v in got["sov99_per_protein"]["per_class"].values())
