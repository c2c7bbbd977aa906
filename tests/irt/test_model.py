"""Fitting (both backends), dimension choice, ability fits and the stored model folder."""

from __future__ import annotations

import gc
import json
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import expit

from evo_merge.errors import UserError
from evo_merge.irt import IRTModel, validate_responses
from evo_merge.irt.ability import map_logistic
from evo_merge.irt.model import FIT_STAGE
from evo_merge.irt.synthetic import make_synthetic_irt, synthetic_abilities


def _recovery(model, gen, theta):
    beta_r = np.corrcoef(model.beta, gen.beta)[0, 1]
    acc_r = np.corrcoef(model.predict(model.theta).mean(1), gen.prob(theta).mean(1))[0, 1]
    return beta_r, acc_r


def test_torch_recovers_difficulty_and_accuracy(md2pl, torch_model):
    gen, theta, _ = md2pl
    beta_r, acc_r = _recovery(torch_model, gen, theta)
    assert beta_r >= 0.9 and acc_r >= 0.9, (beta_r, acc_r)
    assert torch_model.alpha.shape == (500, 2) and torch_model.theta.shape == (100, 2)


def test_pyirt_recovers_difficulty_and_accuracy():
    # small and short: py-irt is slow; the 100 x 500 comparison is in scripts/bench_irt.py
    gen = make_synthetic_irt(300, dims=1, seed=11)
    theta, ids = synthetic_abilities(100, dims=1, seed=12)
    responses = validate_responses(gen.sample(theta, ids, seed=13))
    model = IRTModel.fit(responses, backend="pyirt", dims=1, seed=0, epochs=150, lr=0.15)
    beta_r, acc_r = _recovery(model, gen, theta)
    assert beta_r >= 0.9 and acc_r >= 0.9, (beta_r, acc_r)
    assert model.backend == "pyirt" and model.settings["epochs"] == 150


def test_auto_dims_prefers_one_dimension_on_unidimensional_data():
    gen = make_synthetic_irt(200, dims=1, seed=21)
    theta, ids = synthetic_abilities(80, dims=1, seed=22)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=23)), dims="auto", dims_grid=(1, 2, 3))
    assert model.dims == 1 and set(model.dims_errors) == {1, 2, 3}


def test_auto_dims_finds_two_independent_skills():
    gen = make_synthetic_irt(200, dims=2, seed=31)
    alpha = np.zeros((200, 2))
    alpha[:100, 0], alpha[100:, 1] = 2.5, 2.5  # two item blocks, each measuring one skill
    gen = type(gen)(alpha, gen.beta, gen.item_ids, gen.item_scenarios)
    theta, ids = synthetic_abilities(80, dims=2, seed=32)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=33)), dims="auto", dims_grid=(1, 2, 3))
    assert model.dims == 2
    assert model.dims_errors[2] < model.dims_errors[1]


def test_graded_scores_are_binarised_per_scenario_for_fitting():
    gen = make_synthetic_irt(60, dims=1, n_scenarios=2, seed=41)
    theta, ids = synthetic_abilities(30, dims=1, seed=42)
    long = gen.sample(theta, ids, seed=43)
    graded = long.scenario == "s1"
    long.loc[graded, "score"] = 0.2 + 0.6 * long.loc[graded, "score"]  # {0, 1} -> {0.2, 0.8}
    model = IRTModel.fit(validate_responses(long), dims=1)
    assert model.thresholds == {"s0": 0.5, "s1": 0.8}
    assert model.responses[:, 30:].max() == pytest.approx(0.8)  # raw scores are kept


