"""select: stratified folds, out-of-fold figures, the choice rules, and what it returns."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from conftest import assert_close
from logitkit import LogitkitTypeError, LogitkitValueError, log_softmax, softmax
from logitkit.calibration import (
    CalibrationWarning,
    Calibrator,
    IdentityCalibrator,
    Selection,
    TemperatureScaler,
    VectorScaler,
    nll,
    select,
)
from logitkit.calibration._select import (
    CANDIDATES,
    EVIDENCE,
    TEMPERATURE_EVIDENCE,
    _choose,
    stratified_folds,
)


def make(n=1000, k=4, seed=0, scale=3.0, bias=0.0):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, k)) * 1.5
    y = (softmax(true, axis=1).cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return scale * true + bias, y


def test_folds_are_stratified_and_balanced():
    y = np.repeat(np.arange(3), [50, 31, 19])
    folds = stratified_folds(y, 5, np.random.default_rng(0))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 100
    for c, count in ((0, 50), (1, 31), (2, 19)):
        per_fold = np.bincount(folds[y == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == count


def test_table_holds_out_of_fold_figures_of_every_candidate():
    z, y = make(n=800, k=3, seed=1)
    sel = select(z, y, random_state=0)
    assert isinstance(sel, Selection)
    assert [r["method"] for r in sel.table_] == list(CANDIDATES)
    for r in sel.table_:
        assert set(r) >= {"method", "nll", "ece", "brier", "accuracy", "accuracy_change",
                          "fold_spread", "fit_time", "converged", "at_bound", "flagged", "chosen",
                          "warnings", "error"}
        if r["error"] is None:
            oof = sel.oof_logits(r["method"])
            assert_close(r["nll"], nll(oof, y, from_logits=True), rtol=1e-12)
            per_fold = [float(nll(oof[sel.folds_ == f], y[sel.folds_ == f], from_logits=True))
                        for f in range(5)]
            assert_close(r["fold_spread"], np.std(per_fold), rtol=1e-12)
    # every row's out-of-fold logits come from the fold calibrator that did not see it
    fold_cals = sel.fold_calibrators_["temperature"]
    ts = [c.temperature_ for c in fold_cals]
    assert len(set(ts)) == 5
    rows = sel.folds_ == 2
    assert_close(sel.oof_logits("temperature")[rows], z[rows] / ts[2], rtol=1e-12)
    refit = TemperatureScaler().fit(z[~rows], y[~rows])  # the folds start from all rows' fit
    assert_close(refit.temperature_, ts[2], rtol=1e-9)
    assert sum(r["chosen"] for r in sel.table_) == 1 and sel.row()["method"] == sel.best_
    assert_close(sel.oof_logits_, sel.oof_logits(sel.best_), rtol=0)


def test_choice_is_best_out_of_fold_and_refitted_on_all_rows():
    z, y = make(n=1200, k=4, seed=2, bias=np.array([1.5, 0.0, -1.0, 0.5]))
    sel = select(z, y, methods=["vector", "matrix"], random_state=1)
    names = [r["method"] for r in sel.table_]
    assert names == ["none", "temperature", "vector", "matrix"]  # always both baselines
    ok = [r for r in sel.table_ if r["error"] is None and not r["accuracy_change"] < -0.01]
    best = min(r["nll"] for r in ok)
    assert sel.row()["nll"] <= best * 1.001
    assert sel.row()["nll"] <= sel.row("none")["nll"]
    assert sel.row()["nll"] <= sel.row("temperature")["nll"]
    direct = type(sel.calibrator_)(**sel.calibrator_.get_params()).fit(z, y)
    assert_close(sel.calibrator_.transform(z), direct.transform(z), rtol=1e-12)
    assert_close(sel.predict_proba(z), direct.predict_proba(z), rtol=1e-12)


def test_every_method_fits_a_random_forests_probabilities():
    # votes of five trees: most probabilities exactly 0, a few on the label; vector and
    # matrix scaling failed on every fold (NaN gradients), the maps on a label's 0 too
    rng = np.random.default_rng(7)
    n, k = 800, 5
    y = rng.integers(0, k, n)
    votes = np.zeros((n, k))
    for _ in range(5):
        votes[np.arange(n), np.where(rng.random(n) < 0.5, y, rng.integers(0, k, n))] += 1
    p = votes / 5
    assert (p[np.arange(n), y] == 0).sum() > 3
    sel = select(p, y, from_probs=True, random_state=0)
    assert all(row["error"] is None for row in sel.table_), [
        (row["method"], row["error"]) for row in sel.table_ if row["error"]]
    assert np.isfinite([row["nll"] for row in sel.table_ if row["method"] != "none"]).all()


def test_near_ties_go_to_the_simpler_method():
    # perfectly calibrated logits: temperature scaling finds T ≈ 1, a near-tie with "none"
    z, y = make(n=1500, k=3, seed=3, scale=1.0)
    sel = select(z, y, methods=["temperature"], random_state=0)
    none, ts = sel.row("none"), sel.row("temperature")
    assert abs(ts["nll"] - none["nll"]) <= 1e-3 * none["nll"]
    assert sel.best_ == "none" and isinstance(sel.calibrator_, IdentityCalibrator)


def test_leave_it_alone_on_near_separable_small_data():
    # a few rows, far apart: every fitted map loses out of fold to the logits as they are
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 20)
    z = np.eye(3)[y] * 6.0 + rng.normal(size=(60, 3)) * 0.8
    with pytest.warns(CalibrationWarning, match="separable"):
        sel = select(z, y, random_state=0)
    assert sel.best_ == "none" and sel.separable_
    assert np.isfinite(sel.row()["nll"])


def test_a_temperature_at_its_bound_is_never_chosen(monkeypatch):
    # separable folds: unpenalised, T goes to its lower bound and the folds' held-out rows all
    # look right, yet new rows get infinitely confident predictions.  One row on the wrong side
    # keeps the whole set from being separable; the four folds without it are.
    rng = np.random.default_rng(11)
    y = np.repeat(np.arange(3), 15)
    z = np.eye(3)[y] * 50.0 + rng.normal(size=(45, 3))
    z[0, 1] = z[0, 0] + 1.0
    sel = select(z, y, methods=["temperature"], random_state=0)  # the default ridge: no bound
    assert not sel.row("temperature")["at_bound"]
    monkeypatch.setitem(TemperatureScaler.__init__.__kwdefaults__, "alpha", 0.0)
    sel = select(z, y, methods=["temperature"], random_state=0)
    row = sel.row("temperature")
    assert row["at_bound"] and not row["chosen"] and not sel.separable_
    assert sel.best_ == "none"


def test_accuracy_changes_beyond_one_point_are_flagged():
    # class biases that misplace the arg-max: vector scaling removes them and gains accuracy
    z, y = make(n=1500, k=3, seed=5, scale=1.0, bias=np.array([2.0, 0.0, 0.0]))
    sel = select(z, y, methods=["vector"], random_state=0)
    row = sel.row("vector")
    assert row["accuracy_change"] > 0.01 and row["flagged"]
    assert not sel.row("temperature")["flagged"]  # scaling never moves the arg-max
    assert sel.best_ == "vector"  # a gain is flagged, not excluded


def test_a_failing_candidate_is_reported_and_never_chosen():
    z, y = make(n=300, k=3, seed=6)
    z[np.arange(300), (y + 1) % 3] = -np.inf  # excluded classes: the vector map cannot take them
    sel = select(z, y, methods=["vector", "isotonic"], random_state=0)
    row = sel.row("vector")
    assert row["error"] is not None and "finite" in row["error"] and not row["chosen"]
    assert row["nll"] == np.inf
    assert sel.best_ != "vector"


def test_fold_fits_never_see_their_held_out_rows_and_progress_is_reported():
    # regression: folds warm-started from the fit on all rows stopped next to it where the
    # optimum is flat (unpenalised matrix scaling of a few hundred rows), so the held-out
    # rows leaked into their own scores and select chose that map (test NLL 0.30 vs 0.075)
    rng = np.random.default_rng(12)
    y = rng.integers(0, 10, 300)
    z = np.eye(10)[y] * 8.0 + rng.normal(size=(300, 10)) * 2.0
    calls = []
    sel = select(z, y, methods=["matrix"], random_state=0,
                 progress=lambda done, total, method: calls.append((done, total, method)))
    assert [c[0] for c in calls] == list(range(1, 17)) and {c[1] for c in calls} == {16}
    # fold by fold (each fold's training rows are copied once for all candidates)
    assert [c[2] for c in calls[:-1]] == ["none", "temperature", "matrix"] * 5
    for f, fitted in enumerate(sel.fold_calibrators_["matrix"]):
        alone = type(fitted)(**fitted.get_params())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alone.fit(z[sel.folds_ != f], y[sel.folds_ != f])
        assert np.array_equal(alone.transform(z), fitted.transform(z))
    direct = type(sel.calibrator_)(**sel.calibrator_.get_params())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct.fit(z, y)
    assert np.array_equal(direct.transform(z), sel.calibrator_.transform(z))


def test_scoring_random_state_and_json():
    z, y = make(n=600, k=3, seed=7)
    a = select(z, y, methods="vector", scoring="brier", random_state=3)
    b = select(z, y, methods="vector", scoring="brier", random_state=3)
    assert np.array_equal(a.folds_, b.folds_) and a.best_ == b.best_
    assert a.row()["brier"] <= min(r["brier"] for r in a.table_) * 1.001
    data = json.loads(json.dumps(a.to_dict()))
    assert data["best"] == a.best_ and len(data["table"]) == 3
    again = Calibrator.from_dict(data["calibrator"])
    assert np.array_equal(again.transform(z), a.calibrator_.transform(z))
    assert a.best_ in repr(a)


def test_probabilities_in():
    z, y = make(n=600, k=3, seed=8)
    p = softmax(z, axis=1)
    a = select(p, y, methods=["vector"], random_state=0, from_probs=True)
    b = select(np.log(p), y, methods=["vector"], random_state=0)
    assert a.best_ == b.best_
    assert_close(a.row()["nll"], b.row()["nll"], rtol=1e-7)
    assert a.calibrator_.from_probs


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"methods": "magic"}, LogitkitValueError, "methods"),
    ({"methods": 3}, LogitkitTypeError, "methods"),
    ({"cv": 1}, LogitkitValueError, "cv"),
    ({"cv": 2.0}, LogitkitTypeError, "cv"),
    ({"cv": 50}, LogitkitValueError, "at most the number of rows"),
    ({"scoring": "auc"}, LogitkitValueError, "scoring"),
    ({"from_probs": "yes"}, LogitkitTypeError, "from_probs"),
])
def test_bad_arguments(kwargs, error, match):
    z, y = make(n=40, k=3, seed=9)
    with pytest.raises(error, match=match):
        select(z, y, **kwargs)


def test_selection_lookups():
    z, y = make(n=300, k=3, seed=10)
    sel = select(z, y, methods=["vector"], random_state=0)
    with pytest.raises(LogitkitValueError, match="method"):
        sel.oof_logits("isotonic")
    with pytest.raises(LogitkitValueError, match="method"):
        sel.row("isotonic")
    assert isinstance(VectorScaler().fit(z, y), Calibrator)


def _wine_naive_bayes(seed=0):
    """The issue's wine case made the way a user would: Gaussian naive Bayes trained on half of
    scikit-learn's wine, its held-out joint log-likelihoods split into calibration and test."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split
    from sklearn.naive_bayes import GaussianNB

    x, y = load_wine(return_X_y=True)
    train, rest = train_test_split(np.arange(len(y)), train_size=0.5, stratify=y,
                                   random_state=seed)
    cal, test = train_test_split(rest, train_size=0.5, stratify=y[rest], random_state=seed)
    z = GaussianNB().fit(x[train], y[train]).predict_joint_log_proba(x)
    return z[cal], y[cal], z[test], y[test]


