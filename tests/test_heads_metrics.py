"""Metrics against hand-computed values, and the heads' shapes, masking and padding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protrans_cli.heads.cnn import ResidueCNN
from protrans_cli.heads.fnn import ProteinFNN
from protrans_cli.heads.metrics import bootstrap_ci, confusion_matrix, evaluate, mcc, per_class
from protrans_cli.heads.tasks import IGNORE

torch.set_num_threads(1)

Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])


def test_confusion_and_per_class_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    pc = per_class(cm, "HEC")
    assert pc["H"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert pc["E"]["precision"] == pytest.approx(2 / 3) and pc["E"]["recall"] == 1.0
    assert pc["E"]["f1"] == pytest.approx(0.8)
    assert pc["C"]["f1"] == pytest.approx(2 / 3)


def test_multiclass_mcc_by_hand():
    # Gorodkin: (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) with c=4, s=6, t=(2,2,2), p=(2,3,1)
    assert mcc(confusion_matrix(Y_TRUE, Y_PRED, 3)) == pytest.approx((24 - 12) / math.sqrt((36 - 14) * (36 - 12)))


def test_two_class_mcc_equals_textbook_formula():
    tp, tn, fp, fn = 5, 3, 2, 1
    cm = np.array([[tp, fn], [fp, tn]])  # class 0 as "positive"
    textbook = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert mcc(cm) == pytest.approx(textbook)
    assert mcc(np.array([[4, 0], [0, 0]])) == 0.0  # undefined -> 0, not a crash


def test_evaluate_ignores_masked_and_reports_everything():
    y_true = [np.array([0, 0, IGNORE]), np.array([1, 1, 2, 2, IGNORE, IGNORE])]
    y_pred = [np.array([0, 1, 2]), np.array([1, 1, 2, 0, 0, 0])]
    m = evaluate(y_true, y_pred, "HEC", metric="Q3", n_boot=200)
    assert m["n"] == 6 and m["n_proteins"] == 2
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    lo, hi = m["ci95"]
    assert lo <= m["accuracy"] <= hi
    # the other convention of papers: each protein's own accuracy, averaged (1/2 and 3/4)
    assert m["accuracy_per_protein"]["mean"] == pytest.approx((1 / 2 + 3 / 4) / 2)
    assert m["accuracy_per_protein"]["std_error"] == pytest.approx(np.std([0.5, 0.75], ddof=1) / np.sqrt(2))



def test_the_per_protein_accuracy_is_the_mean_of_each_proteins_own_accuracy():
    """The papers' other convention, checked with numpy on three proteins whose own accuracies
    (1, 1/4, 0/3 of their scored residues) have a mean apart from their median and pooled one."""
    y_true = [np.array([2]), np.array([0, 0, 0, 0, IGNORE]), np.array([1, 1, 1])]
    y_pred = [np.array([2]), np.array([0, 1, 1, 1, 0]), np.array([0, 0, 0])]
    m = evaluate(y_true, y_pred, "HEC", metric="Q3", n_boot=100)
    own = np.array([1.0, 0.25, 0.0])
    assert m["accuracy"] == pytest.approx(2 / 8)
    assert m["accuracy_per_protein"]["mean"] == pytest.approx(own.mean())
    assert m["accuracy_per_protein"]["std_error"] == pytest.approx(own.std(ddof=1) / np.sqrt(3))

def test_per_protein_outputs_have_no_second_accuracy():
    """One position per protein: the mean of the proteins' accuracies is the accuracy itself."""
    m = evaluate([np.array([0]), np.array([1]), np.array([1])], [np.array([0]), np.array([0]), np.array([1])],
                 "ab", n_boot=50)
    assert m["accuracy"] == pytest.approx(2 / 3) and "accuracy_per_protein" not in m
    # per residue with one scored residue left in each protein (the rest masked): still given
    m = evaluate([np.array([0, IGNORE]), np.array([IGNORE, 1])], [np.array([0, 1]), np.array([1, 1])], "ab",
                 n_boot=50)
    assert m["accuracy_per_protein"]["mean"] == pytest.approx(1.0)