@pytest.mark.parametrize("mean", [(0.0, 0.0), (0.7, -0.4)])  # the second: mp-IRT's prior on merge coefficients
def test_map_logistic_matches_scipy_and_stays_finite(mean):
    rng = np.random.default_rng(0)
    design, offset = rng.normal(size=(15, 2)), rng.normal(size=15)
    y = (rng.random(15) < 0.6).astype(float)
    y[3] = np.nan
    prec, mean = np.array([[1.0, 0.3], [0.3, 0.8]]) / 1.5**2, np.array(mean)

    def neg_post(z):
        logit = design @ z - offset
        ok = ~np.isnan(y)
        return -(y[ok] * logit[ok] - np.logaddexp(0, logit[ok])).sum() + 0.5 * (z - mean) @ prec @ (z - mean)

    expected = minimize(neg_post, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
    got = map_logistic(design, offset, y[None], mean, prec)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    all_right = map_logistic(np.abs(design), offset, np.ones((1, 15)), np.zeros(2), prec)[0]
    assert np.isfinite(all_right).all() and (all_right > 0).all()
    assert expit(np.abs(design) @ all_right - offset).mean() > 0.7


def test_map_logistic_fits_each_row_on_its_own_observed_items():
    """A batch where rows miss different items and some items are missed by every row (as in the
    held-out loss of `dims: auto`): each row is its own MAP fit, and with nothing observed at all
    every row stays at the prior mean."""
    rng = np.random.default_rng(2)
    design, offset = rng.normal(size=(40, 3)), rng.normal(size=40)
    y = (rng.random((4, 40)) < 0.5).astype(float)
    y[rng.random((4, 40)) < 0.3] = np.nan
    y[:, 10:25] = np.nan  # observed by nobody
    prior, prec = np.array([0.2, -0.1, 0.0]), np.eye(3) / 1.5**2

    def neg_post(z, row):
        ok = ~np.isnan(row)
        logit = design[ok] @ z - offset[ok]
        return -(row[ok] * logit - np.logaddexp(0, logit)).sum() + 0.5 * (z - prior) @ prec @ (z - prior)

    got = map_logistic(design, offset, y, prior, prec)
    for s, row in enumerate(y):
        expected = minimize(neg_post, prior, args=(row,), method="BFGS", options={"gtol": 1e-10}).x
        np.testing.assert_allclose(got[s], expected, atol=1e-5)
    none_seen = map_logistic(design, offset, np.full((2, 40), np.nan), prior, prec)
    np.testing.assert_array_equal(none_seen, np.tile(prior, (2, 1)))


def test_map_logistic_converges_on_sharp_items_and_an_ill_conditioned_prior():
    """mp-IRT's case on real merges: items with alpha up to ~13 and a prior tight on the sum of
    the merge coefficients. Plain Newton steps overshoot there and land far from the optimum."""
    rng = np.random.default_rng(1)
    ends = np.array([-0.35, -0.34, 2.73])[:, None]  # endpoint abilities (1-D)
    alpha, beta = rng.uniform(2.0, 13.0, (25, 1)), rng.uniform(-6.0, 3.6, 25)
    design = alpha @ ends.T
    y = (beta < 0).astype(float)  # the easy items right, the hard ones wrong
    prior, prec = np.full(3, 1 / 3), np.eye(3) / 0.5**2 + np.ones((3, 3)) / 0.05**2

    def neg_post(z):
        logit = design @ z - beta
        return -(y * logit - np.logaddexp(0, logit)).sum() + 0.5 * (z - prior) @ prec @ (z - prior)

    expected = minimize(neg_post, prior, method="BFGS", options={"gtol": 1e-10}).x
    got = map_logistic(design, beta, y[None], prior, prec)[0]
    assert neg_post(got) == pytest.approx(neg_post(expected), abs=1e-6)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_save_load_round_trip(tmp_path, torch_model):
    torch_model.save(tmp_path / "m")
    loaded = IRTModel.load(tmp_path / "m")
    for key in ("alpha", "beta", "theta", "responses", "cv_alpha", "cv_beta", "cv_held"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(torch_model, key))
    assert loaded.item_ids == torch_model.item_ids and loaded.thresholds == torch_model.thresholds
    assert json.loads((tmp_path / "m" / "model.json").read_text())["format_version"] == 2


def test_saving_over_another_model_drops_its_anchor_sets(tmp_path, torch_model, make_model):
    """`load_anchors` handed the replaced model's sets out for the new one; `irt fit --overwrite`
    already dropped them. Other files in anchors/ stay, and a linked anchors/ is refused before
    the model is written."""
    from evo_merge.irt import load_anchors, select_anchors

    folder = torch_model.save(tmp_path / "m")
    chosen = select_anchors(torch_model, budget=5, method="random")
    chosen.save(folder)
    (folder / "anchors" / "notes.txt").write_text("mine")
    IRTModel.load(folder).save(folder)  # the same model saved again where it was loaded from: its sets stay
    assert load_anchors(folder, budget=5, method="random") == chosen
    meta = json.loads((folder / "model.json").read_text())
    del meta["params_digest"]  # as saved before model.json recorded its parameters' digest
    (folder / "model.json").write_text(json.dumps(meta))
    IRTModel.load(folder).save(folder)  # still the same model: its sets stay
    assert load_anchors(folder, budget=5, method="random") == chosen
    other = make_model([1.0, 2.0], [0.0, 1.0])
    other.save(folder)
    with pytest.raises(UserError, match="no stored anchor sets match"):
        load_anchors(folder, budget=5, method="random")
    assert (folder / "anchors" / "notes.txt").read_text() == "mine"
    assert IRTModel.load(folder).item_ids == other.item_ids

    linked = torch_model.save(tmp_path / "linked")
    (tmp_path / "elsewhere").mkdir()
    select_anchors(torch_model, budget=5, method="random").save(tmp_path / "elsewhere")
    (linked / "anchors").symlink_to(tmp_path / "elsewhere" / "anchors")
    with pytest.raises(UserError, match="is a link"):
        other.save(linked)
    assert IRTModel.load(linked).item_ids == torch_model.item_ids
    assert (tmp_path / "elsewhere" / "anchors" / "random-5.json").is_file()


def test_saving_over_another_model_removes_its_anchor_sets_and_nothing_else(tmp_path, make_model):
    """Only `<method>-<budget>.json` files of a known method and a whole-number budget are anchor sets:
    a user's JSON beside them (`mine.json`, `random-best.json`) and other files stay. Where the sets
    were all the folder held, `anchors/` goes too."""
    from evo_merge.irt import select_anchors

    first = make_model([1.0, 0.5, 2.0, 1.5], [0.0, 1.0, -1.0, 0.5], responses=np.eye(4)[[0, 1, 2, 3, 0, 1]])
    other = make_model([1.0, 2.0], [0.0, 1.0])
    folder = first.save(tmp_path / "m")
    select_anchors(first, budget=2, method="random").save(folder)
    anchors = folder / "anchors"
    assert sorted(p.name for p in anchors.iterdir()) == ["random-2.json"]
    mine = {"mine.json": '{"mine": 1}', "random-best.json": '{"best": 1}', "notes.txt": "notes"}
    for name, text in mine.items():
        (anchors / name).write_text(text)
    other.save(folder)
    assert {p.name: p.read_text() for p in anchors.iterdir()} == mine

    alone = first.save(tmp_path / "alone")
    select_anchors(first, budget=2, method="random").save(alone)
    other.save(alone)
    assert sorted(p.name for p in alone.iterdir()) == ["model.json", "params.npz"]


def _cut_short(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # still starts with "PK": zipfile.BadZipFile, not ValueError


def _garbage(path):
    path.write_bytes(np.random.default_rng(0).bytes(2000))  # no zip at all: numpy's ValueError


def _bad_member(path):
    with zipfile.ZipFile(path) as z:
        first = z.infolist()[0]
        start = first.header_offset + 30 + len(first.filename) + len(first.extra)
    data = bytearray(path.read_bytes())
    data[start + first.file_size // 2] ^= 0xFF  # a byte of the first array's data: its CRC fails on read
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_cut_short, _garbage, _bad_member])
def test_saving_over_a_damaged_copy_of_the_same_model_replaces_it(tmp_path, make_model, damage):
    """A params.npz that cannot be read is not the model being saved, whatever reading it raises:
    `save` (and `irt fit --overwrite`) crashed with a zipfile.BadZipFile traceback over a params.npz cut
    short, with model.json the same (a refit with the same seed writes it identical). The new model
    replaces the damaged one, and the anchor sets chosen on it go, as over any other model."""
    from evo_merge.irt import select_anchors

    model = make_model([1.0, 0.5, 2.0, 1.5], [0.0, 1.0, -1.0, 0.5], responses=np.eye(4)[[0, 1, 2, 3, 0, 1]])
    folder = model.save(tmp_path / "m")
    select_anchors(model, budget=2, method="random").save(folder)
    damage(folder / "params.npz")
    with pytest.raises(UserError, match="corrupt parameter file"):
        IRTModel.load(folder)  # the damage is one the loader sees

    with warnings.catch_warnings(record=True) as caught:  # np.load left the cut-short file open
        warnings.simplefilter("always", ResourceWarning)
        assert model.save(folder) == folder
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    loaded = IRTModel.load(folder)
    for key in ("alpha", "beta", "theta", "responses", "cv_alpha", "cv_beta", "cv_held"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(model, key))
    assert loaded.item_ids == model.item_ids and loaded.subject_ids == model.subject_ids
    assert not (folder / "anchors").exists()  # its one set went with the damaged model; nothing else was there
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "params.npz"]


