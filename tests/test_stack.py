"""The mixture of calibrators: its weights, StackedCalibrator, and select's mixture rule."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from conftest import assert_close
from logitkit import LogitkitValueError, log_softmax, softmax
from logitkit.calibration import (
    Calibrator,
    StackedCalibrator,
    TemperatureScaler,
    candidates_of,
    make_calibrator,
    nll,
    select,
)
from logitkit.calibration._select import (
    AUTO_MAX_CLASSES,
    CANDIDATES,
    FULL_MAPS,
    MIX_MIN_ERRORS,
    STACK_PRIOR,
    _choose,
)
from logitkit.calibration._stack import MIN_WEIGHT, stack_weights
from test_select import em_weights


def make(n=1200, k=4, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, k)) * 1.5
    y = (softmax(true, axis=1).cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return scale * true + rng.normal(size=k), y


def quiet_select(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return select(*args, **kwargs)


# ------------------------------------------------------------------------- the weights


@pytest.mark.parametrize("prior", [1.0, 0.05, [0.5, 2.0, 1.0]])
def test_weights_are_the_em_fixed_point(prior):
    rng = np.random.default_rng(1)
    logp = np.log(rng.dirichlet([2.0, 1.0], size=(3, 300))[..., 0])
    logp[1] -= 0.3
    w = stack_weights(logp, prior=prior)
    assert_close(w, em_weights(logp, prior=np.asarray(prior)), rtol=1e-7, atol=1e-10)
    assert w.sum() == pytest.approx(1.0, abs=1e-15) and np.all(w > 0)


def test_weights_shift_invariant_and_allow_minus_infinity():
    rng = np.random.default_rng(2)
    logp = np.log(rng.uniform(0.05, 1.0, size=(3, 200)))
    w = stack_weights(logp)
    assert_close(stack_weights(logp + 700.0), w, rtol=1e-12)  # a common shift per row cancels
    assert_close(stack_weights(logp + rng.normal(size=200) * 50), w, rtol=1e-9)
    before = w
    logp[2, :50] = -np.inf  # a component that gives some labels probability 0
    w = stack_weights(logp)
    assert np.all(np.isfinite(w)) and w[2] < 0.5 * before[2]
    assert_close(w, em_weights(logp), rtol=1e-6, atol=1e-10)


def test_a_useless_component_gets_the_prior_share_only():
    good, bad = np.log(np.full(1000, 0.9)), np.log(np.full(1000, 1e-6))
    w = stack_weights(np.stack([good, bad]))
    # the optimum: w_bad = a / (N + 2a) up to the bad component's tiny likelihood share
    assert w[1] == pytest.approx(STACK_PRIOR / (1000 + 2 * STACK_PRIOR), rel=1e-3)


@pytest.mark.parametrize("kw, match", [
    ({"prior": 0.0}, "prior"), ({"prior": -1.0}, "prior"), ({"prior": np.nan}, "prior"),
    ({"prior": [1.0, 1.0]}, "prior"), ({"max_iter": 0}, "max_iter"),
])
def test_bad_arguments_get_one_clear_error(kw, match):
    with pytest.raises(LogitkitValueError, match=match):
        stack_weights(np.zeros((3, 10)), **kw)


def test_bad_log_probabilities_get_one_clear_error():
    with pytest.raises(LogitkitValueError, match="finite entry"):
        stack_weights(np.array([[0.0, -np.inf], [0.0, -np.inf]]))
    with pytest.raises(LogitkitValueError, match="NaN"):
        stack_weights(np.array([[0.0, np.nan]]))
    with pytest.raises(LogitkitValueError, match="non-empty"):
        stack_weights(np.zeros(4))


# ------------------------------------------------------------------------- the calibrator


def test_mixture_is_the_weighted_sum_of_its_components_probabilities():
    z, y = make(seed=3)
    st = StackedCalibrator(methods=["vector", "isotonic"]).fit(z, y)
    assert st.methods_[:2] == ["none", "temperature"] and np.all(st.weights_ >= MIN_WEIGHT)
    p = sum(w * np.asarray(c.predict_proba(z)) for c, w in zip(st.components_, st.weights_,
                                                               strict=True))
    assert_close(st.predict_proba(z), p, rtol=1e-12, atol=1e-15)
    assert_close(np.exp(st.transform(z)).sum(axis=1), np.ones(len(y)), rtol=1e-12)


def test_fit_equals_selects_mixture_on_the_same_folds():
    z, y = make(seed=4)
    st = StackedCalibrator(random_state=7).fit(z, y)
    sel = quiet_select(z, y, random_state=7)
    weights = sel.row("stacked")["weights"]
    kept = [m for m, w in weights.items() if w >= MIN_WEIGHT]
    assert st.methods_ == kept
    total = sum(weights[m] for m in kept)
    assert_close(st.weights_, [weights[m] / total for m in kept], rtol=1e-12)
    assert np.array_equal(sel.refit("stacked").transform(z), st.transform(z))


def test_fit_weights_come_from_out_of_fold_losses():
    # the weights maximise the out-of-fold likelihood of the components' fold calibrators
    z, y = make(n=800, seed=5)
    methods = ["temperature", "vector"]
    sel = quiet_select(z, y, methods=methods, random_state=0)
    rows = np.arange(len(y))
    names = ["none", "temperature", "vector"]
    logp = np.stack([np.asarray(log_softmax(sel.oof_logits(m), axis=1))[rows, y]
                     for m in names])
    want = em_weights(logp)
    st = StackedCalibrator(methods=methods, random_state=0).fit(z, y)
    got = dict(zip(st.methods_, st.weights_, strict=True))
    assert_close([got.get(m, 0.0) for m in names], want, rtol=1e-6, atol=MIN_WEIGHT)


def test_nested_fold_weights_never_see_their_fold():
    z, y = make(n=600, seed=6)
    sel = quiet_select(z, y, random_state=1)
    rows = np.arange(len(y))
    names = list(sel.row("stacked")["weights"])
    logp = np.stack([np.asarray(log_softmax(sel.oof_logits(m), axis=1))[rows, y]
                     for m in names])
    for f, cal in enumerate(sel.fold_calibrators_["stacked"]):
        w = em_weights(logp[:, sel.folds_ != f])
        keep = w >= MIN_WEIGHT
        assert cal.methods_ == [m for m, k in zip(names, keep, strict=True) if k]
        assert_close(cal.weights_, w[keep] / w[keep].sum(), rtol=1e-6)
        for comp, name in zip(cal.components_, cal.methods_, strict=True):
            assert comp is sel.fold_calibrators_[name][f]


def test_components_below_the_minimum_weight_are_left_out(monkeypatch):
    # regression: the nested fold mixtures were handed every candidate's fold calibrator while
    # their weights left the light ones out, so select (and StackedCalibrator.fit) stopped
    # with "Expected `components` to be 9" as soon as a weight fell below MIN_WEIGHT, which
    # the prior's 1/(N + M) share allows from about a thousand rows (1e5 x 100: every time)
    import logitkit.calibration._select as sel_mod

    monkeypatch.setattr(sel_mod, "MIN_WEIGHT", 0.03)  # here: histogram's and none's weights
    z, y = make(n=2000, seed=0, scale=3.0)
    sel = quiet_select(z, y, methods="stacked", random_state=0)
    weights = sel.row("stacked")["weights"]
    light = {m for m, w in weights.items() if w < 0.03}
    assert light and len(light) < len(weights) - 1
    folds = sel.fold_calibrators_["stacked"]
    assert any(len(cal.methods_) < len(weights) for cal in folds)  # the nested ones drop too
    for f, cal in enumerate(folds):
        assert len(cal.methods_) == len(cal.components_) == len(cal.weights_)
        assert all(comp is sel.fold_calibrators_[m][f]
                   for m, comp in zip(cal.methods_, cal.components_, strict=True))
    refit = sel.refit("stacked")
    assert refit.methods_ == [m for m in weights if m not in light]
    assert_close(refit.weights_.sum(), 1.0, rtol=1e-12)
    with pytest.raises(LogitkitValueError, match="components"):
        StackedCalibrator.assembled(["none", "vector"], [0.5, 0.5], [None, None], 4, False)


def test_methods_and_candidates():
    assert candidates_of("stacked") == list(CANDIDATES)
    assert candidates_of("auto") == list(CANDIDATES)
    assert candidates_of("auto", n_classes=AUTO_MAX_CLASSES) == list(CANDIDATES)
    many = AUTO_MAX_CLASSES + 1
    assert candidates_of("auto", n_classes=many) == [m for m in CANDIDATES if m not in FULL_MAPS]
    assert candidates_of(["stacked", "matrix"], n_classes=many) == \
        [m for m in CANDIDATES if m not in ("structured", "dirichlet")]
    assert candidates_of("matrix", n_classes=many) == ["none", "temperature", "matrix"]
    assert candidates_of(["vector"]) == ["none", "temperature", "vector"]
    assert candidates_of(["vector", "stacked"]) == list(CANDIDATES)
    with pytest.raises(LogitkitValueError, match="methods"):
        StackedCalibrator(methods=["magic"]).fit(*make(n=100))
    with pytest.raises(LogitkitValueError, match="cv"):
        StackedCalibrator(cv=1).fit(*make(n=100))
    with pytest.raises(LogitkitValueError, match="cv"):
        StackedCalibrator(cv=50).fit(*make(n=30))


def test_auto_leaves_the_full_maps_out_above_the_class_limit(monkeypatch):
    # regression: "auto" fitted every full map whatever K: on 1e4 x 1000 logits a fit took
    # 20-70 s (after a first one was killed for memory), six of each in select
    import logitkit.calibration._select as sel_mod

    monkeypatch.setattr(sel_mod, "AUTO_MAX_CLASSES", 3)
    z, y = make(n=600, k=4, seed=10)
    sel = quiet_select(z, y, random_state=0)
    assert [r["method"] for r in sel.table_] == \
        [m for m in CANDIDATES if m not in FULL_MAPS]
    assert set(sel.row("stacked")["weights"]).isdisjoint(FULL_MAPS)
    named = quiet_select(z, y, methods=["structured"], random_state=0)
    assert [r["method"] for r in named.table_] == ["none", "temperature", "structured"]
    st = StackedCalibrator().fit(z, y)
    assert set(st.methods_).isdisjoint(FULL_MAPS)


def test_row_weights_are_refused():
    z, y = make(n=200)
    with pytest.raises(LogitkitValueError, match="sample_weight"):
        StackedCalibrator().fit(z, y, np.ones(200))


def test_saved_mixture_is_restored_exactly():
    z, y = make(n=500, seed=8)
    st = StackedCalibrator(methods=["vector", "dirichlet", "isotonic"]).fit(z, y)
    again = Calibrator.from_dict(json.loads(json.dumps(st.to_dict())))
    assert type(again) is StackedCalibrator and again.methods_ == st.methods_
    assert np.array_equal(again.transform(z), st.transform(z))
    assert [type(c) for c in again.components_] == [type(c) for c in st.components_]


def test_dask_input_gives_the_numpy_fit():
    import dask
    import dask.array as da

    z, y = make(n=600, seed=9)
    ref = StackedCalibrator(methods=["vector"]).fit(z, y)
    dz, dy = da.from_array(z, chunks=(150, 4)), da.from_array(y, chunks=150)
    with dask.config.set(scheduler="threads"):
        est = StackedCalibrator(methods=["vector"]).fit(dz, dy)
        out = est.predict_proba(dz)
        assert isinstance(out, da.Array)
        assert_close(out.compute(), ref.predict_proba(z), rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------- select's rule


def _row(method, nll_value, gain_z=2.0, gain_z_temperature=2.0, **extra):
    return {"method": method, "nll": nll_value, "ece": 0.0, "brier": 0.0, "accuracy": 0.9,
            "gain_z": gain_z, "gain_z_temperature": gain_z_temperature, "error": None,
            "converged": True, "at_bound": False, **extra}


@pytest.mark.parametrize("mix, apart, scoring, stacked_nll, chosen", [
    (True, False, "nll", 0.29, "stacked"),  # below none's 0.30
    (True, False, "nll", 0.31, "structured"),  # not below none's: the single rule
    (False, False, "nll", 0.10, "structured"),  # fewer than MIX_MIN_ERRORS errors
    (True, True, "nll", 0.10, "none"),  # separable
    (True, False, "brier", 0.10, "temperature"),  # the weights maximise likelihood, not Brier
    # (brier: every row's 0.0, a tie: the base)
])
def test_the_mixture_rule(mix, apart, scoring, stacked_nll, chosen):
    rows = [_row("none", 0.30, 0.0, -1.2), _row("temperature", 0.25, 1.2, 0.0),
            _row("structured", 0.20), _row("stacked", stacked_nll)]
    assert _choose(rows, scoring, apart, mix=mix) == chosen
    assert [r["method"] for r in rows if r["chosen"]] == [chosen]


def test_an_unusable_mixture_is_not_chosen():
    rows = [_row("none", 0.30, 0.0, -1.2), _row("temperature", 0.25, 1.2, 0.0),
            _row("stacked", 0.10, converged=False)]
    assert _choose(rows, "nll", mix=True) == "temperature"


def _with_errors(errors, n=300, seed=10):
    """Overconfident logits of ``n`` rows, exactly ``errors`` of them misclassified."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    z = rng.normal(size=(n, 3))
    z[np.arange(n), y] += 6.0
    z[np.arange(errors), (y[:errors] + 1) % 3] += 12.0
    return 3.0 * z, y