def test_bootstrap_ci_resamples_proteins():
    # every protein 70% right: any resample gives 0.7 exactly
    lo, hi = bootstrap_ci(np.full(50, 7), np.full(50, 10), n_boot=300)
    assert lo == pytest.approx(0.7) and hi == pytest.approx(0.7)
    rng = np.random.default_rng(1)
    correct = rng.binomial(100, 0.6, size=400)
    small = bootstrap_ci(correct[:40], np.full(40, 100), n_boot=500, seed=3)
    large = bootstrap_ci(correct, np.full(400, 100), n_boot=500, seed=3)
    assert large[1] - large[0] < small[1] - small[0]
    assert bootstrap_ci(correct, np.full(400, 100), n_boot=500, seed=3) == large  # seeded


def test_bootstrap_ci_is_of_the_pooled_accuracy_when_proteins_differ_in_length():
    # The CI is of the number reported, sum(correct) / sum(total) over the resampled proteins, not
    # of the mean of each protein's own accuracy: 10 long proteins all right (100 residues each),
    # 10 short ones all wrong (1 residue). Reference: plain numpy resampling of protein indices.
    correct = np.array([100] * 10 + [0] * 10)
    total = np.array([100] * 10 + [1] * 10)
    rng = np.random.default_rng(0)
    picks = rng.integers(0, 20, size=(20_000, 20))
    pooled = correct[picks].sum(1) / total[picks].sum(1)
    ref_lo, ref_hi = np.quantile(pooled, [0.025, 0.975])
    lo, hi = bootstrap_ci(correct, total, n_boot=4000, seed=1)
    assert lo == pytest.approx(ref_lo, abs=0.01) and hi == pytest.approx(ref_hi, abs=0.01)  # (steps of ~0.006 here)
    # through evaluate: the CI holds the pooled accuracy it is reported beside (1000 / 1010)
    m = evaluate([np.ones(int(n), dtype=int) for n in total],
                 [np.where(np.arange(int(n)) < c, 1, 0) for c, n in zip(correct, total)], "ab", n_boot=1000)
    assert m["accuracy"] == pytest.approx(1000 / 1010)
    assert m["ci95"][0] <= m["accuracy"] <= m["ci95"][1] and m["ci95"][0] > 0.9



def test_an_ensembles_prediction_is_the_mean_of_its_members_softmax_and_values():
    """What predict writes of an --ensemble N head: per class output the mean over members of each
    member's softmax (so the probabilities of a residue still sum to 1), per value output the mean
    of each member's z-score scaled back by the training targets' mean and std."""
    from protrans_cli.heads.model import Ensemble, build_head
    from protrans_cli.heads.tasks import Output, Task

    task = Task("mixed", "per_residue", (Output("ss", ("H", "E", "C"), "Q3"),
                                         Output("depth", (), "Spearman", kind="value", scale=(5.0, 2.0))))
    torch.manual_seed(0)
    members = [build_head(task, 8).eval() for _ in range(3)]
    x, mask = torch.randn(2, 6, 8), torch.ones(2, 6, dtype=torch.bool)
    got = Ensemble(members, task).probabilities(x, mask)
    with torch.no_grad():
        outs = [m(x, mask) for m in members]
    want_ss = torch.stack([torch.softmax(o["ss"], -1) for o in outs]).mean(0)
    want_depth = torch.stack([o["depth"] * 2.0 + 5.0 for o in outs]).mean(0)
    torch.testing.assert_close(got["ss"], want_ss)
    torch.testing.assert_close(got["ss"].sum(-1), torch.ones(2, 6))
    torch.testing.assert_close(got["depth"], want_depth)