def test_format_1_folders_load_with_their_split_half_fit_as_one_fold(tmp_path, torch_model):
    """The shipped irt_models/ are format 1: val_alpha/val_beta fitted without val_subjects."""
    folder = torch_model.save(tmp_path / "m")
    held = np.flatnonzero(torch_model.cv_held[0])
    np.savez(folder / "params.npz", alpha=torch_model.alpha, beta=torch_model.beta, theta=torch_model.theta,
             responses=torch_model.responses, val_alpha=torch_model.cv_alpha[0], val_beta=torch_model.cv_beta[0],
             val_subjects=held)
    _edit(folder, format_version=1)
    loaded = IRTModel.load(folder)
    np.testing.assert_array_equal(loaded.cv_alpha, torch_model.cv_alpha[:1])
    assert loaded.cv_held.shape == (1, 100) and (np.flatnonzero(loaded.cv_held[0]) == held).all()


def test_cross_fit_folds_split_the_subjects_and_each_fit_misses_its_fold(md2pl, torch_model):
    """Two folds of random halves; each fold's item parameters come from the other half only:
    refitting that half alone gives them."""
    from evo_merge.irt.backends import fit_torch
    from evo_merge.irt.responses import ResponseMatrix

    held = torch_model.cv_held
    assert held.shape == (2, 100) and (held.sum(axis=1) == 50).all() and (held[0] ^ held[1]).all()
    binary = ResponseMatrix.from_long(md2pl[2]).scores
    for fold in (0, 1):
        refit = fit_torch(binary[~held[fold]], 2, seed=0)
        np.testing.assert_allclose(refit.beta, torch_model.cv_beta[fold])