def test_chosen_on_data_with_enough_errors_only():
    z, y = _with_errors(MIX_MIN_ERRORS)
    sel = quiet_select(z, y, random_state=0)
    assert sel.row("stacked")["nll"] < sel.row("none")["nll"]
    assert sel.best_ == "stacked" and isinstance(sel.calibrator_, StackedCalibrator)
    z, y = _with_errors(MIX_MIN_ERRORS - 1)
    sel = quiet_select(z, y, random_state=0)
    assert sel.row("stacked")["error"] is not None or \
        sel.row("stacked")["nll"] < sel.row("none")["nll"]
    assert sel.best_ != "stacked"


def test_not_chosen_for_brier_or_on_separable_rows():
    z, y = make(n=900, seed=11)
    assert quiet_select(z, y, scoring="brier", random_state=0).best_ != "stacked"
    z, y = _with_errors(0)
    sel = quiet_select(z, y, random_state=0)
    assert sel.separable_ and sel.best_ == "none"


def test_stacked_alone_fits_every_candidate_and_counts_its_progress():
    z, y = make(n=400, seed=12)
    calls = []
    sel = quiet_select(z, y, methods="stacked", random_state=0,
                       progress=lambda done, total, name: calls.append((done, total, name)))
    assert [r["method"] for r in sel.table_] == list(CANDIDATES)
    total = len(CANDIDATES) * 5 + 1
    assert calls[-1] == (total, total, sel.best_)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert sum(1 for c in calls if c[2] == "stacked") >= 5


def test_mixture_beats_the_single_rule_on_a_small_real_model():
    # an overconfident gradient boosting model of breast_cancer (the benchmark's, split 0):
    # the mixture's test NLL is within 1% of the best single method's
    from test_select import _gbm_breast_cancer

    z, y, zt, yt = _gbm_breast_cancer(0)
    sel = quiet_select(z, y, random_state=0)
    assert sel.best_ == "stacked"
    zt2 = np.stack([np.zeros_like(zt), zt], axis=1)
    test = {}
    for m in CANDIDATES:
        if m in ("none", "stacked"):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            test[m] = float(nll(make_calibrator(m).fit(z, y).transform(zt2), yt,
                                from_logits=True))
    mixture = float(nll(sel.transform(zt2), yt, from_logits=True))
    assert mixture <= 1.01 * min(test.values())
    assert mixture < float(nll(TemperatureScaler().fit(z, y).transform(zt2), yt,
                               from_logits=True))