def test_cnn_shapes_and_padding_never_changes_a_prediction():
    torch.manual_seed(0)
    model = ResidueCNN(5, {"ss3": 3, "ss8": 8}).eval()
    short = torch.randn(1, 4, 5)
    long = torch.randn(1, 11, 5)
    alone = model(short, torch.ones(1, 4, dtype=torch.bool))
    assert alone["ss3"].shape == (1, 4, 3) and alone["ss8"].shape == (1, 4, 8)
    # in a batch padded to 11 (padding filled with garbage, which the mask must neutralise)
    x = torch.full((2, 11, 5), 7.0)
    x[0, :4] = short[0]
    x[1] = long[0]
    mask = torch.zeros(2, 11, dtype=torch.bool)
    mask[0, :4] = True
    mask[1] = True
    batched = model(x, mask)
    torch.testing.assert_close(batched["ss3"][0, :4], alone["ss3"][0])
    torch.testing.assert_close(batched["ss8"][1], model(long, torch.ones(1, 11, dtype=torch.bool))["ss8"][0])


def test_cnn_is_the_prottrans_two_layer_cnn_of_kernel_7_by_a_plain_computation():
    """docs: Conv1d(D -> 32, kernel 7) + ReLU + dropout, then one Conv1d(32 -> C, kernel 7) per
    output, padding zeroed at the input and after the feature layer (a classifier of kernel 1
    read no neighbours, and every output shape stayed the same)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = ResidueCNN(5, {"ss3": 3, "ss8": 8}).eval()
    assert model.features.weight.shape == (32, 5, 7)
    assert {n: h.weight.shape for n, h in model.heads.items()} == {"ss3": (3, 32, 7), "ss8": (8, 32, 7)}
    x, mask = torch.randn(2, 9, 5), torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    keep = mask[:, None].float()  # (B, 1, L)
    h = F.relu(F.conv1d(x.transpose(1, 2) * keep, model.features.weight, model.features.bias, padding=3)) * keep
    for name, head in model.heads.items():
        expected = F.conv1d(h, head.weight, head.bias, padding=3).transpose(1, 2)  # (B, L, C)
        torch.testing.assert_close(model(x, mask)[name], expected)


def test_cnn_padding_gets_no_gradient_through_loss():
    torch.manual_seed(0)
    model = ResidueCNN(3, {"ss3": 3})
    x = torch.randn(1, 6, 3, requires_grad=True)
    mask = torch.tensor([[True, True, True, True, False, False]])
    target = torch.tensor([[0, 1, 2, 0, IGNORE, IGNORE]])
    loss = torch.nn.functional.cross_entropy(model(x, mask)["ss3"].reshape(6, 3), target.reshape(6),
                                             ignore_index=IGNORE)
    loss.backward()
    assert torch.all(x.grad[0, 4:] == 0)  # padded inputs never influence the loss


def test_cnn_rejects_even_kernel():
    with pytest.raises(ValueError):
        ResidueCNN(4, {"ss3": 3}, kernel=6)


def test_fnn_shapes_and_standardisation():
    model = ProteinFNN(4, {"loc": 10, "membrane": 2}).eval()
    out = model(torch.randn(3, 4))
    assert out["loc"].shape == (3, 10) and out["membrane"].shape == (3, 2)
    x = torch.randn(20, 4) * 0.01 + 5
    model.standardise_with(x)
    torch.testing.assert_close(((x - model.shift) / model.scale).mean(0), torch.zeros(4), atol=1e-3, rtol=0)
    torch.testing.assert_close(((x - model.shift) / model.scale).std(0), torch.ones(4), atol=1e-3, rtol=0)


def test_spearman_by_hand_with_and_without_ties():
    from protrans_cli.heads.metrics import evaluate_values, pearson, ranks, spearman

    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 4 / 120
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]  # ties share their mean rank
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # a constant side has no rank correlation (as scipy says): NaN, null in the JSON, where 0 read
    # as a measured "no correlation" and early stopping compared it
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(pearson([2, 2], [1, 3]))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    m = evaluate_values(np.array([1.0, 2.0, np.nan, 4.0]), np.array([1.5, 2.0, 9.0, 3.5]), n_boot=50)
    assert m["n"] == 3 and m["spearman"] == pytest.approx(1.0)  # the NaN target is left out
    assert m["mae"] == pytest.approx((0.5 + 0 + 0.5) / 3) and m["mse"] == pytest.approx((0.25 + 0.25) / 3)


def test_a_value_set_with_one_protein_is_reported_not_a_crash():
    """A value test set with a single labelled protein: evaluate_values returned no "ci95" and
    summary_line raised KeyError, which ended `fit` after training with a traceback."""
    from protrans_cli.heads.metrics import evaluate_values, summary_line

    m = evaluate_values(np.array([2.0, np.nan]), np.array([1.5, 9.0]), n_boot=10)
    assert m["n"] == 1 and math.isnan(m["spearman"]) and m["mse"] == 0.25 and m["mae"] == 0.5
    assert set(m) >= {"ci95", "pearson", "r2"}
    assert "too few" in summary_line("one", "value", m)


def test_evaluate_gives_the_majority_class_floor():
    """What always answering the set's most frequent class scores: a head stuck on it (CB513, a
    few epochs: E on 30 of 140,486 residues) shows it only beside this number."""
    y_true = [np.array([2, 2, 2, 0, IGNORE]), np.array([1, 2])]
    y_pred = [np.array([2, 2, 2, 2, 2]), np.array([2, 2])]
    m = evaluate(y_true, y_pred, "HEC", metric="Q3", n_boot=10)
    assert m["majority"] == {"class": "C", "accuracy": pytest.approx(4 / 6)}
    assert m["accuracy"] == m["majority"]["accuracy"]


def test_a_ci_of_one_protein_and_a_correlation_of_a_constant_target_do_not_exist():
    """One protein gave "95% CI 0.2811-0.2811"; constant targets gave Spearman 0.0 with a CI
    [0, 0]. Neither number exists: NaN (null in the JSON files), and the summary says why."""
    from protrans_cli.heads.metrics import evaluate, evaluate_values, summary_line

    one = evaluate([np.array([0, 1, 2, 2])], [np.array([0, 1, 1, 2])], ["H", "E", "C"], metric="Q3", n_boot=50)
    assert one["accuracy"] == 0.75 and all(math.isnan(v) for v in one["ci95"])
    assert summary_line("valid", "ss3", one).startswith("valid ss3: Q3 0.7500 (no CI: one protein), MCC")
    flat = evaluate_values(np.array([3.0, 3.0, 3.0]), np.array([1.0, 2.0, 4.0]), n_boot=50)
    assert math.isnan(flat["spearman"]) and all(math.isnan(v) for v in flat["ci95"]) and math.isnan(flat["pearson"])
    assert summary_line("test", "value", flat).startswith("test value: Spearman undefined (the targets or the "
                                                          "predictions are constant)")


def test_a_class_absent_from_the_set_counts_in_no_mean_and_the_floor_is_the_true_majority():
    # No true C (coil) here: balanced accuracy and macro F1 average over the classes present
    # (H 1/3 recall and E 1; F1 0.5 each), not with C's 0 dragging them to 4/9 and 1/3. The
    # majority floor is the most frequent *true* class (H, 3 of 4), not the most predicted (E).
    m = evaluate([np.array([0, 0, 0, 1])], [np.array([0, 1, 1, 1])], "HEC", metric="Q3", n_boot=50)
    assert m["accuracy"] == pytest.approx(2 / 4)
    assert m["balanced_accuracy"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["majority"] == {"class": "H", "accuracy": pytest.approx(3 / 4)}


def test_a_correlation_that_rounds_to_zero_is_printed_without_a_sign():
    """An MCC of -0.0001 (a head no better than chance) was printed "MCC -0.000"."""
    from protrans_cli.heads.metrics import _signed, summary_line

    assert [_signed(v, 3) for v in (-0.0001, -0.0, 0.0, -0.0006, 0.25, -0.25)] == \
        ["0.000", "0.000", "0.000", "-0.001", "0.250", "-0.250"]
    m = evaluate([np.array([0, 1, 2, 0, 1, 2])], [np.array([0, 1, 2, 0, 1, 2])], ["H", "E", "C"], metric="Q3",
                 n_boot=20)
    m["mcc"] = -0.0001
    assert ", MCC 0.000, " in summary_line("valid", "ss3", m)


def test_bootstrap_ci_bounds_are_the_two_tails_percentiles_of_a_plain_resampling():
    """Each bound is its own tail's percentile, (1 - level) / 2 on either side: checked against
    plain numpy resampling of protein indices, on a set whose 2.5%/5% percentiles lie apart (0.3
    standard errors; the tolerance is a tenth of one)."""
    rng = np.random.default_rng(7)
    correct = rng.binomial(100, 0.6, size=400)
    total = np.full(400, 100)
    picks = np.random.default_rng(0).integers(0, 400, size=(20_000, 400))
    pooled = correct[picks].sum(1) / total[picks].sum(1)
    se = pooled.std()
    for level in (0.95, 0.8):
        alpha = (1 - level) / 2
        ref_lo, ref_hi = np.quantile(pooled, [alpha, 1 - alpha])
        lo, hi = bootstrap_ci(correct, total, n_boot=4000, level=level, seed=1)
        assert lo == pytest.approx(ref_lo, abs=0.1 * se) and hi == pytest.approx(ref_hi, abs=0.1 * se)


def test_a_value_outputs_ci_is_spearmans_rho_over_resampled_proteins():
    """The CI beside a value output's rho, against plain resampling of protein indices with
    scipy's rank correlation (a resample of half the proteins gave a CI 1.4 times as wide)."""
    from scipy.stats import rankdata

    from protrans_cli.heads.metrics import evaluate_values

    rng = np.random.default_rng(3)
    true = rng.normal(size=60)
    pred = true + rng.normal(scale=1.0, size=60)
    picks = np.random.default_rng(0).integers(0, 60, size=(4000, 60))
    rhos = np.array([np.corrcoef(rankdata(pred[i]), rankdata(true[i]))[0, 1] for i in picks])
    ref_lo, ref_hi = np.quantile(rhos, [0.025, 0.975])
    m = evaluate_values(true, pred, n_boot=4000, seed=1)
    assert m["ci95"][0] == pytest.approx(ref_lo, abs=0.03) and m["ci95"][1] == pytest.approx(ref_hi, abs=0.03)
    assert ref_hi - ref_lo > 0.2  # (the bounds are far apart: a CI of the wrong spread cannot pass)