def test_dims_are_capped_by_the_number_of_subjects():
    gen = make_synthetic_irt(120, dims=3, seed=51)
    theta, ids = synthetic_abilities(10, dims=3, seed=52)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=53)), dims="auto")
    assert model.dims == 1 and set(model.dims_errors) == {1}  # 10 subjects: D <= 10 // 6


def test_priors_tighten_with_few_subjects_so_items_stay_finite():
    """10 subjects: items everyone got right (or wrong) keep moderate difficulties, unlike an
    unregularised fit that pushes them towards ±infinity."""
    from evo_merge.irt.backends import ALPHA_SD, BETA_SD, prior_sds

    assert prior_sds(10) == pytest.approx((ALPHA_SD / 2, BETA_SD / 2)) and prior_sds(400) == (ALPHA_SD, BETA_SD)
    gen = make_synthetic_irt(300, dims=1, seed=61)
    theta, ids = synthetic_abilities(10, dims=1, seed=62)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=63)), dims=1)
    # without the tightening (priors at full strength) this fit reaches |β| 3.8 and |α| 5.0
    assert np.abs(model.beta).max() < 3.0 and np.linalg.norm(model.alpha, axis=1).max() < 3.5


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "params.npz").unlink(), "params.npz missing"),
        (lambda d: (d / "model.json").write_text("{not json"), "corrupt model file"),
        (lambda d: (d / "params.npz").write_bytes(b"PK\x03\x04 truncated"), "corrupt parameter file"),
        (lambda d: _edit(d, format_version=99), "format version 99 is not supported"),
        (lambda d: _edit(d, kind="something-else"), "not an evo-merge IRT model"),
        (lambda d: _edit(d, item_ids=["a", "b"]), "disagree on the model's shape"),
        (lambda d: _edit(d, thresholds=None), "incomplete IRT model"),
        (lambda d: _edit(d, dims=None), r"incomplete IRT model \(missing 'dims'\)"),  # was a bare KeyError
        (lambda d: _edit(d, dims=7), "disagree on the model's shape"),
        # an integer of more digits than Python converts: a ValueError traceback (audit 117)
        (lambda d: (d / "model.json").write_text('{"seed": ' + "9" * 5000 + "}"), "corrupt model file"),
        # values of another kind than save writes: TypeError and AttributeError tracebacks
        (lambda d: _edit(d, seed=[1]), r"model.json: not an IRT model as evo-merge writes it \(int\(\) argument"),
        (lambda d: _edit(d, thresholds=[1]), "model.json: not an IRT model as evo-merge writes it"),
        (lambda d: _edit(d, item_ids=5), "model.json: not an IRT model as evo-merge writes it"),
        # a bad value of the right kind was blamed on params.npz (audit 133)
        (lambda d: _edit(d, seed="x"), r"model.json: not an IRT model as evo-merge writes it \(invalid literal"),
        (lambda d: _edit(d, thresholds={"s0": "abc"}), "model.json: not an IRT model as evo-merge writes it"),
        # no zip: numpy's refusal advised loading it "unsafely" with pickle
        (lambda d: (d / "params.npz").write_text("hello"), r"params.npz: corrupt parameter file \(not an .npz "
                                                           r"archive of arrays\)$"),
        # values no fit writes loaded, and every estimate from them was a blank with exit 0
        (lambda d: _edit_params(d, "alpha", lambda a: np.where(a == a.max(), np.nan, a)),
         "params.npz: alpha holds NaN or infinite values"),
        (lambda d: _edit_params(d, "theta", lambda a: a + np.inf), "params.npz: theta holds NaN or infinite"),
        (lambda d: _edit_params(d, "responses", lambda a: a * 7), "params.npz: responses holds scores outside"),
    ],
)
def test_corrupt_or_incompatible_folder(tmp_path, torch_model, damage, message):
    import gc
    import warnings

    folder = torch_model.save(tmp_path / "m")
    damage(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(UserError, match=message):
            IRTModel.load(folder)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]  # a file left open by np.load


