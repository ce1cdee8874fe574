"""The heads' metrics (written out in protrans_cli/heads/metrics.py, without sklearn) agree with
scikit-learn's and SciPy's for every set of labels and predictions (Hypothesis; see
docs/development.md): the confusion matrix, Gorodkin's MCC, per-class precision/recall/F1,
accuracy over the residues left after masking, balanced accuracy, macro F1, the majority floor,
and for value outputs Spearman's and Pearson's correlations (ties included), MSE, MAE and R^2."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

pytest.importorskip("hypothesis")
sk = pytest.importorskip("sklearn.metrics")
stats = pytest.importorskip("scipy.stats")
from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from protrans_cli.heads.metrics import (confusion_matrix, evaluate, evaluate_values, mcc,  # noqa: E402
                                        per_class)
from protrans_cli.errors import InputError  # noqa: E402
from protrans_cli.heads.tasks import IGNORE, get_task  # noqa: E402


@st.composite
def labelled(draw, min_size=1):
    """(number of classes, true classes, predicted classes) of equal length."""
    n = draw(st.integers(2, 10))
    size = draw(st.integers(min_size, 60))
    true = draw(st.lists(st.integers(0, n - 1), min_size=size, max_size=size))
    pred = draw(st.lists(st.integers(0, n - 1), min_size=size, max_size=size))
    return n, np.array(true), np.array(pred)


@given(labelled())
@example((3, np.array([0, 0, 0]), np.array([0, 0, 0])))  # one class throughout: no MCC, 0 as sklearn says
def test_confusion_mcc_and_per_class_equal_sklearns(case):
    n, true, pred = case
    labels = list(range(n))
    cm = confusion_matrix(true, pred, n)
    assert cm.tolist() == sk.confusion_matrix(true, pred, labels=labels).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (sklearn's warning of an undefined MCC, which it gives as 0)
        assert mcc(cm) == pytest.approx(sk.matthews_corrcoef(true, pred), abs=1e-12)
    precision, recall, f1, support = sk.precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    got = per_class(cm, [str(i) for i in labels])
    for i in labels:
        assert got[str(i)]["precision"] == pytest.approx(precision[i], abs=1e-12)
        assert got[str(i)]["recall"] == pytest.approx(recall[i], abs=1e-12)
        assert got[str(i)]["f1"] == pytest.approx(f1[i], abs=1e-12)
        assert got[str(i)]["support"] == support[i]


@st.composite
def proteins(draw):
    """Per-residue true and predicted classes of several proteins, some residues masked
    (IGNORE: no label), a protein masked throughout among them at times."""
    n = draw(st.integers(2, 8))
    out_true, out_pred = [], []
    for _ in range(draw(st.integers(1, 6))):
        length = draw(st.integers(2, 30))
        true = draw(st.lists(st.integers(0, n - 1) | st.just(IGNORE), min_size=length, max_size=length))
        pred = draw(st.lists(st.integers(0, n - 1), min_size=length, max_size=length))
        out_true.append(np.array(true))
        out_pred.append(np.array(pred))
    return n, out_true, out_pred


@given(proteins())
def test_evaluate_over_masked_residues_equals_sklearn_over_the_labelled_ones(case):
    n, true, pred = case
    classes = [chr(ord("A") + i) for i in range(n)]
    got = evaluate(true, pred, classes, n_boot=20)
    t = np.concatenate(true)
    p = np.concatenate(pred)
    keep = t != IGNORE
    if not keep.any():
        assert got["n"] == 0 and math.isnan(got["accuracy"])
        return
    t, p = t[keep], p[keep]
    present = sorted(set(t.tolist()))
    assert got["n"] == len(t)
    assert got["n_proteins"] == sum(bool((x != IGNORE).any()) for x in true)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(t, p), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (a predicted class no residue has)
        assert got["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(t, p), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(sk.f1_score(t, p, labels=present, average="macro", zero_division=0),
                                            abs=1e-12)
    counts = np.bincount(t, minlength=n)
    assert got["majority"] == {"class": classes[int(counts.argmax())], "accuracy": pytest.approx(counts.max() / len(t))}
    shares = [float((a[a != IGNORE] == b[a != IGNORE]).mean()) for a, b in zip(true, pred) if (a != IGNORE).any()]
    assert got["accuracy_per_protein"]["mean"] == pytest.approx(np.mean(shares), abs=1e-12)
    lo, hi = got["ci95"]
    assert (math.isnan(lo) and got["n_proteins"] == 1) or 0 <= lo <= hi <= 1


# (measured values: few distinct ones, so ties, or two decimals; not 1e-182, whose squares vanish)
values = st.lists(st.integers(-5, 5).map(float) | st.integers(-10**5, 10**5).map(lambda v: v / 100),
                  min_size=2, max_size=40)


@given(values, st.data())
@example([1.0, 1.0, 2.0], None)  # ties
@example([3.0, 3.0, 3.0], None)  # a constant target: no correlation, no R^2
@example([0.35, 0.35, 0.35], None)  # the same, with a spread of 9e-33 in floating point (was r 7.9e-17, R^2 -4e31)
def test_value_metrics_equal_scipys_and_sklearns(true, data):
    true = np.array(true)
    pred = (np.array(data.draw(st.lists(st.integers(-5, 5).map(float), min_size=len(true), max_size=len(true))))
            if data is not None else true[::-1].copy())
    got = evaluate_values(true, pred, n_boot=20)
    assert got["n"] == len(true)
    assert got["mse"] == pytest.approx(sk.mean_squared_error(true, pred), rel=1e-9, abs=1e-12)
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(true, pred), rel=1e-9, abs=1e-12)
    constant = np.ptp(true) == 0 or np.ptp(pred) == 0
    if constant:
        assert math.isnan(got["spearman"]) and math.isnan(got["pearson"])
    else:
        assert got["spearman"] == pytest.approx(stats.spearmanr(pred, true).statistic, abs=1e-9)
        assert got["pearson"] == pytest.approx(stats.pearsonr(pred, true).statistic, abs=1e-9)
    if np.ptp(true) == 0:  # (sklearn's r2_score: 1.0 or 0.0, or -4e31 for the 0.35s)
        assert math.isnan(got["r2"])
    else:
        assert got["r2"] == pytest.approx(sk.r2_score(true, pred), rel=1e-9, abs=1e-9)


@given(st.lists(st.integers(-10**4, 10**4).map(lambda v: v / 100), min_size=1, max_size=200), st.data())
@example([0.35] * 7, None)  # one value, whose standard deviation in floating point is 5.6e-17 (was the scale)
def test_value_targets_are_scaled_by_their_deviation_or_refused_when_one_value(targets, data):
    """fit and finetune train a value output on (target - mean) / std of the training targets:
    the two numbers numpy gives, and a set of one value (nothing to learn) refused, however it
    sums in floating point."""
    if data is not None and data.draw(st.booleans()):
        targets = [targets[0]] * len(targets)
    task = get_task("value")
    values = np.array(targets)
    if np.ptp(values) == 0:
        with pytest.raises(InputError, match="need at least two different values"):
            task.with_scale_from({"value": values})
    else:
        (output,) = task.with_scale_from({"value": np.append(values, np.nan)}).outputs  # (NaN: no label)
        assert output.scale == (values.mean(), values.std())