def test_a_standardised_fnn_reads_its_inputs_as_z_scores_of_the_training_set():
    """The FNN's forward pass sees (x - mean) / std of the training inputs: the same outputs as the
    same weights without standardisation given the z-scores computed here."""
    torch.manual_seed(0)
    train = torch.randn(30, 4) * torch.tensor([0.01, 1.0, 100.0, 3.0]) + 5
    model = ProteinFNN(4, {"loc": 10}).eval()
    plain = ProteinFNN(4, {"loc": 10}).eval()
    plain.load_state_dict(model.state_dict())
    model.standardise_with(train)
    x = torch.randn(6, 4) * 2 + 5
    z = (x - train.mean(0)) / train.std(0)
    torch.testing.assert_close(model(x)["loc"], plain(z)["loc"], rtol=1e-5, atol=1e-5)


def test_a_small_value_sets_ci_leaves_out_the_resamples_that_drew_one_value_only():
    """Five proteins: some of 400 resamples draw one protein only (no rho); the CI is of the
    others, the same resamples with scipy's rank correlation, not no CI at all."""
    from scipy.stats import rankdata

    from protrans_cli.heads.metrics import evaluate_values

    true = np.array([0.1, 0.5, 0.2, 0.9, 0.4])
    pred = np.array([0.3, 0.4, 0.1, 0.8, 0.6])
    picks = np.random.default_rng(2).integers(0, 5, size=(400, 5))  # (what evaluate_values draws, seed 2)
    rhos = np.array([np.corrcoef(rankdata(pred[i]), rankdata(true[i]))[0, 1] if np.ptp(true[i]) else np.nan
                     for i in picks])
    assert np.isnan(rhos).any()  # (the case: resamples without a rho)
    m = evaluate_values(true, pred, n_boot=400, seed=2)
    assert m["ci95"] == pytest.approx(list(np.nanquantile(rhos, [0.025, 0.975])))