@pytest.mark.parametrize("claim", ["terabytes", "just over"])
def test_a_params_file_claiming_arrays_larger_than_its_model_is_refused_before_reading(tmp_path, torch_model, claim):
    """A received run folder's params.npz, compressed, may claim an array of any size: every array
    was read before the shapes were checked. The headers are checked first now (audit 95), against
    the largest array a model of its items, subjects and dimensions holds (its folds at most one
    per subject): a claim just over that is refused too (audit 100)."""
    import io
    import zipfile

    folder = torch_model.save(tmp_path / "m")
    items, subjects = len(torch_model.item_ids), len(torch_model.subject_ids)
    shape = (10**6, 10**6) if claim == "terabytes" else (subjects + 3, items + 1, torch_model.dims)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(folder / "params.npz") as npz:
        members = {name: npz.read(name) for name in npz.namelist()}
    members["alpha.npy"] = header.getvalue()  # the magic string and a header declaring 8 TB, no data
    with zipfile.ZipFile(folder / "params.npz", "w") as npz:
        for name, data in members.items():
            npz.writestr(name, data)
    with pytest.raises(UserError, match=rf"disagree on the model's shape \(params.npz's array 'alpha' has shape "
                                        rf"\[{', '.join(map(str, shape))}\], more than a model of {items} items and "
                                        rf"{subjects} subjects holds\)"):
        IRTModel.load(folder)



def _replace_member(npz_path, name, data):
    import zipfile

    with zipfile.ZipFile(npz_path) as npz:
        members = {n: npz.read(n) for n in npz.namelist()}
    members[name] = data
    with zipfile.ZipFile(npz_path, "w", compression=zipfile.ZIP_DEFLATED) as npz:
        for n, d in members.items():
            npz.writestr(n, d)


def test_a_model_json_claiming_more_dimensions_than_subjects_is_refused_before_reading(tmp_path, torch_model):
    """The size check took its bound from model.json's own `dims`, unbounded: a received folder
    declaring 2^28 dimensions and 2 MB of compressed zeros made `irt estimate` take 2.5 GB before
    the shapes were compared (audit 116). A fit has at most one dimension per subject."""
    import io

    folder = torch_model.save(tmp_path / "m")
    items, subjects = len(torch_model.item_ids), len(torch_model.subject_ids)
    dims = 1000 * subjects
    _edit(folder, dims=dims)
    data = io.BytesIO()
    np.lib.format.write_array(data, np.zeros((items, dims)))  # what model.json's word allows: 8 bytes a cell
    _replace_member(folder / "params.npz", "alpha.npy", data.getvalue())
    with pytest.raises(UserError, match=rf"model.json declares {dims} ability dimensions for {subjects} subjects"):
        IRTModel.load(folder)


def test_an_array_header_claiming_a_megabyte_is_refused_before_it_is_read(tmp_path, torch_model):
    """numpy reads the whole header an .npy declares before it checks its size: a 1 MB member of
    spaces took 2.5 GB to refuse (audit 116). A member unpacking to more than the model's largest
    array and a header's room is refused from the zip's directory, before it is opened."""
    folder = torch_model.save(tmp_path / "m")
    length = 10**6
    bomb = np.lib.format.magic(2, 0) + length.to_bytes(4, "little") + b" " * length
    _replace_member(folder / "params.npz", "beta.npy", bomb)
    with pytest.raises(UserError, match=rf"params.npz's array 'beta' unpacks to {len(bomb)} bytes, more than a model"):
        IRTModel.load(folder)
    short = np.lib.format.magic(2, 0) + (10**9).to_bytes(4, "little") + b" " * 100  # a gigabyte claimed, not held
    _replace_member(folder / "params.npz", "beta.npy", short)
    with pytest.raises(UserError, match=r"corrupt parameter file \(array 'beta' declares a header of 1000000000 bytes"):
        IRTModel.load(folder)


