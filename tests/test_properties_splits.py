"""fit's and finetune's splits of a training set, for every set (Hypothesis; see
docs/development.md): the --valid-fraction hold-out and the --folds K folds place every protein
on exactly one side or in exactly one fold, proteins of one sequence together (docs/heads.md),
the hold-out as small as that allows, folds as even as the groups allow, each class dealt over
the folds in turn, and the same --seed the same split."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from protrans_cli.errors import InputError  # noqa: E402
from protrans_cli.heads.fit import _sequence_groups, cv_folds, held_out_positions  # noqa: E402
from protrans_cli.heads.tasks import IGNORE, get_task  # noqa: E402


@st.composite
def training_sets(draw, kind="loc", missing=True):
    """Training items as fit reads them: a sequence checksum (some shared: one sequence under
    several ids), and the task's targets."""
    n = draw(st.integers(1, 60))
    if draw(st.booleans()):  # one protein a sequence
        checksums = [f"s{i}" for i in range(n)]
    else:
        n_sequences = draw(st.integers(1, n))
        checksums = [f"s{draw(st.integers(0, n_sequences - 1))}" for _ in range(n)]
    items = []
    for i, checksum in enumerate(checksums):
        if kind == "loc":
            targets = {"loc": draw(st.integers(0, 9) | st.just(IGNORE)), "membrane": draw(st.integers(0, 2))}
        else:
            values = st.floats(-5, 5) | st.just(float("nan")) if missing else st.floats(-5, 5)  # (NaN: no label)
            targets = {"value": draw(values)}
        items.append(SimpleNamespace(checksum=checksum, label_checksum=None, key=f"p{i}", targets=targets))
    return SimpleNamespace(items=items)


def _assert_groups_whole(parts: list[list[int]], train) -> None:
    side = {i: n for n, part in enumerate(parts) for i in part}
    assert sorted(side) == list(range(len(train.items))) and sum(map(len, parts)) == len(train.items)
    for checksum in {item.checksum for item in train.items}:
        group = [i for i, item in enumerate(train.items) if item.checksum == checksum]
        assert len({side[i] for i in group}) == 1, group


@given(training_sets(), st.floats(0.01, 0.9), st.integers(0, 2**32 - 1))
def test_the_hold_out_keeps_sequences_together_and_holds_out_no_more_than_it_must(train, fraction, seed):
    groups = _sequence_groups(train)
    n_valid = max(1, int(round(fraction * len(train.items))))
    valid, rest = held_out_positions(groups, n_valid, seed)
    _assert_groups_whole([valid, rest], train)
    assert len(valid) >= n_valid
    # whole groups until there are enough: without the last group drawn, too few
    largest = max(len(g) for g in groups)
    assert len(valid) - n_valid < largest
    assert held_out_positions(groups, n_valid, seed) == (valid, rest)


@given(training_sets(), st.integers(2, 6), st.integers(0, 2**32 - 1))
def test_folds_partition_by_sequence_evenly_and_deal_each_class_in_turn(train, k, seed):
    task = get_task("loc")
    config = SimpleNamespace(folds=k, seed=seed)
    groups = _sequence_groups(train)
    if len(groups) < k:
        with pytest.raises(InputError, match=f"folds={k} needs at least {k}"):
            cv_folds(config, task, train, "labels.fasta")
        return
    folds = [f.tolist() for f in cv_folds(config, task, train, "labels.fasta")]
    _assert_groups_whole(folds, train)
    assert all(folds), "a fold without a protein"
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= max(len(g) for g in groups)
    if len(groups) == len(train.items):  # one protein a sequence: each class dealt in turn
        for cls in {item.targets["loc"] for item in train.items}:
            per_fold = [sum(train.items[i].targets["loc"] == cls for i in f) for f in folds]
            assert max(per_fold) - min(per_fold) <= 1, (cls, per_fold)
    assert [f.tolist() for f in cv_folds(config, task, train, "labels.fasta")] == folds


@given(training_sets(kind="value", missing=False), st.integers(2, 5), st.integers(0, 2**32 - 1))
def test_value_folds_each_span_the_range(train, k, seed):
    task = get_task("value")
    groups = _sequence_groups(train)
    if len(groups) != len(train.items) or len(groups) < 2 * k:
        return
    values = np.array([item.targets["value"] for item in train.items])
    if np.isnan(values).any() or len(set(values.tolist())) < len(values):
        return  # (ties and missing values may be ranked either way)
    folds = cv_folds(SimpleNamespace(folds=k, seed=seed), task, train, "labels.csv")
    _assert_groups_whole([f.tolist() for f in folds], train)
    ranked = np.argsort(values)
    # every run of k neighbouring values (in order of value) has one protein in each fold
    fold_of = {int(i): n for n, f in enumerate(folds) for i in f}
    for start in range(0, len(ranked) - len(ranked) % k, k):
        run = ranked[start:start + k]
        assert sorted(fold_of[int(i)] for i in run) == list(range(k)), run
