"""Tests for automated-experiment mode: per-frame member re-selection, the growing live file, folder watching.

The ensemble has two tiny members trained on purpose for different conditions:
member 0 on sharp, noisy simulated images, member 1 on strongly blurred ones.
The synthetic movie is sharp for its first half and blurs progressively in its
second half, so the auto selector's per-frame choice moves from member 0 to
member 1 — the drift the live mode must follow by switching members.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
import time

import h5py
import numpy as np
import pytest
import tifffile
from scipy import ndimage
from scipy.spatial import cKDTree

from elit.atoms import locate_atoms
from elit.config import PipelineConfig
from elit.ensemble import Ensemble
from elit.errors import ConfigError, InputError, StoreError
from elit.experiments import graphene_movie
from elit.live import (
    DRIFT_INDICATORS,
    LiveAnalyzer,
    LiveWriter,
    drift_figure,
    frame_indicators,
    read_live,
    watch,
    watch_folder,
)
from elit.results import load_ensemble
from elit.plugins import default_registry

PX = 0.2  # Angstrom per pixel, the working scale: frames are not resampled
N_SHARP = 4
STEPS = 120  # training steps per member
BLUR = [0.0] * N_SHARP + [3.0, 3.0, 3.5, 6.0]  # Gaussian blur (px) of each movie frame


def _train_member(probe_sigma, noise, seed):
    reg = default_registry()
    arch = reg.get_stage("architecture", "compact-unet")(base_filters=4, depth=2)
    sim = reg.get_stage("simulator", "graphene")(
        image_size=64, hole_probability=0, amorphous_probability=0, probe_sigma_range=probe_sigma, noise_sigma=noise
    )
    ts = sim.simulate(8, np.random.default_rng(seed), PX)
    trainer = reg.get_stage("trainer", "multi-swa")(
        n_members=1, steps=STEPS, batch_size=8, patch_size=32, learning_rate=0.01, eval_every=STEPS, min_steps=STEPS,
        val_fraction=0, val_patches=2, bn_batches=2, swa_fraction=0.2, threads=1, progress=False,
    )
    return arch, trainer.fit(ts, arch, seed).members[0]


@pytest.fixture(scope="module")
def ensemble():
    import torch

    threads = torch.get_num_threads()  # tiny nets: one thread is faster on a busy CPU; restored after this module
    arch, sharp = _train_member((0.3, 0.4), 0.1, 3)
    _, blurred = _train_member((0.8, 1.0), 0.0, 2)
    yield Ensemble(arch.name, arch.get_params(), 1, 1, ("atom",), [sharp, blurred], PX, "sigmoid", stage=arch)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def movie():
    """float32 frames: sharp first, then ever more blurred (dose stays the same)."""
    frames = graphene_movie(n_frames=len(BLUR), size=80, pixel_size=PX, seed=3, dose=5.0, hole_radius=0,
                            amorphous_radius=0).frames
    out = [ndimage.gaussian_filter(f, s) if s else f for f, s in zip(frames, BLUR)]
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def run_file(tmp_path_factory, ensemble):
    """A finished run file holding the ensemble (iteration 0), as `elit run` leaves it."""
    from elit.store import RunStore

    path = tmp_path_factory.mktemp("run") / "run.h5"
    store = RunStore.create(path)
    config = PipelineConfig(device="cpu")
    store.write_config(config.model_dump(mode="json"))
    with store.stage(0, "trainer", {"name": "multi-swa", "seed": 0}) as st:
        st.add_ensemble(ensemble)
    with store.stage(0, "predict", {"name": "ensemble-predict", "seed": 0}) as st:
        st.add_json("note", {"test": "no predictions stored"})
    return path


# ------------------------------------------------------------------ LiveAnalyzer


def test_analyzer_switches_members_when_the_frames_blur(ensemble, movie):
    analyzer = LiveAnalyzer(ensemble, PipelineConfig(), input_pixel_size=PX)
    results = [analyzer.process(f, source=f"f{i}.tif") for i, f in enumerate(movie)]
    assert [r.index for r in results] == list(range(len(movie)))
    for r in results[:N_SHARP]:
        assert 0 in r.members, (r.scores, r.members)  # sharp frames: the sharp-trained member is in use
    sharp_scores = np.mean([r.scores for r in results[:N_SHARP]], axis=0)
    assert sharp_scores[0] > sharp_scores[1]  # ... and leads on average
    for r in results[N_SHARP:-1]:
        assert r.members == [1], (r.scores, r.members)  # blurred frames: only the blur-trained member
        assert r.scores[1] - r.scores[0] > 0.1
    assert not any(r.needs_retraining for r in results[:-1])
    last = results[-1]  # blurred beyond what any member was trained for: schedule a retraining
    assert last.needs_retraining and last.scores.max() < 0.5 and last.members == [int(np.argmax(last.scores))]
    assert any("no member scores" in f for f in last.flags) and any("below the first frames" in f for f in last.flags)
    r = results[0]
    assert r.mean.shape == r.std.shape == (1, 80, 80)
    assert set(r.drift) == set(DRIFT_INDICATORS)
    assert set(r.criteria) >= {"clarity", "blob_shape", "spacing", "vacuum", "agreement"}
    assert r.latency > 0 and r.timings["predict"] > 0
    assert 40 < len(r.atoms) < 200 and np.all(r.atoms.frame == 0)
    assert len(results[-1].atoms) and np.all(results[-1].atoms.frame == len(movie) - 1)
    # drift indicators follow the blur: less sharpness and noise, a growing spectral change
    sharp, blurred = results[:N_SHARP], results[N_SHARP:]
    assert max(r.drift["sharpness"] for r in blurred) < min(r.drift["sharpness"] for r in sharp)
    assert max(r.drift["noise"] for r in blurred) < 0.5 * min(r.drift["noise"] for r in sharp)
    assert min(r.drift["spectral_change"] for r in blurred) > 5 * max(r.drift["spectral_change"] for r in sharp)
    assert "members [1] of 2" in results[-2].summary() and "RETRAIN: no member scores" in last.summary()


def test_analyzer_flags_frames_no_member_handles(ensemble, movie):
    analyzer = LiveAnalyzer(ensemble, input_pixel_size=PX, min_score=0.99)
    r = analyzer.process(movie[0])
    assert r.needs_retraining and r.flags and "RETRAIN" in r.summary()
    assert r.members == [int(np.argmax(r.scores))]  # the best member still gives a result
    # a drop of the best score against the first frames flags as well
    analyzer = LiveAnalyzer(ensemble, input_pixel_size=PX, min_score=0.0, max_drop=0.01, reference_frames=1,
                            tolerance=1.0, k=1)
    first = analyzer.process(movie[0])
    later = analyzer.process(movie[-1])
    assert not first.needs_retraining
    assert later.drift["score_drop"] == pytest.approx(first.drift["best_score"] - later.drift["best_score"])
    assert later.needs_retraining == (later.drift["score_drop"] > 0.01)
    assert len(later.members) == 1


def test_analyzer_keeps_the_first_pixel_size_and_rescales_atoms(ensemble, movie):
    analyzer = LiveAnalyzer(ensemble)
    big = ndimage.zoom(movie[0].astype(np.float32), 2, order=1)  # 0.1 A/px input
    r = analyzer.process(big, pixel_size=0.1)
    assert r.input_pixel_size == pytest.approx(0.1) and r.mean.shape[-2:] == (80, 80)
    assert r.atoms.row.max() > 100  # atoms in the input's own pixels
    r2 = analyzer.process(big)  # no metadata now: the session's pixel size is kept
    assert r2.input_pixel_size == pytest.approx(0.1)


def test_analyzer_finishes_atoms_as_a_run_does(ensemble, movie):
    cfg = PipelineConfig.model_validate(
        {"locate": {"classify": True}, "classifier": {"name": "relative", "params": {"class_names": ["C", "Si"]}}}
    )
    plain = LiveAnalyzer(ensemble, cfg, input_pixel_size=PX, finish=False)
    done = LiveAnalyzer(ensemble, cfg, input_pixel_size=PX)
    for frame in movie[:2]:
        a, b = plain.process(frame), done.process(frame)
    assert a.atoms.class_names == ("atom",) and a.atoms.class_probability is None
    assert b.atoms.class_names == ("C", "Si") and b.atoms.class_probability is not None
    assert (b.atoms.frame == 1).all() and (a.atoms.frame == 1).all()
    # the vacuum filter may drop some; only the blobs holding two atoms add atoms (locate.split_merged)
    joined = len(locate_atoms(b.mean, split_merged=True)) - len(locate_atoms(b.mean))
    assert 0 < len(b.atoms) <= len(a.atoms) + joined
    d, _ = cKDTree(a.atoms.positions()).query(b.atoms.positions())
    assert np.median(d) < 1e-6  # the same atoms; only those cut by the border, or split, move
    with pytest.raises(ConfigError, match="full config"):
        LiveAnalyzer(ensemble, input_pixel_size=PX, finish=True)


def test_score_size_scores_members_on_a_centre_crop(ensemble, movie):
    full = LiveAnalyzer(ensemble, input_pixel_size=PX).process(movie[0])
    crop = LiveAnalyzer(ensemble, input_pixel_size=PX, score_size=40).process(movie[0])
    assert crop.mean.shape == full.mean.shape  # maps and atoms still cover the whole frame
    assert not np.allclose(crop.scores, full.scores)
    assert crop.atoms.row.max() > 60 and crop.atoms.col.max() > 60


def test_analyzer_rejects_bad_frames_and_settings(ensemble):
    analyzer = LiveAnalyzer(ensemble, input_pixel_size=PX)
    with pytest.raises(InputError, match="2-D"):
        analyzer.process(np.zeros((2, 8, 8, 3)))
    with pytest.raises(InputError, match="NaN"):
        analyzer.process(np.full((32, 32), np.nan))
    with pytest.raises(ConfigError, match="min_score"):
        LiveAnalyzer(ensemble, min_score=2)
    with pytest.raises(ConfigError, match="k must"):
        LiveAnalyzer(ensemble, k=0)
    with pytest.raises(ConfigError, match="score_size"):
        LiveAnalyzer(ensemble, score_size=4)


def test_frame_indicators_see_dose_and_blur():
    rng = np.random.default_rng(0)
    clean = graphene_movie(n_frames=1, size=96, pixel_size=PX, seed=1, dose=None, hole_radius=0, amorphous_radius=0).frames[0]
    from elit.scale import normalize

    def ind(raw):
        return frame_indicators(raw, normalize(raw), PX)

    high, low = ind(rng.poisson(clean * 50.0).astype(float)), ind(rng.poisson(clean * 2.0).astype(float))
    assert low["mean_intensity"] < high["mean_intensity"] / 10
    assert low["noise"] > 2 * high["noise"]
    sharp = ind(clean * 50.0)
    blurred = ind(ndimage.gaussian_filter(clean, 2.0) * 50.0)
    assert blurred["sharpness"] < 0.5 * sharp["sharpness"]


# ------------------------------------------------------------------ live file


READER = textwrap.dedent(
    """
    import json, sys, time
    import h5py
    path, deadline = sys.argv[1], time.time() + float(sys.argv[2])
    print("ready", flush=True)
    seen, problems, errors, state = [], [], [], -1
    while time.time() < deadline and state <= 0:
        try:
            f = h5py.File(path, "r", libver="latest", swmr=True)
        except OSError:  # not there yet, or still being created by the writer
            time.sleep(0.02)
            continue
        try:
            with f:
                while time.time() < deadline:
                    f["n_frames"].refresh()
                    f["state"].refresh()
                    n, state = int(f["n_frames"][0]), int(f["state"][0])  # the count first, then the rows
                    for name in ("maps/mean", "frames/scores", "frames/source"):
                        f[name].refresh()
                    if len(f["maps/mean"]) < n or len(f["frames/scores"]) < n or (n and f["frames/source"][n - 1] == b""):
                        problems.append(n)
                    if not seen or seen[-1] != n:
                        seen.append(n)
                    if state != 0:
                        break
                    time.sleep(0.01)
        except Exception as exc:
            errors.append(repr(exc))
            time.sleep(0.02)
    print(json.dumps({"seen": seen, "problems": problems, "errors": errors, "state": state}))
    """
)


def _start_reader(path, seconds):
    return subprocess.Popen([sys.executable, "-c", READER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)


def test_live_file_is_readable_while_another_process_appends(ensemble, movie, tmp_path):
    path = tmp_path / "live.h5"
    reader = _start_reader_and_wait(path, 20)
    analyzer = LiveAnalyzer(ensemble, input_pixel_size=PX)
    with LiveWriter(path, {"model_file": "x.h5", "config": {"a": 1}}) as writer:
        for i, frame in enumerate(movie[:5]):
            writer.append(analyzer.process(frame, source=f"frame_{i}.tif"), sha256="ab" * 32)
            time.sleep(0.15)
    report = json.loads(reader.communicate(timeout=30)[0])
    assert report["problems"] == [] and report["errors"] == [] and report["state"] == 1
    assert len(report["seen"]) >= 3 and report["seen"][-1] == 5  # it saw the file grow
    data = read_live(path, maps=True)
    assert data.n_frames == 5 and data.state == "finished"
    assert data.mean.shape == (5, 1, 80, 80) and data.uncertainty.shape == (5, 1, 80, 80)
    assert list(data.frames["source"]) == [f"frame_{i}.tif" for i in range(5)]
    assert data.attrs["config"] == {"a": 1} and data.attrs["format"] == "elit.live"
    assert np.array_equal(np.bincount(data.atoms.frame, minlength=5), data.frames["n_atoms"])


def test_live_writer_refuses_other_frame_sizes_and_existing_files(ensemble, movie, tmp_path):
    path = tmp_path / "live.h5"
    analyzer = LiveAnalyzer(ensemble, input_pixel_size=PX)
    with LiveWriter(path) as writer:
        writer.append(analyzer.process(movie[0]))
        with pytest.raises(InputError, match="share their size"):
            writer.append(analyzer.process(movie[0][:64, :64]))
    assert read_live(path).n_frames == 1
    with pytest.raises(StoreError, match="exists"):
        LiveWriter(path)
    with pytest.raises(StoreError, match="no such live file"):
        read_live(tmp_path / "none.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something"
    with pytest.raises(StoreError, match="not an elit live file"):
        read_live(tmp_path / "other.h5")


# ------------------------------------------------------------------ watching a folder


def _write_frames_slowly(folder, frames, pause, start_delay, seen_half=None):
    """Write each frame as an ImageJ TIFF (0.2 A/px) in two halves with a pause between.

    The pause is several polls long, so the watcher finds a half-written file
    that looks finished; it must fail to read it and take it once it is whole.
    ``seen_half``: a callable; the first frame's second half waits (at most 30 s)
    until it returns True, so a busy machine cannot make the watcher miss the half file.
    """
    import io

    time.sleep(start_delay)
    for i, frame in enumerate(frames):
        buf = io.BytesIO()
        tifffile.imwrite(buf, frame, imagej=True, resolution=(1 / (PX / 10), 1 / (PX / 10)), metadata={"unit": "nm"})
        data = buf.getvalue()
        with open(folder / f"frame_{i:03d}.tif", "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(pause)
            deadline = time.monotonic() + 30
            while i == 0 and seen_half is not None and not seen_half() and time.monotonic() < deadline:
                time.sleep(0.05)
            fh.write(data[len(data) // 2 :])
        (folder / f"notes_{i}.txt").write_text("not an image")  # does not match the pattern
        time.sleep(pause / 2)


def _start_reader_and_wait(path, seconds):
    reader = _start_reader(path, seconds)
    assert reader.stdout.readline().strip() == "ready"
    return reader


def test_watch_processes_each_frame_once_and_follows_the_drift(run_file, movie, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    out = tmp_path / "live.h5"
    reader = _start_reader_and_wait(out, 30)
    lines: list[str] = []
    seen_half = lambda: any(line.startswith("waiting for frame_000") for line in lines)  # noqa: E731
    writer = threading.Thread(target=_write_frames_slowly, args=(folder, movie, 0.2, 0.1, seen_half), daemon=True)
    writer.start()
    n = watch(run_file, folder, "*.tif", out=out, poll=0.05, stop_when_idle=1.5, timeout=60, log=lines.append,
              figure=tmp_path / "drift.png")
    writer.join()
    report = json.loads(reader.communicate(timeout=30)[0])

    assert n == len(movie)
    frame_lines = [line for line in lines if line.startswith("frame ")]
    assert len(frame_lines) == len(movie)
    for i, line in enumerate(frame_lines):  # each file once, in order
        assert line.startswith(f"frame {i} frame_{i:03d}.tif: ")
        assert "atoms, members [" in line and " s" in line and "noise" in line and "sharpness" in line
    # the log shows the member set changing with the drift
    members = [json.loads(re.search(r"members (\[[\d, ]+\]) of 2", line).group(1)) for line in frame_lines]
    # the last frame is blurred beyond both members' training: which one scores best there is arbitrary, but only
    # that one is used (as in the analyzer test)
    assert all(0 in m for m in members[:N_SHARP]) and all(m == [1] for m in members[N_SHARP:-1])
    assert len(members[-1]) == 1
    assert all("members [1] of 2" in line and "RETRAIN" not in line for line in frame_lines[N_SHARP:-1])
    assert "RETRAIN: no member scores >= 0.50" in frame_lines[-1]
    assert lines[-2].startswith("no new frame for 1.5 s: 8 frame(s) analysed")
    assert lines[-1] == f"wrote drift report {tmp_path / 'drift.png'}"
    assert any(line.startswith("waiting for frame_") for line in lines)  # a half-written file was not taken

    data = read_live(out)
    assert data.n_frames == len(movie) and data.state == "finished"
    assert list(data.frames["source"]) == [f"frame_{i:03d}.tif" for i in range(len(movie))]
    used = data.frames["members_used"]
    assert used[:N_SHARP, 0].all() and not used[N_SHARP:-1, 0].any() and used[N_SHARP:-1, 1].all()
    assert list(np.flatnonzero(data.frames["needs_retraining"])) == [len(movie) - 1]
    assert data.frames["scores"].shape == (len(movie), 2)
    assert set(data.drift) == set(DRIFT_INDICATORS) and np.isfinite(data.drift["noise"]).all()
    assert np.all(data.frames["latency"] > 0)
    assert len(set(data.frames["sha256"])) == len(movie) and all(len(s) == 64 for s in data.frames["sha256"])
    assert np.array_equal(np.bincount(data.atoms.frame, minlength=len(movie)), data.frames["n_atoms"])
    # provenance: the model file and its checksum, iteration, config, version, start time
    from elit import __version__
    from elit.live import _sha256_file

    attrs = data.attrs
    assert attrs["model_file"] == str(run_file.resolve()) and attrs["model_sha256"] == _sha256_file(run_file)
    assert attrs["model_iteration"] == 0 and attrs["elit_version"] == __version__ and attrs["started"]
    assert attrs["config"]["device"] == "cpu" and attrs["config_sha256"]
    assert attrs["ensemble"]["n_members"] == 2 and attrs["live_settings"]["selector"]["name"] == "auto"
    assert attrs["input_pixel_size"] == pytest.approx(PX)
    # another process read the file while it grew
    assert report["problems"] == [] and report["errors"] == [] and len(report["seen"]) >= 3 and report["seen"][-1] == len(movie)

    assert (tmp_path / "drift.png").stat().st_size > 10_000


def test_watch_stops_on_max_frames_and_skips_unreadable_files(run_file, movie, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "broken.tif").write_bytes(b"II*\x00garbage")
    for i in range(3):
        tifffile.imwrite(folder / (f"f{i}.tif" if i else "f0.TIF"), movie[i])  # the pattern ignores case
    lines: list[str] = []
    out = tmp_path / "live.h5"
    ens, config, _ = load_ensemble(run_file)
    analyzer = LiveAnalyzer(ens, config, input_pixel_size=PX)
    n = watch_folder(analyzer, folder, "*.tif", out, poll=0.02, max_frames=2, timeout=20, log=lines.append, give_up=0.0)
    assert n == 2
    assert any(line.startswith("skipping broken.tif") for line in lines)
    assert read_live(out).n_frames == 2
    assert lines[-1].startswith("2 frames done")
    with pytest.raises(StoreError, match="exists"):
        watch(run_file, folder, out=out, timeout=0.1, log=None)

    def interrupt(result):  # Ctrl-C after the second frame
        if result.index == 1:
            raise KeyboardInterrupt

    lines.clear()
    analyzer.reset()
    n = watch_folder(analyzer, folder, "f*.tif", tmp_path / "cut.h5", poll=0.02, timeout=20, log=lines.append,
                     on_result=interrupt)
    assert n == 2 and lines[-1].startswith("interrupted: 2 frame(s) analysed")
    cut = read_live(tmp_path / "cut.h5")
    assert cut.state == "interrupted" and cut.n_frames == 2
    with pytest.raises(InputError, match="not a folder"):
        watch(run_file, tmp_path / "missing", out=tmp_path / "x.h5", log=None)
