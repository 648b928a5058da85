"""Tests of the multislice simulator on a tiny graphene cell (a few seconds in all).

One module-scoped simulation (2 x 1 rectangular graphene cells, 4.9 x 4.3 A,
8 atoms, one of them Si, exact PRISM) is shared by most tests; the first call
in a process pays abTEM's import and numba compilation (~5-8 s).
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage

from elit.data import TrainingSet
from elit.errors import ConfigError, InputError
from elit.testing import check_stage
from elit_multislice import MultisliceSimulator, elit_register_stages
from elit_multislice.resample import fourier_resample

TINY = dict(repeats=(2, 1), prism_interpolation=1, dopant_fraction=0.125, mask_radius=0.5)
PIXEL = 0.1


@pytest.fixture(scope="module")
def tiny_set() -> TrainingSet:
    return MultisliceSimulator(**TINY).simulate(2, np.random.default_rng(7), PIXEL)


def test_registered_through_the_hook():
    assert elit_register_stages() == [MultisliceSimulator]
    assert MultisliceSimulator.kind == "simulator" and MultisliceSimulator.name == "multislice"


def test_conformance_kit(tiny_set):
    # attributes, strict described config, JSON round trip, seeded determinism, no file I/O.
    # Runs after one simulation (the fixture): abTEM is imported lazily, because elit loads
    # every plugin at start-up, and that import reads dask's and abTEM's config files, like
    # threadpoolctl's first scan of /proc/self/maps, which the kit's open() guard would count.
    check_stage(MultisliceSimulator, dict(TINY))


def test_shapes_classes_and_atoms(tiny_set):
    # 2 x 1 cells of 2.46 x 4.26 A at 0.1 A/px -> 42 rows x 49 cols, 8 atoms per image, one Si
    assert tiny_set.images.shape == (2, 42, 49)
    assert tiny_set.labels.shape == (2, 42, 49)
    assert tiny_set.images.dtype == np.float32 and tiny_set.labels.dtype == np.uint8
    assert tiny_set.pixel_size == PIXEL
    assert tiny_set.class_names == ("C", "Si")
    assert 0.0 <= tiny_set.images.min() and tiny_set.images.max() <= 1.0
    atoms = tiny_set.atoms
    assert set(atoms.frame.tolist()) == {0, 1}
    for frame in (0, 1):
        mine = atoms.in_frame(frame)
        # atoms on the far edge of the period fall outside the image; none is counted twice
        assert 6 <= len(mine) <= 8
        assert (mine.class_index == 1).sum() <= 1
    assert set(np.unique(tiny_set.labels).tolist()) == {0, 1, 2}


def test_brightest_pixels_sit_on_atoms(tiny_set):
    for frame in range(len(tiny_set)):
        image = tiny_set.images[frame]
        atoms = tiny_set.atoms.in_frame(frame).positions()
        # local maxima well above background, periodic edges included
        peaks = (image == ndimage.maximum_filter(image, size=7, mode="wrap")) & (image > 0.05)
        rows, cols = np.nonzero(peaks)
        assert len(rows) >= 5
        h, w = image.shape
        for r, c in zip(rows, cols):
            # distance to the nearest atom (or its periodic copy), in Angstrom
            d = np.hypot(
                np.minimum(np.abs(atoms[:, 0] - r), h - np.abs(atoms[:, 0] - r)),
                np.minimum(np.abs(atoms[:, 1] - c), w - np.abs(atoms[:, 1] - c)),
            ).min()
            assert d * PIXEL < 0.25, f"peak at ({r}, {c}) is {d * PIXEL:.2f} A from the nearest atom"


def test_dopant_is_brighter_than_carbon(tiny_set):
    checked = 0
    for frame in range(len(tiny_set)):
        image = tiny_set.images[frame]
        atoms = tiny_set.atoms.in_frame(frame)
        values = ndimage.map_coordinates(image, [atoms.row, atoms.col], order=1, mode="nearest")
        is_si = atoms.class_index == 1
        if is_si.any():
            assert values[is_si].min() > 1.5 * values[~is_si].max()
            checked += 1
    assert checked >= 1


def test_labels_mark_the_atoms(tiny_set):
    atoms = tiny_set.atoms
    rows = np.clip(np.rint(atoms.row).astype(int), 0, tiny_set.images.shape[1] - 1)
    cols = np.clip(np.rint(atoms.col).astype(int), 0, tiny_set.images.shape[2] - 1)
    assert np.array_equal(tiny_set.labels[atoms.frame, rows, cols], atoms.class_index + 1)
    # a 0.5 A disc at 0.1 A/px covers ~80 px per atom; 8 atoms in a 42 x 49 image
    covered = (tiny_set.labels > 0).mean()
    assert 0.15 < covered < 0.5


def test_seeded_runs_are_identical_and_seeds_differ(tiny_set):
    again = MultisliceSimulator(**TINY).simulate(2, np.random.default_rng(7), PIXEL)
    np.testing.assert_array_equal(again.images, tiny_set.images)
    np.testing.assert_array_equal(again.labels, tiny_set.labels)
    np.testing.assert_array_equal(again.atoms.positions(), tiny_set.atoms.positions())
    other = MultisliceSimulator(**TINY).simulate(1, np.random.default_rng(8), PIXEL)
    assert not np.array_equal(other.labels[0], tiny_set.labels[0])


def test_any_pixel_size_is_honoured():
    # 0.13 A/px does not divide the cell: the image is resampled, atoms scale with it
    out = MultisliceSimulator(**TINY, random_shift=False).simulate(1, np.random.default_rng(0), 0.13)
    assert out.images.shape == (1, int(4.2608 / 0.13), int(4.92 / 0.13))
    np.testing.assert_allclose(np.sort(out.atoms.col)[:2], [0.0, 0.0], atol=1e-9)
    assert np.isclose(out.atoms.col.max(), 3.69 / 0.13)


def test_config_is_strict():
    with pytest.raises(ValidationError):
        MultisliceSimulator(repeat=(2, 1))  # typo
    with pytest.raises(ValidationError, match="sampling"):
        MultisliceSimulator(sampling=0.1)  # 200 mrad not resolved at 60 kV
    with pytest.raises(ValidationError):
        MultisliceSimulator(detector_inner=210)
    with pytest.raises(ValidationError):
        MultisliceSimulator(dopant_element="Xx")
    with pytest.raises(ConfigError, match="prism_interpolation"):
        MultisliceSimulator(**{**TINY, "prism_interpolation": 2}).simulate(1, np.random.default_rng(0), PIXEL)


def test_fourier_resample_is_exact_for_band_limited_images():
    period = (3.0, 4.0)
    y = np.arange(12)[:, None] * period[0] / 12
    x = np.arange(16)[None, :] * period[1] / 16
    f = lambda yy, xx: np.cos(2 * np.pi * 2 * yy / period[0]) + np.sin(2 * np.pi * 3 * xx / period[1])  # noqa: E731
    out = fourier_resample(f(y, x), period, 0.07, (40, 50))
    yo = np.arange(40)[:, None] * 0.07
    xo = np.arange(50)[None, :] * 0.07
    np.testing.assert_allclose(out, f(yo, xo), atol=1e-10)


def test_structure_file_with_hexagonal_cell(tmp_path):
    import ase.build
    import ase.io

    path = tmp_path / "graphene.extxyz"
    ase.io.write(path, ase.build.graphene(vacuum=2.0))  # 2-atom hexagonal cell: orthogonalised on reading
    sim = MultisliceSimulator(structure=str(path), repeats=(2, 1), prism_interpolation=1, classes="single")
    assert sim.class_names == ("atom",)
    out = sim.simulate(1, np.random.default_rng(0), 0.2)
    np.testing.assert_allclose(out.metadata["cell_extent_A"], [4.26084, 4.92], atol=1e-4)
    assert 6 <= len(out.atoms) <= 8 and set(out.atoms.class_index.tolist()) == {0}
    with pytest.raises(InputError, match="not found"):
        MultisliceSimulator(structure=str(tmp_path / "missing.cif")).simulate(1, np.random.default_rng(0), 0.2)


def test_stacked_atoms_merge_into_columns_across_the_periodic_edge():
    from ase import Atoms

    from elit_multislice.structures import projected_columns

    # an AA-stacked pair at (1, 1), a Si above a C straddling the x edge, a lone C
    atoms = Atoms(
        "CCCSiC",
        positions=[(1.0, 1.0, 2.0), (1.0, 1.05, 5.0), (0.02, 3.0, 2.0), (4.9, 3.0, 5.0), (2.5, 2.0, 2.0)],
        cell=[4.92, 4.26, 8.0],
        pbc=True,
    )
    xy, numbers = projected_columns(atoms, tolerance=0.3)
    assert len(xy) == 3
    order = np.argsort(xy[:, 1])
    np.testing.assert_allclose(xy[order[0]], [1.0, 1.025])
    assert numbers[order[2]] == 14  # the edge column is named by its heaviest atom
    assert min(xy[order[2], 0], 4.92 - xy[order[2], 0]) < 0.05