def test_a_model_of_fewer_items_than_dimensions_loads_again(tmp_path):
    """θ (subjects x D) is the largest array where the items are fewer than D: the size bound left it
    out, and a model the fit had just saved was refused (audit 117)."""
    gen = make_synthetic_irt(3, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(30, dims=1, seed=2)
    model = IRTModel.fit(gen.sample(theta, ids, seed=3), dims=4, seed=0)
    loaded = IRTModel.load(model.save(tmp_path / "m"))
    assert loaded.theta.shape == (30, 4) and np.array_equal(loaded.theta, model.theta)

def _edit_params(folder, name, change):
    """params.npz with one array changed, and model.json's digest of it made to match (an edit, not a cut save)."""
    from evo_merge.irt.model import params_digest

    with np.load(folder / "params.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays[name] = change(arrays[name])
    np.savez(folder / "params.npz", **arrays)
    _edit(folder, params_digest=params_digest(arrays))


def _edit(folder, **changes):
    meta = json.loads((folder / "model.json").read_text())
    for key, value in changes.items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    (folder / "model.json").write_text(json.dumps(meta))


def test_fit_rejects_bad_settings(md2pl):
    with pytest.raises(UserError, match="unknown IRT backend"):
        IRTModel.fit(md2pl[2], backend="stan")
    with pytest.raises(UserError, match="dims must be"):
        IRTModel.fit(md2pl[2], dims=0)


def test_fit_names_what_it_takes_and_checks_the_table_as_the_loader_does(tmp_path):
    """A path was "TypeError: string indices must be integers"; a long table without a scenario
    column a KeyError 'scenario' (the loader puts it in one scenario); a duplicate went unremarked."""
    gen = make_synthetic_irt(20, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(8, dims=1, seed=2)
    data = validate_responses(gen.sample(theta, ids, seed=3))
    data.to_csv(tmp_path / "responses.csv", index=False)
    for given in (str(tmp_path / "responses.csv"), tmp_path / "responses.csv", data.to_dict("records")):
        with pytest.raises(UserError, match=r"takes a response table \(a pandas DataFrame\), not .*load_responses"):
            IRTModel.fit(given, dims=1)
    bare = data[["subject", "item", "score"]]
    model = IRTModel.fit(bare, dims=1)
    assert model.scenarios == ["all"] and np.array_equal(model.beta, IRTModel.fit(data, dims=1).beta)
    with pytest.raises(UserError, match="duplicate response for subject"):
        IRTModel.fit(pd.concat([bare, bare.iloc[:1]]), dims=1)


def test_fit_takes_a_numpy_integer_dims_and_saves_it_as_a_number(tmp_path):
    gen = make_synthetic_irt(20, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(8, dims=1, seed=2)
    data = validate_responses(gen.sample(theta, ids, seed=3))
    model = IRTModel.fit(data, dims=np.int64(1))
    assert model.dims == 1 and model.settings["dims"] == 1
    model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "model.json").read_text())["settings"]["dims"] == 1
    for dims in (True, 1.0, "1"):
        with pytest.raises(UserError, match="dims must be 'auto' or a positive integer"):
            IRTModel.fit(data, dims=dims)


def test_pyirt_retries_at_a_lower_rate_when_it_diverges(caplog):
    """lr 5 sends py-irt's variational parameters to NaN: the fit says so and retries at lr x 0.2,
    for 5x the epochs (rate x epochs kept)."""
    from evo_merge.irt.backends import fit_pyirt

    gen = make_synthetic_irt(60, dims=1, seed=11)
    theta, _ = synthetic_abilities(30, dims=1, seed=12)
    binary = (np.random.default_rng(0).random((30, 60)) < gen.prob(theta)).astype(float)
    with caplog.at_level("INFO", logger="evo_merge.irt"):
        params = fit_pyirt(binary, 1, epochs=40, lr=5.0)
    assert "py-irt diverged at lr=5" in caplog.text and "retrying at lr=1 for 200 epochs" in caplog.text
    assert f"py-irt fit 30 x 60, D=1, {params.epochs} epochs, lr={params.lr:g}" in caplog.text
    assert params.lr < 5 and params.epochs * params.lr == pytest.approx(40 * 5.0)
    assert np.isfinite(params.beta).all() and np.corrcoef(params.beta, gen.beta)[0, 1] > 0.5


def test_pyirt_divergence_leaves_only_the_retry_line_and_returns_the_rate_used(caplog):
    """pyro's NaN warnings (two lines each) reached stderr around the one-line retry message."""
    import warnings

    from evo_merge.irt.backends import fit_pyirt

    gen = make_synthetic_irt(60, dims=1, seed=11)
    theta, _ = synthetic_abilities(6, dims=1, seed=12)  # 6 x 60 at lr 3: pyro's loss reaches NaN
    binary = (np.random.default_rng(0).random((6, 60)) < gen.prob(theta)).astype(float)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("INFO", logger="evo_merge.irt"):
        warnings.simplefilter("always")
        params = fit_pyirt(binary, 1, epochs=40, lr=3.0)
    assert [str(w.message) for w in caught if "NaN" in str(w.message)] == []
    assert "py-irt diverged at lr=3" in caplog.text
    fitted = [r.args for r in caplog.records if r.getMessage().startswith("py-irt fit")]
    assert len(fitted) == 1 and params.lr == fitted[0][4] < 5.0  # the rate its fit line gives


def test_model_settings_record_the_rate_each_pyirt_fit_used(md2pl, monkeypatch):
    """settings recorded the requested lr; the folds and the full fit each restart there and may
    retry lower, so one model can mix rates."""
    from evo_merge.irt import backends

    responses = md2pl[2][md2pl[2].subject.isin(md2pl[2].subject.unique()[:20])]

    def diverging(binary, dims, seed, epochs, lr):  # the full fit (20 subjects) needs lr <= 0.5, a fold 2
        if lr > (0.5 if binary.shape[0] == 20 else 2.0):
            raise ValueError("Expected parameter concentration to be positive")
        return backends.fit_torch(binary, dims, seed)

    monkeypatch.setattr(backends, "_train_pyirt", diverging)
    model = IRTModel.fit(responses, backend="pyirt", dims=1, seed=0, lr=5.0)
    assert model.settings["lr"] == 5.0  # as requested
    assert model.settings["lr_used"] == pytest.approx(0.2)  # 5 -> 1 -> 0.2
    assert model.settings["cv_lr_used"] == [pytest.approx(1.0)] * 2  # 5 -> 1
    # a retry at a fifth of the rate runs 5x the epochs: at the same epochs the fit stopped far from
    # converged (parameters shrunk 4-5x towards 0) and was stored
    assert model.settings["epochs_used"] == 25 * backends.PYIRT_EPOCHS
    assert model.settings["cv_epochs_used"] == [5 * backends.PYIRT_EPOCHS] * 2
    # at its defaults the rate and epochs are recorded too (only rates given by hand were)
    default = IRTModel.fit(responses, backend="pyirt", dims=1, seed=0)
    assert (default.settings["lr"], default.settings["epochs"]) == (backends.PYIRT_LR, backends.PYIRT_EPOCHS)


def test_a_fit_counts_its_fits_as_it_goes():
    """Two fits per D tried (each half of the subjects), then the chosen D on every subject: the
    progress a leaderboard-sized fit shows instead of minutes of nothing."""
    gen = make_synthetic_irt(60, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(24, dims=1, seed=2)
    calls = []
    IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=3)), dims="auto", dims_grid=(1, 2, 3),
                 progress=lambda *call: calls.append(call))
    assert calls == [(FIT_STAGE, done, 7) for done in range(8)]


