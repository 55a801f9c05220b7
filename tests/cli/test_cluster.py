"""``logitkit calibrate --scheduler``: the shards of a folder read and fitted on a Dask
cluster, cross-fitted there, with the figures a NumPy computation of the same folds gives."""

from __future__ import annotations

import numpy as np
import pytest

from logitkit.calibration import TemperatureScaler, VectorScaler, accuracy, brier_score, ece, nll


def write_shards(folder, z, y, parts=3):
    folder.mkdir()
    for i, (zs, ys) in enumerate(zip(np.array_split(z, parts), np.array_split(y, parts),
                                     strict=True)):
        np.savez(folder / f"part-{i:02d}.npz", logits=zs.astype(np.float32), labels=ys)


def _oof_figures(cls, z, y, cv, seed):
    """The interleaved folds of the cluster path, computed in memory."""

    z = z.astype(np.float32).astype(np.float64)
    folds = (np.arange(len(y)) + seed) % cv
    lp = np.empty(z.shape)
    for f in range(cv):
        cal = cls().fit(z[folds != f], y[folds != f])
        lp[folds == f] = cal.predict_log_proba(z[folds == f])
    p = np.exp(lp)
    return {"nll": float(nll(lp, y, from_logits=True)), "ece": float(ece(p, y)),
            "brier": float(brier_score(p, y)), "accuracy": float(accuracy(p, y))}


@pytest.mark.parametrize(("method", "cls"), [("auto", TemperatureScaler),
                                             ("vector", VectorScaler)])
def test_a_folder_of_shards_is_cross_fitted_on_the_cluster(cli, client, make_data, tmp_path,
                                                            method, cls):
    z, y = make_data(3000, 5, seed=9)
    write_shards(tmp_path / "shards", z, y)
    out, _ = cli.ok("calibrate", tmp_path / "shards" / "part-*.npz", "--method", method,
                    "--cv", "4", "--seed", "1", "--scheduler", client.scheduler.address,
                    "--out", "dask", "--no-diagram", "--progress", "never")
    rep = cli.report("dask")
    assert len(rep["inputs"]) == 3 and rep["n_samples"] == 3000
    assert rep["method"] == cls.method
    assert rep["evaluation"]["kind"] == "cross-fitted" and rep["evaluation"]["folds"] == 4
    assert "4 interleaved folds on the cluster" in out
    expected = _oof_figures(cls, z, y, 4, 1)
    for key, value in expected.items():
        assert rep["after"][key] == pytest.approx(value, rel=1e-6), key
    assert [c["method"] for c in rep["candidates"]] == ["none", cls.method]
    assert rep["candidates"][1]["nll"] == rep["after"]["nll"]
    full = cls().fit(z.astype(np.float32), y)
    np.testing.assert_allclose(rep["calibrator"]["fitted"]["n_classes_"], 5)
    from logitkit.calibration import Calibrator

    np.testing.assert_allclose(Calibrator.from_dict(rep["calibrator"]).predict_proba(z),
                               full.predict_proba(z), rtol=1e-5, atol=1e-8)
    assert rep["after"]["ece"] < rep["before"]["ece"]


@pytest.mark.parametrize("method", ["isotonic", "histogram", "beta"])
def test_cluster_folds_weighted_zero_do_not_see_their_rows(cli, client, make_data, tmp_path,
                                                           method):
    # the cluster's fold fits are the method with the fold's rows weighted 0: for the
    # one-vs-rest calibrators too, they must equal fits that never had those rows
    from logitkit.calibration import make_calibrator

    z, y = make_data(1200, 3, seed=2)
    write_shards(tmp_path / "shards", z, y)
    cli.ok("calibrate", tmp_path / "shards", "--method", method, "--cv", "3", "--seed", "2",
           "--scheduler", client.scheduler.address, "--out", "w", "--no-diagram",
           "--progress", "never")
    rep = cli.report("w")
    assert rep["evaluation"]["kind"] == "cross-fitted" and rep["method"] == method
    expected = _oof_figures(lambda: make_calibrator(method), z, y, 3, 2)
    for key, value in expected.items():
        assert rep["after"][key] == pytest.approx(value, rel=1e-6), key


