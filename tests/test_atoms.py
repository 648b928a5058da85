"""Tests for elit.atoms.locate_atoms, the AtomTable's optional columns and the atoms CSV."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from elit.atoms import locate_atoms, refine_gaussian
from elit.errors import InputError


def gaussian_map(positions, shape=(64, 64), sigma=1.5):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape)
    for r, c in positions:
        out = np.maximum(out, np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sigma**2)))
    return out


def grid_positions(rng, n=4, step=12.0, start=10.0):
    return np.array(
        [[start + i * step + rng.uniform(-0.5, 0.5), start + j * step + rng.uniform(-0.5, 0.5)]
         for i in range(n) for j in range(n)]
    )


def nearest(found, truth):
    d, _ = cKDTree(found).query(truth)
    return d


@pytest.mark.parametrize("refine", [False, True])
def test_subpixel_accuracy_on_clean_blobs(refine):
    rng = np.random.default_rng(0)
    pos = grid_positions(rng)
    table = locate_atoms(gaussian_map(pos)[None], refine=refine)
    assert len(table) == len(pos)
    assert nearest(table.positions(), pos).max() < 0.1
    assert np.all(table.frame == 0)
    assert np.all(table.uncertainty == 0)  # no ensemble information given
    assert np.allclose(table.probability, 1.0, atol=0.2)


def test_gaussian_refinement_is_exact_for_gaussian_peaks():
    pos = np.array([[20.3, 30.7]])
    img = gaussian_map(pos, sigma=2.0)
    r, c = refine_gaussian(img, np.array([20.0]), np.array([31.0]))
    assert abs(r[0] - 20.3) < 1e-6 and abs(c[0] - 30.7) < 1e-6


def test_empty_and_below_threshold_maps():
    assert len(locate_atoms(np.zeros((1, 16, 16)))) == 0
    table = locate_atoms(np.full((3, 1, 16, 16), 0.3), class_names=("C",))
    assert len(table) == 0 and table.class_names == ("C",)


def test_min_area_drops_single_pixels():
    p = np.zeros((1, 20, 20))
    p[0, 5, 5] = 0.9
    p[0, 10:13, 10:13] = 0.9
    table = locate_atoms(p, min_area=2)
    assert len(table) == 1
    assert table.row[0] == pytest.approx(11.0) and table.col[0] == pytest.approx(11.0)


def test_blobs_at_the_edge_are_found():
    pos = np.array([[0.0, 0.0], [63.0, 30.0], [30.0, 63.0]])
    table = locate_atoms(gaussian_map(pos)[None])
    assert len(table) == 3
    # cut blobs are pulled inwards by less than a pixel
    assert nearest(table.positions(), pos).max() < 1.0


def test_border_fit_places_atoms_cut_by_the_frame_edge():
    rng = np.random.default_rng(3)
    full = grid_positions(rng, n=6, step=11.0, start=3.0)  # a lattice running past every side of the crop
    shape = (60, 60)
    prob = gaussian_map(full, (70, 70), sigma=1.6)[2:62, 2:62]  # the top and left rows of blobs are cut
    inside = full - 2.0
    visible = inside[(inside.min(axis=1) > -1.5) & (inside.max(axis=1) < 60.5)]
    plain = locate_atoms(prob[None], threshold=0.3)
    fitted = locate_atoms(prob[None], threshold=0.3, border_fit=True)
    assert len(plain) == len(fitted)
    cut = (visible.min(axis=1) < 1.5) & (visible.min(axis=1) >= -0.5)  # centres in the field of view, blobs cut
    assert cut.sum() >= 4
    d_plain = nearest(plain.positions(), visible[cut])
    d_fit = nearest(fitted.positions(), visible[cut])
    assert d_plain.max() > 0.25  # the centroid of a cut blob lies too far inside
    assert d_fit.max() < 0.05 and d_fit.mean() < d_plain.mean() / 5
    whole = visible.min(axis=1) > 5
    np.testing.assert_allclose(nearest(fitted.positions(), visible[whole]), nearest(plain.positions(), visible[whole]))
    pos = fitted.positions()
    assert (pos >= -0.5).all() and (pos <= np.array(shape) - 0.5).all()  # kept within the field of view


def test_split_merged_separates_two_atoms_joined_by_a_bridge_and_keeps_single_atoms_whole():
    rng = np.random.default_rng(5)
    lattice = grid_positions(rng, n=4, step=14.0, start=8.0)
    pair = np.array([[52.0, 20.0], [52.0, 27.0]])  # 7 px apart, like a bond at the 0.2 A/px working scale
    prob = gaussian_map(np.r_[lattice[:12], pair], sigma=1.8)
    rr, cc = np.mgrid[:64, :64]
    bridge = (np.abs(rr - 52.0) <= 1) & (cc > 20) & (cc < 27)
    prob[bridge] = np.maximum(prob[bridge], 0.55)  # the map joins the two discs just above the threshold
    # a single atom whose top has two bumps 2 px apart stays one atom
    prob = np.maximum(prob, 0.9 * gaussian_map([[52.0, 45.0]], sigma=1.8))
    prob = np.maximum(prob, gaussian_map([[52.0, 47.0]], sigma=1.8))
    truth = np.r_[lattice[:12], pair, [[52.0, 46.0]]]
    plain = locate_atoms(prob[None], threshold=0.5)
    split = locate_atoms(prob[None], threshold=0.5, split_merged=True)
    assert len(plain) == len(truth) - 1  # the pair is one blob, with its centroid between the atoms
    assert len(split) == len(truth)
    assert nearest(split.positions(), pair).max() < 0.3
    assert nearest(split.positions(), [[52.0, 46.0]]).max() < 1.2
    np.testing.assert_allclose(nearest(split.positions(), lattice[:12]), nearest(plain.positions(), lattice[:12]))


def test_frames_classes_and_offset():
    rng = np.random.default_rng(1)
    pos = grid_positions(rng, n=2)
    prob = np.zeros((3, 2, 64, 64))
    prob[1, 0] = gaussian_map(pos[:2])
    prob[2, 1] = gaussian_map(pos[2:])
    table = locate_atoms(prob, class_names=("C", "Si"), frame_offset=10)
    assert table.class_names == ("C", "Si")
    assert sorted(set(table.frame.tolist())) == [11, 12]
    assert np.all(table.class_index[table.frame == 11] == 0)
    assert np.all(table.class_index[table.frame == 12] == 1)


def test_same_blob_in_two_classes_keeps_more_probable():
    pos = np.array([[20.0, 20.0], [40.0, 40.0]])
    prob = np.zeros((2, 64, 64))
    prob[0] = 0.7 * gaussian_map(pos, sigma=2.0)
    prob[1] = 0.95 * gaussian_map(pos[:1] + 0.4, sigma=2.0)
    table = locate_atoms(prob, threshold=0.5, class_names=("C", "Si"))
    assert len(table) == 2
    at_first = np.argmin(np.hypot(table.row - 20, table.col - 20))
    assert table.class_index[at_first] == 1
    assert table.class_index[1 - at_first] == 0


def test_ensemble_uncertainty_and_ensemble_of_one():
    rng = np.random.default_rng(2)
    pos = grid_positions(rng, n=3)
    agree = gaussian_map(pos)
    shifted = gaussian_map(np.r_[pos[:1] + [0.0, 1.5], pos[1:]])
    members = np.stack([agree, agree, shifted])[:, None, None]  # (M, N, K, H, W)
    mean = members.mean(axis=0)
    table = locate_atoms(mean, member_probabilities=members)
    assert len(table) == len(pos)
    first = np.argmin(np.hypot(table.row - pos[0, 0], table.col - pos[0, 1]))
    others = np.delete(np.arange(len(table)), first)
    assert table.uncertainty[first] > 0.1
    assert np.all(table.uncertainty[others] < 0.05)
    single = locate_atoms(agree[None], member_probabilities=agree[None, None])
    assert len(single) == len(pos) and np.all(single.uncertainty == 0)


def test_given_uncertainty_map_is_averaged_over_blob():
    pos = np.array([[16.0, 16.0]])
    p = gaussian_map(pos, shape=(32, 32))[None]
    u = np.full_like(p, 0.25)
    table = locate_atoms(p, uncertainty=u)
    assert table.uncertainty[0] == pytest.approx(0.25)


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError):
        locate_atoms(np.zeros((16, 16)))
    with pytest.raises(InputError):
        locate_atoms(np.zeros((2, 16, 16)), class_names=("a", "b", "c"))
    with pytest.raises(InputError):
        locate_atoms(np.zeros((1, 16, 16)), uncertainty=np.zeros((1, 8, 8)))
    with pytest.raises(InputError):
        locate_atoms(np.zeros((1, 16, 16)), threshold=0.0)


# ----------------------------------------------------------------------------- optional columns, CSV


def _refined_table():
    from elit.data import AtomTable

    return AtomTable([0, 0, 1], [1.5, 2.0, 3.0], [4.0, 5.0, 6.0], [0, 1, 0], [0.9, 0.8, 0.7], [0.1, 0.2, 0.3],
                     class_names=("C", "Si"), row_network=[1.0, 2.0, 3.5], col_network=[4.5, 5.0, 6.5],
                     class_probability=[0.99, 0.7, np.nan], fit_residual=[0.1, np.nan, 0.2])


def test_optional_columns_follow_select_concatenate_and_scaling():
    from elit.data import AtomTable

    t = _refined_table()
    assert t.column_names()[-4:] == ("row_network", "col_network", "class_probability", "fit_residual")
    assert np.allclose(t.select([2]).row_network, [3.5])
    plain = AtomTable([2], [1.0], [1.0], [0], [1.0], [0.0], class_names=("C", "Si"))
    both = AtomTable.concatenate([t, plain])
    assert len(both.row_network) == 4 and np.isnan(both.row_network[-1]) and both.intensity is None
    s = t.scaled(2.0)
    assert np.allclose(s.row_network, (t.row_network + 0.5) * 2 - 0.5)
    with pytest.raises(ValueError, match="row_network"):
        AtomTable([0], [1.0], [1.0], [0], [1.0], [0.0], row_network=[1.0, 2.0])


def test_optional_columns_round_trip_through_a_run_file(tmp_path):
    from elit.store import RunStore

    t = _refined_table()
    store = RunStore.create(tmp_path / "run.h5")
    info = {"name": "x", "plugin": "builtins", "package": "elit", "plugin_version": "0", "stage_version": "1",
            "config": {}, "seed": 0, "used": []}
    with store.stage(0, "predict", info) as st:
        st.add_table("atoms", t)
    back = RunStore.open(tmp_path / "run.h5").read_table("/iterations/iter_000/predict/atoms")
    assert np.allclose(back.row_network, t.row_network) and np.allclose(back.fit_residual, t.fit_residual, equal_nan=True)
    assert back.intensity is None


def test_csv_says_which_positions_x_y_are(tmp_path):
    import csv

    from elit.results import CSV_COLUMNS, write_atoms_csv

    t = _refined_table()
    write_atoms_csv(t, tmp_path / "a.csv")
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert tuple(rows[0]) == CSV_COLUMNS and CSV_COLUMNS[:7] == ("frame", "x", "y", "class", "probability",
                                                                "uncertainty", "class_name")
    assert [r["position"] for r in rows] == ["refined", "network", "refined"]  # atom 1's fit failed
    assert float(rows[0]["y"]) == 1.5 and float(rows[0]["y_network"]) == 1.0 and rows[2]["class_probability"] == ""
    write_atoms_csv(t, tmp_path / "n.csv", positions="network")
    rows = list(csv.DictReader(open(tmp_path / "n.csv")))
    assert float(rows[0]["y"]) == 1.0 and {r["position"] for r in rows} == {"network"}


def test_csv_keeps_both_positions_when_the_run_reports_the_networks(tmp_path):
    import csv

    from elit.data import AtomTable
    from elit.results import write_atoms_csv

    # what the pipeline stores with locate.positions=network: row, col = network; the fit in *_refined
    t = AtomTable([0, 0], [1.0, 2.0], [4.5, 5.0], [0, 0], [0.9, 0.8], [0.1, 0.2], class_names=("C",),
                  row_network=[1.0, 2.0], col_network=[4.5, 5.0], fit_residual=[0.1, np.nan],
                  row_refined=[1.5, np.nan], col_refined=[4.0, np.nan])
    assert np.allclose(t.scaled(2.0).row_refined[:1], [3.5])  # positions_to_working: (r + 0.5) * f - 0.5
    write_atoms_csv(t, tmp_path / "run.csv")
    rows = list(csv.DictReader(open(tmp_path / "run.csv")))
    assert [r["position"] for r in rows] == ["network", "network"]
    assert float(rows[0]["y"]) == 1.0 and float(rows[0]["y_refined"]) == 1.5 and float(rows[0]["x_refined"]) == 4.0
    assert rows[1]["x_refined"] == "" and rows[1]["y_refined"] == ""  # the fit failed
    write_atoms_csv(t, tmp_path / "refined.csv", positions="refined")
    rows = list(csv.DictReader(open(tmp_path / "refined.csv")))
    assert [r["position"] for r in rows] == ["refined", "network"]
    assert float(rows[0]["y"]) == 1.5 and float(rows[1]["y"]) == 2.0


def test_csv_of_positions_averaged_over_frames_keeps_each_frames_own(tmp_path):
    import csv

    from elit.data import AtomTable
    from elit.results import write_atoms_csv

    # locate.positions=refined, then averaged over frames: row, col = the average; row_frame, col_frame = the fit
    t = AtomTable([0, 1], [1.2, 2.0], [4.2, 5.0], [0, 0], [0.9, 0.8], [0.1, 0.2], class_names=("C",),
                  row_network=[1.0, 2.0], col_network=[4.5, 5.0], fit_residual=[0.1, 0.1],
                  row_refined=[1.5, 2.0], col_refined=[4.0, 5.0], row_frame=[1.5, 2.0], col_frame=[4.0, 5.0],
                  n_averaged=[3, 1])
    write_atoms_csv(t, tmp_path / "run.csv")
    rows = list(csv.DictReader(open(tmp_path / "run.csv")))
    assert [r["position"] for r in rows] == ["refined", "network"]  # atom 1's fit landed on the network's position
    assert [r["n_averaged"] for r in rows] == ["3", "1"]
    assert float(rows[0]["y"]) == 1.2 and float(rows[0]["y_frame"]) == 1.5 and float(rows[0]["x_frame"]) == 4.0
    write_atoms_csv(t, tmp_path / "net.csv", positions="network")
    rows = list(csv.DictReader(open(tmp_path / "net.csv")))
    assert float(rows[0]["y"]) == 1.0 and [r["n_averaged"] for r in rows] == ["1", "1"]