def test_separable_data_are_left_alone_with_a_warning():
    # regression: on the wine file (no calibration row misclassified) every sharpening map
    # looked better out of fold and select chose beta, whose test NLL is 3x the model's own
    z, y, zt, yt = _wine_naive_bayes()
    assert (z.argmax(axis=1) == y).all() and (zt.argmax(axis=1) != yt).any()
    with pytest.warns(CalibrationWarning, match="separable"):
        sel = select(z, y, random_state=0)
    assert sel.separable_ and sel.best_ == "none" and sel.row()["chosen"]
    assert isinstance(sel.calibrator_, IdentityCalibrator)
    assert sel.to_dict()["separable"] is True
    # out of fold the sharpening maps look better than "none"; on the test rows they are worse
    none = float(nll(zt, yt, from_logits=True))
    for method in ("temperature", "vector", "beta", "dirichlet", "matrix", "structured"):
        if method != "structured":  # penalised towards the identity: no better out of fold
            assert sel.row(method)["nll"] < sel.row("none")["nll"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = type(sel.fold_calibrators_[method][0])(
                **sel.fold_calibrators_[method][0].get_params()).fit(z, y)
        test_nll = float(nll(fitted.transform(zt), yt, from_logits=True))
        if method == "structured":  # its ridges hold T and the map near the model's own
            assert test_nll < 1.1 * none
        else:
            assert test_nll > none


def test_one_misclassified_row_is_not_separable():
    z, y = make(n=400, k=3, seed=5, scale=1.0)
    z = z + 12.0 * np.eye(3)[y]
    assert (z.argmax(axis=1) == y).all()
    with pytest.warns(CalibrationWarning, match="separable"):
        assert select(z, y, methods="temperature", random_state=0).best_ == "none"
    wrong = np.flatnonzero(y == 0)[0]
    z[wrong, 1] = z[wrong, 0] + 1.0  # one row on the wrong side: T has a finite optimum
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        sel = select(z, y, methods="temperature", random_state=0)
    assert not sel.separable_
    # a tie with the label's logit is not separable either (T -> 0 does not send NLL to 0)
    z[wrong, 1] = z[wrong, 0]
    assert not select(z, y, methods="temperature", random_state=0).separable_


@pytest.mark.parametrize("seed", [2, 9])
def test_a_calibrator_replaces_none_only_on_evidence(seed):
    # regression: on nearly separable splits of the wine file (two of 44 calibration rows
    # misclassified) the best out-of-fold NLL was luck: matrix scaling was chosen at test NLL
    # 0.63 against the model's own 0.19 (split 2), temperature at 0.048 against 0.005 (split 9)
    z, y, zt, yt = _wine_naive_bayes(seed)
    assert 0 < (z.argmax(axis=1) != y).sum() <= 3
    sel = select(z, y, random_state=0)
    lucky = min((r for r in sel.table_ if r["error"] is None
                 and r["method"] not in ("none", "temperature")), key=lambda r: r["nll"])
    assert lucky["nll"] < sel.row("none")["nll"] and lucky["gain_z"] < EVIDENCE
    # the choice is the base of the two steps: temperature scaling on its weaker bar
    # (split 2: test NLL 0.12 against the model's 0.19; split 9: 0.048 against 0.005, the
    # price of that bar), never the lucky richer map
    t = sel.row("temperature")
    assert sel.best_ == ("temperature" if t["gain_z"] >= TEMPERATURE_EVIDENCE else "none")
    assert not sel.separable_
    # out-of-fold gains below the bar are luck: some richer map that "beat" the model out of
    # fold doubles its test NLL when fitted on every row (split 2: matrix scaling, 0.67)
    def test_nll(method):
        fitted = type(sel.fold_calibrators_[method][0])(
            **sel.fold_calibrators_[method][0].get_params())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted.fit(z, y)
        return float(nll(fitted.transform(zt), yt, from_logits=True))

    lucky_ones = [r["method"] for r in sel.table_ if r["error"] is None
                  and r["method"] not in ("none", "temperature")
                  and r["nll"] < sel.row("none")["nll"] and r["gain_z"] < EVIDENCE]
    assert any(test_nll(m) > 2 * float(nll(zt, yt, from_logits=True)) for m in lucky_ones)


def _row(method, nll, gain_z, gain_z_temperature, **extra):
    return {"method": method, "nll": nll, "ece": 0.0, "brier": 0.0, "accuracy": 0.9,
            "gain_z": gain_z, "gain_z_temperature": gain_z_temperature, "error": None,
            "converged": True, "at_bound": False, **extra}


@pytest.mark.parametrize("t_z, s_z, s_zt, chosen", [
    (1.2, 1.4, 1.6, "temperature"),  # temperature on its bar; structured not over "none"
    (1.2, 1.6, 1.6, "structured"),  # over both
    (1.2, 3.0, 1.4, "temperature"),  # not over the base
    (0.9, 1.6, 0.5, "structured"),  # base "none": only the gain over "none" counts
    (0.9, 1.4, 3.0, "none"),
])
def test_the_two_step_evidence_rule(t_z, s_z, s_zt, chosen):
    rows = [_row("none", 0.30, 0.0, -t_z), _row("temperature", 0.25, t_z, 0.0),
            _row("structured", 0.20, s_z, s_zt)]
    assert _choose(rows, "nll") == chosen
    assert [r["method"] for r in rows if r["chosen"]] == [chosen]


@pytest.mark.parametrize("stacked_nll, mix, scoring, chosen", [
    (0.2501, True, "nll", "stacked"),  # a near tie with the single pick: still the mixture
    (0.2400, True, "nll", "stacked"),
    (0.2400, False, "nll", "temperature"),  # fewer than 3 errors: the single methods only
    (0.2400, True, "brier", "temperature"),  # its weights maximise the likelihood, not Brier
    (0.3100, True, "nll", "temperature"),  # worse than "none"
])
def test_the_mixture_is_chosen_when_it_beats_none(stacked_nll, mix, scoring, chosen):
    # measured over 30 splits (select's docstring): holding the mixture to the near-tie rule
    # against the single methods' pick made the mean test NLL worse on two of three files
    rows = [_row("none", 0.30, 0.0, -1.2), _row("temperature", 0.25, 1.2, 0.0),
            _row("stacked", stacked_nll, 2.0, 1.0)]
    for r in rows:
        r["brier"] = r["nll"]
    assert _choose(rows, scoring, mix=mix) == chosen
    assert [r["method"] for r in rows if r["chosen"]] == [chosen]


def _gbm_breast_cancer(split):
    """An overconfident gradient boosting model of half of breast_cancer (the benchmark's):
    its held-out log-odds split into calibration and test rows by ``split``."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    train, rest = train_test_split(np.arange(len(y)), train_size=0.5, stratify=y,
                                   random_state=0)
    z = GradientBoostingClassifier(n_estimators=300, random_state=0).fit(
        x[train], y[train]).decision_function(x)
    cal, test = train_test_split(rest, train_size=0.5, stratify=y[rest], random_state=split)
    return z[cal], y[cal], z[test], y[test]


def test_temperature_scaling_on_its_own_bar():
    # regression: with one bar of 1.5 standard errors for every candidate, 4 of 30 splits of
    # this model were left uncalibrated, at 2.7x the test NLL of temperature scaling (this
    # split: gain_z 1.42, test NLL 0.41 uncalibrated, 0.15 at T = 3.7)
    # (the single methods' rule; with the mixture in, "auto" chooses it, 3 errors or more
    # and its nested out-of-fold NLL below "none"'s, and its test NLL must be as good)
    z, y, zt, yt = _gbm_breast_cancer(4)
    sel = select(z, y, methods=[m for m in CANDIDATES if m != "stacked"], random_state=0)
    assert 1.0 <= sel.row("temperature")["gain_z"] < EVIDENCE
    assert sel.best_ == "temperature"
    uncalibrated = float(nll(np.stack([np.zeros_like(zt), zt], 1), yt, from_logits=True))
    single = float(nll(sel.transform(zt), yt, from_logits=True))
    assert single < 0.5 * uncalibrated
    auto = select(z, y, random_state=0)
    assert auto.best_ == "stacked"
    assert float(nll(auto.transform(zt), yt, from_logits=True)) < 1.05 * single


def test_gain_z_is_the_mean_nll_gain_over_its_standard_error():
    z, y = make(n=600, k=3, seed=8)
    sel = select(z, y, methods="temperature", random_state=0)
    base = -np.asarray(log_softmax(z, axis=1))[np.arange(600), y]
    oof = sel.oof_logits("temperature")
    gain = base + np.asarray(log_softmax(oof, axis=1))[np.arange(600), y]
    assert_close(sel.row("temperature")["gain_z"],
                 gain.mean() / (gain.std(ddof=1) / np.sqrt(600)), rtol=1e-10)
    assert sel.row("none")["gain_z"] == 0.0 and sel.best_ == "temperature"


@pytest.mark.parametrize("columns", [1, 2])
def test_binary_input_as_one_column_or_two_and_separable(columns):
    # regression: the separability check indexed a single logit column as if it held K
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 200)
    s = (2 * y - 1) * (3.0 + rng.random(200))  # every row on its label's side
    z = s if columns == 1 else np.stack([np.zeros(200), s], axis=1)
    with pytest.warns(CalibrationWarning, match="separable"):
        assert select(z, y, random_state=0).best_ == "none"
    s[:5] *= -1  # five rows on the wrong side
    z = s if columns == 1 else np.stack([np.zeros(200), s], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = select(z, y, random_state=0)
    assert not sel.separable_ and sel.oof_logits_.shape == (200, 2)


# ------------------------------------------------------------------------- the fast path


def em_weights(logp, prior=1.0, steps=20000):
    """The mixture weights by plain EM (``w ← (Σ_n r_mn + a) / (N + M a)``), many steps."""
    m = logp.shape[0]
    a = np.broadcast_to(np.asarray(prior, dtype=np.float64), (m,))
    like = np.exp(logp - logp.max(axis=0))
    w = np.full(m, 1.0 / m)
    for _ in range(steps):
        r = w[:, None] * like
        r /= r.sum(axis=0)
        w = (r.sum(axis=1) + a) / (logp.shape[1] + a.sum())
    return w


def _naive_table(z, y, folds, names, cv, from_probs=False, mixed=()):
    """Every candidate's out-of-fold figures written out: each fold fitted on a copy of its
    training rows, its held-out rows transformed, the metrics by their definitions; the
    mixture of ``mixed`` nested (fold f's weights by EM on the other folds' losses)."""
    from logitkit.calibration._select import make_candidate

    x = z if z.ndim == 2 else z[:, None]
    rows = np.arange(len(y))
    logps = {}
    for name in names:
        if name == "stacked":
            continue
        oof = np.empty((x.shape[0], 2 if x.shape[1] == 1 else x.shape[1]))
        for f in range(cv):
            held = folds == f
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cal = make_candidate(name, from_probs).fit(x[~held], y[~held])
            oof[held] = np.asarray(cal.transform(x[held]), dtype=np.float64)
        m = oof.max(axis=1, keepdims=True)
        logps[name] = oof - m - np.log(np.exp(oof - m).sum(axis=1, keepdims=True))
    if "stacked" in names:
        picked = np.stack([logps[c][rows, y] for c in mixed])
        mix = np.empty_like(logps[mixed[0]])
        for f in range(cv):
            held = folds == f
            w = em_weights(picked[:, ~held])
            keep = w >= 1e-3
            w = w[keep] / w[keep].sum()
            parts = np.stack([logps[c][held] for c, k in zip(mixed, keep, strict=True) if k]) \
                + np.log(w)[:, None, None]
            top = parts.max(axis=0)
            mix[held] = top + np.log(np.exp(parts - top).sum(axis=0))
        logps["stacked"] = mix
    out = {}
    for name in names:
        logp = logps[name]
        p = np.exp(logp)
        loss = -logp[rows, y]
        conf, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
        edges = np.linspace(0.0, 1.0, 16)
        b = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, 14)  # right-closed
        ece = sum(abs(hit[b == i].sum() - conf[b == i].sum()) for i in range(15)) / len(y)
        brier = ((p - np.eye(p.shape[1])[y]) ** 2).sum(axis=1).mean()
        out[name] = {"nll": loss.mean(), "ece": ece, "brier": brier, "accuracy": hit.mean(),
                     "loss": loss,
                     "spread": np.std([loss[folds == f].mean() for f in range(cv)])}
    return out


@pytest.mark.parametrize("case", ["float64", "float32", "binary", "probs", "auto", "blocks"])
def test_table_equals_a_naive_cross_validation(case, monkeypatch):
    # select scores the held-out rows a block at a time through the engine, with one copy of
    # each fold's training rows shared by the candidates: the figures must be those of the
    # plain computation (a copy per fit, the whole out-of-fold matrix, the definitions)
    z, y = make(n=700, k=4, seed=11)
    kw = {}
    names = ["none", "temperature", "vector"]
    if case == "float32":
        z = z.astype(np.float32)
    elif case == "binary":
        z, y = make(n=500, k=2, seed=12)
        z = z[:, 1] - z[:, 0]
    elif case == "probs":
        z, kw = softmax(z, axis=1), {"from_probs": True}
    elif case == "auto":
        names = list(CANDIDATES)
    elif case == "blocks":  # held-out rows scored in blocks of 16
        import logitkit.calibration._select as sel_mod

        monkeypatch.setattr(sel_mod, "CHUNK_ELEMENTS", 64)
        names = ["none", "temperature", "vector", "isotonic"]
    sel = select(z, y, methods="auto" if case == "auto" else names, random_state=5, **kw)
    mixed = tuple(sel.row("stacked")["weights"]) if "stacked" in names else ()
    naive = _naive_table(z, y, sel.folds_, names, 5, mixed=mixed, **kw)
    assert [r["method"] for r in sel.table_] == names
    for r in sel.table_:
        want = naive[r["method"]]
        # the mixture's weights: Newton's (to float64) against plain EM's (to ~1e-8)
        tol = 1e-6 if r["method"] == "stacked" else 1e-9
        for key in ("nll", "ece", "brier", "accuracy"):
            assert_close(r[key], want[key], rtol=tol, atol=1e-12)
        assert_close(r["fold_spread"], want["spread"], rtol=tol, atol=1e-12)
        gain = naive["none"]["loss"] - want["loss"]
        if r["method"] != "none":
            z_score = gain.mean() / (gain.std(ddof=1) / np.sqrt(gain.size))
            assert_close(r["gain_z"], z_score, rtol=1e-7)
    assert_close(sel.oof_logits_, sel.oof_logits(sel.best_), rtol=0)


def test_each_folds_rows_are_copied_once_for_all_candidates(monkeypatch):
    # regression: every candidate copied every fold's training rows (and "none", which reads
    # none): 10 copies of 0.8 x the input for methods="temperature", 50 for "auto"
    from logitkit.calibration._base import FitData

    z, y = make(n=600, k=3, seed=13)
    taken = []
    take = FitData.take

    def counting(self, rows, out=None):
        taken.append(int(np.count_nonzero(rows)))
        return take(self, rows, out)

    monkeypatch.setattr(FitData, "take", counting)
    select(z, y, methods=["temperature", "vector"], random_state=0)
    assert len(taken) == 5 and sum(taken) == 4 * 600


def test_take_into_a_buffer_equals_a_fresh_take():
    from logitkit.calibration._base import FitData

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40_000, 3)).astype(np.float32)
    y = rng.integers(0, 3, 40_000)
    w = rng.random(40_000)
    data = FitData(x, y, w, 3, float(w.sum()), False, floor=-np.inf)
    rows = rng.random(40_000) < 0.7
    buf = np.full((40_000, 3), np.nan, dtype=np.float32)
    a, b = data.take(rows), data.take(rows, out=buf)
    assert np.array_equal(a.x, b.x) and np.shares_memory(b.x, buf)
    assert np.array_equal(a.y, b.y) and np.array_equal(a.w, b.w)
    assert a.total_weight == b.total_weight and a.n == b.n == int(rows.sum())


def test_separable_reads_blocks_and_stops_at_the_first_error(monkeypatch):
    import logitkit.calibration._select as sel_mod

    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, 3000)
    z = np.eye(5)[y] * 4.0 + rng.normal(size=(3000, 5)) * 0.1
    monkeypatch.setattr(sel_mod, "CHUNK_ELEMENTS", 500)  # blocks of 100 rows
    assert sel_mod.separable(z, y)
    assert sel_mod.separable(z.astype(np.float32), y)
    z[2950, (y[2950] + 1) % 5] = 9.0  # one row wrong, in the last block
    assert not sel_mod.separable(z, y)
    seen = []
    expand = sel_mod.expand_rows
    monkeypatch.setattr(sel_mod, "expand_rows", lambda x, p, f: seen.append(len(x)) or expand(x, p, f))
    z[10, (y[10] + 1) % 5] = 9.0  # and one in the first: the search ends there
    assert not sel_mod.separable(z, y) and seen == [100]
    # a tie is not separable; a one-column (binary) input is [0, z]
    tie = np.eye(5)[y] * 4.0
    tie[7, (y[7] + 1) % 5] = 4.0
    assert not sel_mod.separable(tie, y)
    zb = np.where(y[:200] % 2 == 1, 3.0, -3.0)
    assert sel_mod.separable(zb, y[:200] % 2)
    assert not sel_mod.separable(np.zeros(200), y[:200] % 2)


def test_refitting_an_asked_for_method_on_separable_rows_says_it_was_fitted_anyway():
    # regression: with --method temperature on separable rows the command line repeated
    # select's "left as they are (method none)" while it saved temperature scaling
    rng = np.random.default_rng(3)
    z = rng.normal(size=(300, 3))
    y = rng.integers(0, 3, 300)
    z[np.arange(300), y] += 6
    with pytest.warns(CalibrationWarning, match="left as they are"):
        sel = select(z, y, methods=["temperature"], random_state=0)
    assert sel.separable_ and sel.best_ == "none"
    with pytest.warns(CalibrationWarning) as said:
        cal = sel.refit("temperature")
    text = " ".join(str(w.message) for w in said)
    assert "separable" in text and "temperature was fitted anyway" in text
    assert "over-confident" in text and "left as they are" not in text
    assert cal.method == "temperature"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sel.refit("none")  # the choice itself: nothing more to say


def test_out_of_fold_logits_refuses_folds_without_a_calibrator():
    from logitkit.calibration import make_calibrator, out_of_fold_logits

    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 3)) * 3
    y = (z + rng.gumbel(size=z.shape) * 3).argmax(1)
    folds = np.arange(300) % 3
    cals = [make_calibrator("temperature").fit(z[folds != f], y[folds != f]) for f in range(2)]
    with pytest.raises(LogitkitValueError, match=r"folds.*\[0, 2\)"):
        out_of_fold_logits(z, folds, cals)  # fold 2 has no calibrator
    with pytest.raises(LogitkitValueError, match="folds"):
        out_of_fold_logits(z, folds[:10], cals)
    with pytest.raises(LogitkitValueError, match="calibrators"):
        out_of_fold_logits(z, folds, [])