def test_metrics_json_writes_infinity_as_null_as_it_does_nan():
    """A diverged epoch's loss is inf: strict JSON has no Infinity (json.dumps(allow_nan=False)
    raised), and JSON.parse, jq and R read null."""
    import json

    from protrans_cli.heads.metrics import dumps

    text = dumps({"loss": float("inf"), "ci95": [float("-inf"), 0.5], "nested": {"mse": float("nan")}}, indent=None)
    assert json.loads(text) == {"loss": None, "ci95": [None, 0.5], "nested": {"mse": None}}


# --- SOV'99 (segment overlap; Zemla, Venclovas, Fidelis & Rost, Proteins 1999) --------------------

_HEC = {"H": 0, "E": 1, "C": 2, "-": IGNORE}  # "-": a masked residue (unobserved), as the heads mask it


def _states(text: str) -> np.ndarray:
    return np.array([_HEC[c] for c in text])


def _sov(observed, predicted) -> dict:
    from protrans_cli.heads.metrics import sov99

    return sov99([_states(o) for o in observed], [_states(p) for p in predicted], "HEC")


def test_sov99_identical_is_100_and_no_overlap_is_0():
    same = _sov(["CCHHHHEEEECC", "HEC"], ["CCHHHHEEEECC", "HEC"])
    assert same["sov99_per_protein"]["mean"] == 100 and same["sov99_pooled"]["overall"] == 100
    assert same["sov99_per_protein"]["per_class"] == {"H": 100, "E": 100, "C": 100}
    # H observed [0,3), predicted [3,6); E the other way round: no pair of one state overlaps
    apart = _sov(["HHHEEE"], ["EEEHHH"])
    assert apart["sov99_per_protein"]["mean"] == 0 and apart["sov99_pooled"]["per_class"]["H"] == 0


