"""Classification metrics, written out so they can be checked by hand (no sklearn).

All metrics come from one confusion matrix `cm[true, predicted]` over the evaluated positions:
accuracy (Q3/Q8/Q10/Q2), per-class precision/recall/F1, multi-class MCC (Gorodkin's R_K),
balanced accuracy (mean recall over the classes present), and a bootstrap 95% confidence interval
for the accuracy that resamples *proteins* (residues of one protein are not independent).
Secondary-structure outputs (Q3, Q8) also get the segment overlap score SOV'99 (`sov99`).
"""

from __future__ import annotations

import json
import math

import numpy as np

from protrans_cli.console import counted


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts, rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def mcc(cm: np.ndarray) -> float:
    """Gorodkin's multi-class Matthews correlation; equals the usual MCC for two classes."""
    cm = cm.astype(np.float64)
    s = cm.sum()
    c = np.trace(cm)
    t = cm.sum(axis=1)  # true counts per class
    p = cm.sum(axis=0)  # predicted counts per class
    denom = math.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denom) if denom > 0 else 0.0


def per_class(cm: np.ndarray, classes) -> dict[str, dict]:
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    out = {}
    for i, name in enumerate(classes):
        precision = tp[i] / predicted[i] if predicted[i] else 0.0
        recall = tp[i] / support[i] if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                     "support": int(support[i])}
    return out