@pytest.mark.parametrize("missing", [0.0, 0.05])
def test_a_large_matrix_is_fitted_in_float32_and_predicts_as_float64_does(monkeypatch, missing):
    """Above FLOAT32_CELLS the torch fit runs in float32 (four times faster on a leaderboard's
    matrix); its predictions must stay those of the float64 fit, and what it returns float64."""
    from evo_merge.irt import backends

    gen = make_synthetic_irt(1500, dims=2, n_scenarios=3, seed=1)
    theta, _ = synthetic_abilities(60, dims=2, seed=2)
    rng = np.random.default_rng(3)
    binary = (rng.random((60, 1500)) < gen.prob(theta)).astype(float)
    binary[rng.random(binary.shape) < missing] = np.nan
    wide = backends.fit_torch(binary, 2)
    assert backends.fit_dtype(binary) == np.float64
    monkeypatch.setattr(backends, "FLOAT32_CELLS", binary.size)
    assert backends.fit_dtype(binary) == np.float32
    narrow = backends.fit_torch(binary, 2)
    assert {p.dtype for p in (narrow.alpha, narrow.beta, narrow.theta)} == {np.dtype(np.float64)}
    p64, p32 = (expit(f.theta @ f.alpha.T - f.beta) for f in (wide, narrow))
    assert np.abs(p64 - p32).mean() < 1e-3 and np.abs(p64.mean(axis=1) - p32.mean(axis=1)).max() < 2e-3
    assert not np.array_equal(p64, p32)  # it did run in the other precision