def test_sov99_of_a_helix_predicted_as_two_fragments_by_hand():
    # observed HHHHHHHHHH: one H segment s1 = [0,10), len 10; predicted HHHHCCHHHH: [0,4) and [6,10).
    # pair 1: minov 4, maxov 10, delta = min(10-4, 4, 10//2, 4//2) = 2 -> (4+2)/10 * 10 = 6
    # pair 2: the same, 6. N(H) = 10 + 10 (s1 counted once per pair) = 20 -> SOV = 100 * 12/20 = 60,
    # where Q3 is 0.8: the fragmenting costs more than the two residues.
    m = _sov(["HHHHHHHHHH"], ["HHHHCCHHHH"])
    assert m["sov99_per_protein"]["mean"] == pytest.approx(60)
    assert m["sov99_per_protein"]["per_class"]["H"] == pytest.approx(60)
    # E and C are never observed: no SOV of their own (NaN), and none in the overall one
    assert math.isnan(m["sov99_per_protein"]["per_class"]["C"]) and math.isnan(m["sov99_pooled"]["per_class"]["E"])


def test_sov99_worked_example_by_hand():
    # observed  CCHHHHHHCC: C [0,2) len 2, H [2,8) len 6, C [8,10) len 2
    # predicted CHHHCCHHHC: C [0,1), H [1,4) len 3, C [4,6), H [6,9) len 3, C [9,10)
    # H: s1 = [2,8) with [1,4): minov 2 ([2,4)), maxov 7 ([1,8)), delta = min(5, 2, 3, 1) = 1 -> 3/7 * 6
    #    and with [6,9): minov 2 ([6,8)), maxov 7 ([2,9)), delta = min(5, 2, 3, 1) = 1 -> 3/7 * 6
    #    sum 36/7, N(H) = 6 + 6 = 12 -> SOV(H) = 100 * (36/7) / 12 = 300/7 = 42.857
    # C: [0,2) with [0,1): minov 1, maxov 2, delta = min(1, 1, 1, 0) = 0 -> 1/2 * 2 = 1
    #    [8,10) with [9,10): the same, 1 (predicted C [4,6) meets no observed C: no pair)
    #    sum 2, N(C) = 2 + 2 = 4 -> SOV(C) = 50
    # overall: 100 * (36/7 + 2) / (12 + 4) = 100 * (50/7) / 16 = 625/14 = 44.643 (Q3: 6 of 10)
    m = _sov(["CCHHHHHHCC"], ["CHHHCCHHHC"])
    assert m["sov99_per_protein"]["per_class"]["H"] == pytest.approx(300 / 7)
    assert m["sov99_per_protein"]["per_class"]["C"] == pytest.approx(50)
    assert m["sov99_per_protein"]["mean"] == pytest.approx(625 / 14)
    assert m["sov99_pooled"]["overall"] == pytest.approx(625 / 14)