def test_cluster_with_a_test_file(cli, client, make_data, tmp_path):
    z, y = make_data(2000, 4, seed=3)
    write_shards(tmp_path / "shards", z[:1500], y[:1500])
    np.savez("test.npz", logits=z[1500:], labels=y[1500:])
    cli.ok("calibrate", tmp_path / "shards", "--test", "test.npz", "--scheduler",
           client.scheduler.address, "--out", "t", "--no-diagram")
    rep = cli.report("t")
    t = TemperatureScaler().fit(z[:1500].astype(np.float32), y[:1500]).temperature_
    assert cli.temperature(rep) == pytest.approx(t, rel=1e-8)
    assert rep["evaluation"]["kind"] == "test" and rep["evaluation"]["rows"] == 500
    from logitkit import softmax

    p = softmax(z[1500:].astype(np.float32).astype(np.float64) / t)
    assert rep["after"]["ece"] == pytest.approx(float(ece(p, y[1500:])), rel=1e-8)


def test_sharded_bad_input_is_one_line_and_exit_2(cli, client, make_data, tmp_path):
    z, y = make_data(600, 4, seed=10)
    write_shards(tmp_path / "shards", z, y)
    addr = ["--scheduler", client.scheduler.address, "--no-diagram"]
    cli.error("calibrate", tmp_path / "shards", "--binning", "quantile", "--out", "o1", *addr,
              match="--binning quantile")
    np.savez(tmp_path / "shards" / "part-09.npz", logits=np.ones((5, 3)), labels=np.zeros(5))
    cli.error("calibrate", tmp_path / "shards", "--out", "o2", *addr,
              match="different numbers of classes")
    np.savez(tmp_path / "shards" / "part-09.npz", logits=np.ones((5, 4)))
    cli.error("calibrate", tmp_path / "shards", "--out", "o3", *addr,
              match="part-09.npz: no labels found")
    cli.error("calibrate", tmp_path / "nothing-*.npz", "--out", "o4", *addr,
              match="no file matches")
    (tmp_path / "empty").mkdir()
    cli.error("calibrate", tmp_path / "empty", "--out", "o5", match="no prediction files")


def test_cluster_zero_probabilities_use_one_floor_for_every_shard_and_the_test(
        cli, client, make_data, tmp_path):
    # every shard and the --test file read a probability of 0 as half the smallest positive one
    # over all the shards; the report keeps it (input.zero_floor) for apply
    from logitkit import softmax

    z, y = make_data(2000, 4, seed=11)
    p = np.round(softmax(z.astype(np.float64)), 3)
    p /= p.sum(axis=1, keepdims=True)
    (tmp_path / "shards").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(1500), 3)):
        np.savez(tmp_path / "shards" / f"part-{i:02d}.npz", logits=p[rows], labels=y[rows])
    test = np.flatnonzero((p[1500:] == 0).any(axis=1))[:20] + 1500
    smallest = p[:1500][p[:1500] > 0].min()
    assert p[test][p[test] > 0].min() > smallest and (p[:1500] == 0).any()
    np.savez("test.npz", logits=p[test], labels=y[test])
    _, err = cli.ok("calibrate", tmp_path / "shards", "--test", "test.npz", "--method",
                    "temperature", "--scheduler", client.scheduler.address, "--out", "z",
                    "--no-diagram", "--progress", "never")
    rep = cli.report("z")
    assert rep["input"]["zero_floor"] == pytest.approx(np.log(smallest / 2), rel=1e-12)
    assert "test.npz" in err and "as in the calibration file" in err


def test_the_cluster_path_refuses_one_class_and_too_few_rows_as_the_local_path(
        cli, client, tmp_path):
    rng = np.random.default_rng(0)
    write_shards(tmp_path / "one", rng.normal(size=(60, 3)), np.zeros(60, dtype=np.int64))
    write_shards(tmp_path / "tiny", rng.normal(size=(6, 3)), np.array([0, 1] * 3))
    address = client.scheduler.address
    line = cli.error("calibrate", tmp_path / "one", "--scheduler", address, "--out", "x",
                     match="every label is 0; calibration needs rows of at least two classes")
    local = cli.error("calibrate", tmp_path / "one", "--out", "x", match="every label is 0")
    assert line == local
    cli.error("calibrate", tmp_path / "tiny", "--scheduler", address, "--cv", "10", "--out",
              "x", match="--cv 10: more folds than the 6 rows of")