def bootstrap_ci(correct: np.ndarray, total: np.ndarray, *, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile CI of sum(correct)/sum(total) when the units (proteins) are resampled."""
    correct = np.asarray(correct, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    n = len(correct)
    if n < 2 or total.sum() == 0:  # (one protein has no spread to resample: no CI, not [x, x])
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    # Counts of each unit in each resample, drawn in chunks to bound memory: (chunk, n).
    chunk = max(1, min(n_boot, 4_000_000 // max(n, 1)))
    done = 0
    while done < n_boot:
        m = min(chunk, n_boot - done)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=m).astype(np.float64)  # (m, n)
        denom = weights @ total
        stats[done:done + m] = np.divide(weights @ correct, denom, out=np.full(m, np.nan), where=denom > 0)
        done += m
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(stats, [alpha, 1 - alpha])
    return (float(lo), float(hi))


SOV_METRICS = ("Q3", "Q8")  # the outputs whose states form segments (secondary structure): scored by SOV'99 too


def _runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of equal values of `x`: (starts, ends, values, run index of each position)."""
    change = np.empty(len(x), dtype=bool)
    change[:1] = True
    np.not_equal(x[1:], x[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(x))
    return starts, ends, x[starts], np.cumsum(change) - 1


def sov99_parts(y_true: list[np.ndarray], y_pred: list[np.ndarray], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """SOV'99 (Zemla, Venclovas, Fidelis & Rost, Proteins 34:220, 1999) in parts: (numerator,
    normaliser), each a (proteins, n_classes) float64 array, so that SOV(i) of a protein is
    100 * numerator / normaliser and any pooling is a sum of parts.

    For state i: S(i) = the pairs (s1 observed, s2 predicted segment of state i) that overlap,
    S'(i) = the observed segments of state i that no predicted one of state i overlaps;
    normaliser N(i) = sum over S(i) of len(s1) + sum over S'(i) of len(s1); numerator = sum over
    S(i) of (minov + delta) / maxov * len(s1), with minov the overlap, maxov the span of s1 and s2
    together, delta = min(maxov - minov, minov, len(s1) // 2, len(s2) // 2).

    Residues with a negative y_true (masked: unobserved, outside CB513's segments...) are taken
    out of both strings: a segment, observed or predicted, ends at such a residue, and what is
    predicted there is not scored. A protein with no scored residue has zeros throughout.

    Vectorised over the whole set: the proteins are laid end to end with a masked residue between
    them. Each overlapping pair (s1, s2) of state i is exactly one maximal run of residues where
    observed and predicted are both i (their intersection), so the pairs are those runs."""
    n_proteins = len(y_true)
    sizes = np.array([np.size(t) for t in y_true], dtype=np.int64)
    length = int(sizes.sum()) + n_proteins
    obs = np.full(length, -1, dtype=np.int64)
    pred = np.full(length, -1, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes + 1)[:-1]]).astype(np.int64)
    for offset, t, p in zip(offsets, y_true, y_pred):
        t = np.asarray(t, dtype=np.int64).reshape(-1)
        p = np.asarray(p, dtype=np.int64).reshape(-1)
        if len(p) != len(t):
            raise ValueError(f"{len(t)} observed states, {len(p)} predicted")
        scored = t >= 0
        obs[offset:offset + len(t)] = np.where(scored, t, -1)
        pred[offset:offset + len(t)] = np.where(scored, p, -1)
    protein_of = np.repeat(np.arange(n_proteins), sizes + 1)
    numerator = np.zeros(n_proteins * n_classes)
    normaliser = np.zeros(n_proteins * n_classes)
    if not length:
        return numerator.reshape(n_proteins, n_classes), normaliser.reshape(n_proteins, n_classes)
    o_start, o_end, o_state, o_run = _runs(obs)
    p_start, p_end, _, p_run = _runs(pred)
    a_start, a_end, a_state, _ = _runs(np.where(obs == pred, obs, -1))
    pairs = a_state >= 0
    a_start, a_end = a_start[pairs], a_end[pairs]
    s1, s2 = o_run[a_start], p_run[a_start]  # the observed and the predicted segment of each pair
    len1 = o_end[s1] - o_start[s1]
    len2 = p_end[s2] - p_start[s2]
    minov = a_end - a_start
    maxov = np.maximum(o_end[s1], p_end[s2]) - np.minimum(o_start[s1], p_start[s2])
    delta = np.minimum.reduce([maxov - minov, minov, len1 // 2, len2 // 2])
    cell = protein_of[o_start] * n_classes + np.maximum(o_state, 0)  # (the cell of each observed run)
    numerator += np.bincount(cell[s1], weights=(minov + delta) / maxov * len1, minlength=len(numerator))
    # N: len(s1) once per pair it is in, or once (S') where it is in none
    observed = o_state >= 0
    in_pairs = np.bincount(s1, minlength=len(o_start))
    normaliser += np.bincount(cell[observed], weights=((o_end - o_start) * np.maximum(in_pairs, 1))[observed],
                              minlength=len(normaliser))
    return numerator.reshape(n_proteins, n_classes), normaliser.reshape(n_proteins, n_classes)


def sov99(y_true: list[np.ndarray], y_pred: list[np.ndarray], classes) -> dict:
    """SOV'99 of a set of proteins, 0-100 (the scale it is published on), two ways, as accuracy:
    "sov99_per_protein": each protein's own SOV averaged over the proteins with a scored residue
    (what published tables report: NetSurfP, SPOT-1D, CASP), with its standard error, and per state
    the mean over the proteins where that state is observed; "sov99_pooled": every segment of the
    set in one sum (N summed over all proteins). A state never observed has no SOV (NaN)."""
    numerator, normaliser = sov99_parts(y_true, y_pred, len(classes))
    with np.errstate(invalid="ignore", divide="ignore"):
        by_protein = 100 * numerator.sum(axis=1) / normaliser.sum(axis=1)
        by_state = 100 * numerator / normaliser
        pooled_state = 100 * numerator.sum(axis=0) / normaliser.sum(axis=0)
        pooled = 100 * numerator.sum() / normaliser.sum()
    scored = normaliser.sum(axis=1) > 0
    overall = by_protein[scored]

    def mean(values):
        values = values[~np.isnan(values)]
        return float(values.mean()) if len(values) else float("nan")

    return {
        "sov99_per_protein": {
            "mean": mean(overall),
            "std_error": float(overall.std(ddof=1) / np.sqrt(len(overall))) if len(overall) > 1 else float("nan"),
            "per_class": {c: mean(by_state[scored, i]) for i, c in enumerate(classes)},
            "n_proteins": int(scored.sum()),
        },
        "sov99_pooled": {"overall": float(pooled),
                         "per_class": {c: float(pooled_state[i]) for i, c in enumerate(classes)}},
    }


def evaluate(y_true: list[np.ndarray], y_pred: list[np.ndarray], classes, *, metric: str = "accuracy",
             n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics of one output over proteins: y_true[i], y_pred[i] are the i-th protein's class
    indices (arrays of residues, or one-element arrays per protein); negative y_true = not counted."""
    n = len(classes)
    flat_true, flat_pred, correct, total = [], [], [], []
    for t, p in zip(y_true, y_pred):
        t = np.atleast_1d(np.asarray(t))
        p = np.atleast_1d(np.asarray(p))
        keep = t >= 0
        if not keep.any():
            continue
        flat_true.append(t[keep])
        flat_pred.append(p[keep])
        correct.append(int((t[keep] == p[keep]).sum()))
        total.append(int(keep.sum()))
    if not total:
        return {"metric": metric, "n_proteins": 0, "n": 0, "accuracy": float("nan")}
    t_all = np.concatenate(flat_true)
    p_all = np.concatenate(flat_pred)
    cm = confusion_matrix(t_all, p_all, n)
    recalls = [v["recall"] for v in per_class(cm, classes).values() if v["support"] > 0]
    lo, hi = bootstrap_ci(np.array(correct), np.array(total), n_boot=n_boot, seed=seed)
    classes_metrics = per_class(cm, classes)
    out = {
        "metric": metric,
        "accuracy": float(np.trace(cm) / cm.sum()),
        "ci95": [lo, hi],
        "n_proteins": len(total),
        "n": int(cm.sum()),
        "mcc": mcc(cm),
        "balanced_accuracy": float(np.mean(recalls)),
        "macro_f1": float(np.mean([v["f1"] for v in classes_metrics.values() if v["support"] > 0])),
        # what always answering the set's most frequent class scores: the floor a head must beat
        # (a head that learned nothing sits there, whatever its accuracy looks like)
        "majority": {"class": classes[int(cm.sum(axis=1).argmax())],
                     "accuracy": float(cm.sum(axis=1).max() / cm.sum())},
        "per_class": classes_metrics,
        "classes": list(classes),
        "confusion": cm.tolist(),
    }
    if any(np.size(t) > 1 for t in y_true):  # (per residue: arrays of residues, masked or not)
        # Per-residue outputs: "accuracy" pools every residue of the set (NetSurfP-2.0's and
        # TAPE's Q3); some papers average each protein's own accuracy instead, which weighs a
        # short protein as much as a long one. Both, so that either convention compares.
        share = np.array(correct) / np.array(total)
        out["accuracy_per_protein"] = {"mean": float(share.mean()),
                                       "std_error": float(share.std(ddof=1) / np.sqrt(len(share)))
                                       if len(share) > 1 else float("nan")}
        if metric in SOV_METRICS:  # (secondary structure: segments, scored by SOV'99 beside Q3/Q8)
            out.update(sov99(y_true, y_pred, classes))
    return out


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (what Spearman's rho needs)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(1, len(x) + 1)
    values, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    for start, count in zip(first[counts > 1], counts[counts > 1]):
        r[order[start:start + count]] = start + (count + 1) / 2
    return r


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    # A constant side has no correlation at all: NaN, as scipy says, not a measured 0. Told by
    # its values, not by its spread: [0.35, 0.35, 0.35] less its mean in floating point is
    # 5.6e-17 each, and r came out 7.9e-17.
    if not len(x) or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    x = x - np.mean(x)
    y = y - np.mean(y)
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the (tie-averaged) ranks; NaN when either side is constant."""
    return pearson(ranks(x), ranks(y))


def evaluate_values(y_true: np.ndarray, y_pred: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95) -> dict:
    """Regression metrics over proteins (NaN y_true = not counted): Spearman's rho (the headline,
    as FLIP reports), its bootstrap CI over proteins, Pearson's r, MSE, MAE and R^2."""
    t = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    keep = ~np.isnan(t)
    t, p = t[keep], p[keep]
    n = len(t)
    if n < 2:
        # Too few for a correlation; every key of a full result all the same (NaN where undefined):
        # without "ci95" the summary line raised a KeyError after the whole fit had been trained.
        nan = float("nan")
        residual = p - t
        return {"kind": "value", "metric": "Spearman", "spearman": nan, "ci95": [nan, nan], "pearson": nan,
                "mse": float(np.mean(residual ** 2)) if n else nan, "mae": float(np.mean(np.abs(residual))) if n else nan,
                "r2": nan, "n": int(n), "n_proteins": int(n)}
    rho = spearman(p, t)
    lo = hi = np.nan  # (no rho, a constant side: no CI either)
    if not math.isnan(rho):
        rng = np.random.default_rng(seed)
        stats = np.array([spearman(p[i], t[i]) for i in rng.integers(0, n, size=(n_boot, n))])
        alpha = (1 - level) / 2
        # (resamples drawing one value only have no rho; none with one: no CI)
        if (~np.isnan(stats)).any():
            lo, hi = np.nanquantile(stats, [alpha, 1 - alpha])
    residual = p - t
    nan_ = float("nan")
    return {"kind": "value", "metric": "Spearman", "spearman": rho, "ci95": [float(lo), float(hi)],
            "pearson": pearson(p, t), "mse": float(np.mean(residual ** 2)), "mae": float(np.mean(np.abs(residual))),
            # (a constant target has no R^2: it was 1 - x / 1e-300, about -1e300; and a constant
            # target of 0.35s, whose spread in floating point is 9e-33, -4e31)
            "r2": float(1 - np.sum(residual ** 2) / spread)
            if np.ptp(t) > 0 and (spread := np.sum((t - t.mean()) ** 2)) > 0 else nan_,
            "n": int(n), "n_proteins": int(n)}


def _signed(value: float, digits: int) -> str:
    """`value` to `digits` places, a value that rounds to zero without a sign (MCC -0.0001 was
    printed "-0.000")."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def summary_line(name: str, output: str, m: dict) -> str:
    if not m.get("n"):
        return f"{name} {output}: nothing to evaluate"
    if m.get("kind") == "value" and m["n"] < 2:
        return f"{name} {output}: 1 protein with a value, too few for Spearman's rho"
    lo, hi = m["ci95"]
    ci = f"95% CI {lo:.4f}-{hi:.4f}" if not (math.isnan(lo) or math.isnan(hi)) else "no CI: one protein"
    if m.get("kind") == "value":
        if math.isnan(m["spearman"]):
            return (f"{name} {output}: Spearman undefined (the targets or the predictions are constant), "
                    f"MSE {m['mse']:.4g}, MAE {m['mae']:.4g}, {counted(m['n'], 'protein')}")
        return (f"{name} {output}: Spearman {m['spearman']:.4f} ({ci}), Pearson {_signed(m['pearson'], 3)}, "
                f"MSE {m['mse']:.4g}, MAE {m['mae']:.4g}, {counted(m['n'], 'protein')}")
    return (f"{name} {output}: {m['metric']} {m['accuracy']:.4f} ({ci}), MCC {_signed(m['mcc'], 3)}, "
            f"balanced accuracy {m['balanced_accuracy']:.3f}, "
            + (f"SOV'99 {sov:.1f}, " if not math.isnan(sov := m.get("sov99_per_protein", {}).get("mean", math.nan))
               else "")
            + (counted(m['n'], 'protein') if m["n"] == m["n_proteins"]  # per protein: one position each
               else f"{m['n']:,} positions in {counted(m['n_proteins'], 'protein')}"))



def print_report(name: str, output: str, m: dict) -> None:
    """Per-class table and confusion matrix on stderr (rich)."""
    from protrans_cli import console

    if not m.get("n") or m.get("kind") == "value":
        return
    rows = [[c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
            for c, v in m["per_class"].items()]
    columns = ["class", "precision", "recall", "F1", "support"]
    if "sov99_per_protein" in m:  # (secondary structure: each state's SOV'99, averaged over the proteins it is in)
        sov = m["sov99_per_protein"]["per_class"]
        rows = [[*row, "" if math.isnan(sov[c]) else f"{sov[c]:.1f}"] for row, c in zip(rows, m["per_class"])]
        columns.append("SOV'99")
    console.print_table(f"{name} {output}: per class", columns, rows)
    cm_rows = [[c, *row] for c, row in zip(m["classes"], m["confusion"])]
    console.print_table(f"{name} {output}: confusion (rows true, columns predicted)", ["", *m["classes"]], cm_rows)


def _save_png(fig, path, *, follow_link: bool = False, staged: list | None = None) -> None:
    """Written under a temporary name and renamed: a full disk left a truncated PNG under the
    final name, and a link planted in a metrics folder was written through (`follow_link`: a
    name the user gave, written where the user's own link leads; `staged`: atomic_output's)."""
    from protrans_cli.io.files import atomic_output

    with atomic_output(path, follow_link=follow_link, staged=staged) as stream:
        fig.savefig(stream, format="png", dpi=110)


def _drawn(title: str) -> str:
    """A title naming an evaluation set (the name of its label file) as matplotlib can draw it: a
    name that is not UTF-8 (byte 0xff), or any non-ASCII name under LC_ALL=C, holds surrogate
    escapes, which FreeType refuses (fit trained, scored and then failed with a TypeError traceback
    on its --test set's figure); spelled `\\xff` as messages spell it. A pair of `$` is drawn
    literally, not as mathtext (`a$\\frac{b$.csv` was a traceback from savefig after training),
    as project's pictures draw it."""
    from protrans_cli.io.files import utf8_text
    from protrans_cli.project import literal_text

    return literal_text(utf8_text(title))


def save_scatter_png(y_true: np.ndarray, y_pred: np.ndarray, path, title: str, *, staged: list | None = None) -> None:
    """Predicted against true values of a value output, with the diagonal (`staged`: atomic_output's)."""
    # A Figure of its own, not pyplot's: matplotlib.use("Agg") switched a notebook's backend
    # (its plots stopped showing), and pyplot's figure list is shared with the caller's threads.
    from matplotlib.figure import Figure

    t = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    keep = ~np.isnan(t)
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.scatter(t[keep], p[keep], s=6, alpha=0.5)
    lo, hi = float(np.nanmin([t[keep].min(), p[keep].min()])), float(np.nanmax([t[keep].max(), p[keep].max()]))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(_drawn(title), fontsize=9)
    fig.tight_layout()
    _save_png(fig, path, staged=staged)


def save_confusion_png(m: dict, path, title: str, *, staged: list | None = None) -> None:
    """The row-normalised confusion matrix, counts printed (`staged`: atomic_output's)."""
    # A Figure of its own, not pyplot's: matplotlib.use("Agg") switched a notebook's backend
    # (its plots stopped showing), and pyplot's figure list is shared with the caller's threads.
    from matplotlib.figure import Figure

    cm = np.asarray(m["confusion"], dtype=np.float64)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # row-normalised: recall on the diagonal
    n = len(m["classes"])
    fig = Figure(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n))
    ax = fig.subplots()
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    classes = [_drawn(str(c)) for c in m["classes"]]  # (a generic head's classes are the label file's words)
    ax.set_xticks(range(n), classes, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_title(_drawn(title), fontsize=9)
    fig.tight_layout()
    _save_png(fig, path, staged=staged)


def dumps(obj, indent: int | None = 1) -> str:
    """JSON that every reader takes: a number that is not finite (the accuracy of a set with
    nothing to score, the CI of one protein) is null. Python's json wrote NaN, which it reads
    back, but JSON.parse, jq and R's jsonlite refuse the whole file."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