def test_sov99_a_state_absent_from_the_observation_counts_only_through_the_others():
    # observed HHHHHH, predicted HHHEEE: H [0,6) with [0,3): minov 3, maxov 6, delta = min(3, 3, 3, 1)
    # = 1 -> 4/6 * 6 = 4, N(H) = 6 -> 66.67. E is never observed: no SOV(E), nothing added to N.
    m = _sov(["HHHHHH"], ["HHHEEE"])
    assert m["sov99_per_protein"]["mean"] == pytest.approx(200 / 3)
    assert math.isnan(m["sov99_per_protein"]["per_class"]["E"])


def test_sov99_masked_residues_split_segments_and_their_predictions_are_not_scored():
    # observed HHHH-HHHH (position 4 unobserved): H [0,4) and [5,9); the prediction there is left
    # out, so HHHHEHHHH and HHHHHHHHH are both H [0,4) and [5,9) too: two exact pairs, 100.
    assert _sov(["HHHH-HHHH"], ["HHHHEHHHH"])["sov99_per_protein"]["mean"] == 100
    assert _sov(["HHHH-HHHH"], ["HHHHHHHHH"])["sov99_per_protein"]["mean"] == 100
    # Had it been an observed C, the predicted H [0,9) (len 9) overlaps both: minov 4, maxov 9,
    # delta = min(5, 4, 2, 4) = 2 -> 6/9 * 4 twice = 16/3; N(H) = 8, N(C) = 1 (S': no predicted C)
    # -> 100 * (16/3) / 9 = 59.26
    assert _sov(["HHHHCHHHH"], ["HHHHHHHHH"])["sov99_per_protein"]["mean"] == pytest.approx(1600 / 27)
    # a protein with no observed residue is in neither mean
    m = _sov(["----", "HHHH"], ["HHHH", "HHHH"])
    assert m["sov99_per_protein"]["n_proteins"] == 1 and m["sov99_per_protein"]["mean"] == 100


def test_sov99_per_protein_mean_and_pooled_differ_as_documented():
    # protein 1: HHHH exact, 100 (numerator 4, N 4); protein 2: the fragmented helix above, 60 (12 of 20).
    # per protein: (100 + 60) / 2 = 80; pooled over all segments: 100 * (4 + 12) / (4 + 20) = 66.67
    m = _sov(["HHHH", "HHHHHHHHHH"], ["HHHH", "HHHHCCHHHH"])
    assert m["sov99_per_protein"]["mean"] == pytest.approx(80)
    assert m["sov99_per_protein"]["std_error"] == pytest.approx(np.std([100, 60], ddof=1) / np.sqrt(2))
    assert m["sov99_pooled"]["overall"] == pytest.approx(200 / 3)


def test_evaluate_gives_sov99_for_secondary_structure_only():
    from protrans_cli.heads.metrics import summary_line

    y_true = [_states("HHHH"), _states("HHHHHHHHHH")]
    y_pred = [_states("HHHH"), _states("HHHHCCHHHH")]
    m = evaluate(y_true, y_pred, "HEC", metric="Q3", n_boot=20)
    assert m["sov99_per_protein"]["mean"] == pytest.approx(80)
    assert m["accuracy"] == pytest.approx(12 / 14)  # (the existing keys as before)
    assert "SOV'99 80.0, " in summary_line("test", "ss3", m)
    other = evaluate(y_true, y_pred, "DOX", metric="accuracy", n_boot=20)  # (disorder, a generic task)
    assert "sov99_per_protein" not in other and "SOV" not in summary_line("test", "disorder", other)