def test_every_fit_of_a_model_runs_in_the_precision_its_whole_matrix_chose(monkeypatch):
    """The folds' fits (half the subjects) in the same precision as the full fit, as recorded."""
    from evo_merge.irt import backends

    gen = make_synthetic_irt(80, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(20, dims=1, seed=2)
    data = validate_responses(gen.sample(theta, ids, seed=3))
    assert IRTModel.fit(data, dims=1).settings["dtype"] == "float64"
    used = []
    fit = backends.fit_torch
    monkeypatch.setattr(backends, "FLOAT32_CELLS", 20 * 80)
    monkeypatch.setitem(backends.BACKENDS, "torch", lambda *a, **k: used.append(k["dtype"]) or fit(*a, **k))
    assert IRTModel.fit(data, dims=1).settings["dtype"] == "float32" and used == ["float32"] * 3


def test_every_backend_the_config_offers_is_its_own_fit():
    """config and the CLI offer `irt.kinds.BACKEND_NAMES`; each name fits with its own function."""
    from evo_merge.irt.backends import BACKENDS, fit_pyirt, fit_torch
    from evo_merge.irt.kinds import BACKEND_NAMES

    assert set(BACKENDS) == set(BACKEND_NAMES)
    assert BACKENDS["torch"] is fit_torch and BACKENDS["pyirt"] is fit_pyirt


def _draws() -> tuple[float, float, float]:
    import random

    import torch

    return float(torch.rand(1)), float(np.random.rand()), random.random()


def _seed_callers(seed: int) -> None:
    import random

    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.mark.parametrize("backend,options", [("torch", {}), ("pyirt", {"epochs": 20, "lr": 0.1})])
def test_a_fit_leaves_the_callers_random_streams_alone(backend, options):
    """The torch fit reseeded torch's global generator and py-irt's (pyro.set_rng_seed) numpy's and
    `random`'s too: a caller got the same "random" numbers after every fit whatever they had seeded.
    The fit itself stays determined by its seed, whatever the caller's generators hold."""
    gen = make_synthetic_irt(20, dims=1, n_scenarios=1, seed=1)
    theta, ids = synthetic_abilities(8, dims=1, seed=2)
    data = validate_responses(gen.sample(theta, ids, seed=3))
    fits = []
    for caller_seed in (1, 2):
        _seed_callers(caller_seed)
        expected = _draws()
        _seed_callers(caller_seed)
        fits.append(IRTModel.fit(data, backend=backend, dims=1, seed=0, **options))
        assert _draws() == expected
    assert np.array_equal(fits[0].alpha, fits[1].alpha) and np.array_equal(fits[0].beta, fits[1].beta)


@pytest.mark.parametrize("losses,chosen", [
    ({1: 0.6000, 2: 0.5990, 3: 0.6100}, 1),  # D=1 within 0.5% of the best (0.5990 * 1.005 = 0.60200)
    ({1: 0.62, 2: 0.60}, 2),  # D=1 3.3% worse: not within
    ({1: 0.6000, 2: 0.5970, 3: 0.5969}, 2),  # 0.5969 * 1.005 = 0.59988: D=2 within, D=1 not
])
def test_auto_dims_is_the_smallest_d_within_half_a_percent_of_the_best_held_out_loss(monkeypatch, losses, chosen):
    """With dims "auto" the model takes the smallest D whose held-out log-loss is within 0.5% of the
    best, not the best itself (audit 133, M11): the cross-fits' losses set by hand, the chosen D's
    fits kept."""
    from evo_merge.irt import model as model_module

    cross_fits = model_module._cross_fits

    def judged(binary, grid, seed, **kwargs):
        fold, fits, _ = cross_fits(binary, grid, seed, **kwargs)
        assert list(grid) == list(losses)
        return fold, fits, dict(losses)

    monkeypatch.setattr(model_module, "_cross_fits", judged)
    gen = make_synthetic_irt(30, dims=1, seed=41)
    theta, ids = synthetic_abilities(24, dims=1, seed=42)
    model = IRTModel.fit(validate_responses(gen.sample(theta, ids, seed=43)), dims="auto", dims_grid=tuple(losses))
    assert model.dims == chosen and model.dims_errors == losses
    assert model.alpha.shape[1] == model.cv_alpha.shape[2] == chosen


def test_a_campaign_sized_fit_is_the_same_on_any_number_of_threads():
    """torch's reductions add in an order set by its thread count, and L-BFGS carried the last bits
    far: the same responses fitted on 1 and 2 threads differed by 0.008 in α, and every
    stratified-irt anchor with it (audit 133). A float64 fit runs on one thread, and leaves the
    caller's thread count as it was."""
    import torch

    from evo_merge.irt.backends import fit_torch

    gen = make_synthetic_irt(1500, dims=2, n_scenarios=3, seed=7)
    theta, ids = synthetic_abilities(60, dims=2, seed=8)
    binary = (gen.sample(theta, ids, seed=9).pivot(index="subject", columns="item", values="score") >= 0.5)
    before, fits = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            fits.append(fit_torch(binary.to_numpy(dtype=float), 2))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert all(np.array_equal(getattr(fits[0], p), getattr(fits[1], p)) for p in ("alpha", "beta", "theta"))


def test_a_cell_no_subject_was_scored_on_is_left_out_of_the_fit():
    """An item only three subjects were scored on, all right: an easy item to the fit. Missing cells
    counted as wrong answers (no mask) made it a hard one, right for one subject in ten."""
    from evo_merge.irt.backends import fit_torch

    rng = np.random.default_rng(0)
    theta, beta = rng.normal(size=(30, 1)), rng.normal(size=20)
    binary = (rng.random((30, 20)) < expit(theta - beta)).astype(float)
    binary[:, 0] = np.nan
    binary[:3, 0] = 1.0
    fitted = fit_torch(binary, 1)
    easy = expit(fitted.theta @ fitted.alpha.T - fitted.beta)[:, 0]
    assert easy.mean() > 0.5
