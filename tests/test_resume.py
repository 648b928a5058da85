"""Durability: a run killed at any moment leaves a readable file, and ``elit run --resume`` finishes it
with the same atoms as an uninterrupted run.

A tiny run (two 48x48 graphene frames, two members of a 4-filter U-Net, a few
steps) is made once without interruption: its atoms CSV is the reference.
The same run is started as separate processes and killed with SIGKILL (after
its first trainer member is committed, and at a seeded random moment), or
interrupted in-process with SIGINT / SIGTERM right after a commit; each file
is checked and resumed, and must give the reference CSV byte for byte.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from elit.cli import main
from elit.store import RunStore, check_run_file
from elit.store.h5store import StageWriter

CONFIG_YAML = """\
seed: 3
device: cpu
scale: {pixel_size: 0.2, input_pixel_size: 0.2}
iterations: {max_iterations: 1, min_improvement: 0.0, n_simulated: 4, multiclass: false}
simulator: {name: graphene, params: {image_size: 48}}
augmenter: {name: standard, params: {crop_size: 32}}
architecture: {name: compact-unet, params: {base_filters: 4, depth: 2}}
trainer:
  name: multi-swa
  params: {n_members: 2, steps: 4, batch_size: 2, patch_size: 32, min_steps: 0, eval_every: 2,
           val_patches: 2, bn_batches: 2, progress: false, threads: 1}
selector: {name: auto, params: {k: 1}}
"""

FIRST_MEMBER = "/iterations/iter_000/trainer/members/member_000"
RANDOM_KILL_SEED = 20261126
EXPECTED_SECONDS = 10.0
"""Rough length of the run after its file appears; the random kill falls inside it."""


# ---------------------------------------------------------------------- helpers
def _run_args(work: Path, out: Path) -> list[str]:
    return ["-q", "run", str(work / "config.yaml"), "--data", str(work / "frames.npy"), "--out", str(out)]


def _atoms_csv(run: Path) -> bytes:
    out = run.with_suffix(".csv")
    assert main(["-q", "atoms", str(run), "--out", str(out), "--overwrite"]) == 0
    return out.read_bytes()


def _holds(path: Path, key: str) -> bool:
    """True once the (atomically replaced) run file holds ``key``; never blocks the writer."""
    try:
        with h5py.File(path, "r") as f:
            return key in f
    except (OSError, KeyError):
        return False


class Killer(threading.Thread):
    """Starts ``elit run`` in a subprocess and SIGKILLs it when ``should_kill(seconds since file appeared)`` says so."""

    def __init__(self, work: Path, out: Path, should_kill, timeout: float = 240.0):
        super().__init__(daemon=True)
        self.out, self.should_kill, self.timeout = out, should_kill, timeout
        cmd = [sys.executable, "-m", "elit.cli", *_run_args(work, out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread everywhere: fast on a busy machine, same numbers
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.killed_after: float | None = None
        self.start()

    def run(self) -> None:
        t0, seen = time.monotonic(), None
        while self.proc.poll() is None and time.monotonic() - t0 < self.timeout:
            if seen is None and self.out.exists():
                seen = time.monotonic()
            if seen is not None and self.should_kill(time.monotonic() - seen):
                self.proc.send_signal(signal.SIGKILL)
                self.killed_after = time.monotonic() - seen
                break
            time.sleep(0.05)
        if self.proc.poll() is None and self.killed_after is None:
            self.proc.kill()  # ran past the timeout
        self.stderr = self.proc.communicate()[1].decode(errors="replace")


def _check_readable(path: Path, capsys) -> str:
    """The file opens, is an elit run file, `elit inspect` works, and no commit clone lies beside it... yet."""
    check_run_file(path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "iteration 0" in out or "inputs" in out
    return out


def _no_litter(path: Path) -> None:
    assert not path.with_name(path.name + ".tmp").exists()
    assert not path.with_name(path.name + ".partial").exists()


# ---------------------------------------------------------------------- the runs
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import torch

    from elit.experiments import graphene_movie

    work = tmp_path_factory.mktemp("resume")
    movie = graphene_movie(n_frames=2, size=48, pixel_size=0.2)
    np.save(work / "frames.npy", movie.frames, allow_pickle=False)
    (work / "config.yaml").write_text(CONFIG_YAML)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the config's trainer does; restored for the other test modules
    yield work
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(work):
    """Start the killed subprocess runs, make the uninterrupted reference meanwhile, wait for the kills."""
    delay = float(np.random.default_rng(RANDOM_KILL_SEED).uniform(0.0, EXPECTED_SECONDS))
    member = Killer(work, work / "member.h5", lambda _t: _holds(work / "member.h5", FIRST_MEMBER))
    moment = Killer(work, work / "moment.h5", lambda t: t >= delay)
    t0 = time.monotonic()
    assert main(_run_args(work, work / "reference.h5")) == 0
    seconds = time.monotonic() - t0
    reference = _atoms_csv(work / "reference.h5")
    member.join()
    moment.join()
    print(f"reference run {seconds:.1f} s; SIGKILL {member.killed_after} s after the file appeared (first member), "
          f"{moment.killed_after} s (random moment, drawn {delay:.2f} s)")
    return {"reference": reference, "seconds": seconds, "member": member, "moment": moment, "delay": delay}


# ---------------------------------------------------------------------- tests
def test_reference_run_finds_atoms(runs):
    lines = runs["reference"].decode().splitlines()
    assert lines[0].startswith("frame,x,y,class")
    assert len(lines) > 5


def test_sigkill_after_first_member_then_resume(runs, capsys):
    killer = runs["member"]
    path = killer.out
    assert killer.killed_after is not None, f"the run was not killed: {killer.stderr[-500:]}"
    assert killer.proc.returncode == -signal.SIGKILL
    text = _check_readable(path, capsys)
    assert "UNFINISHED" in text
    store = RunStore.open(path)
    assert 0 in store.read_members(0)  # the finished member survived the kill
    assert not store.stage_complete(0, "trainer")
    assert main(["-q", "run", "--resume", str(path)]) == 0
    _no_litter(path)
    assert _atoms_csv(path) == runs["reference"]


def test_sigkill_at_a_random_moment_then_resume(runs, capsys):
    killer = runs["moment"]
    path = killer.out
    # The kill lands at a seeded random moment; if the run was already over, resume has nothing to do.
    assert killer.killed_after is not None or killer.proc.returncode == 0, killer.stderr[-500:]
    assert path.exists(), "the run file appears whole (config and input) or not at all"
    _check_readable(path, capsys)
    assert main(["-q", "run", "--resume", str(path)]) == 0
    _no_litter(path)
    assert _atoms_csv(path) == runs["reference"]


def _interrupt_after_first_member(monkeypatch, signum):
    real = StageWriter.add_member

    def add_member(self, index, member):
        path = real(self, index, member)
        os.kill(os.getpid(), signum)  # delivered before add_member returns: inside the run
        return path

    monkeypatch.setattr(StageWriter, "add_member", add_member)


def test_sigint_exits_130_keeps_the_file_and_resumes(runs, work, capsys, monkeypatch):
    path = work / "sigint.h5"
    _interrupt_after_first_member(monkeypatch, signal.SIGINT)
    # Python's own Ctrl-C handler, also where the test runner was started with SIGINT ignored (a background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(_run_args(work, path)) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert f"elit run --resume {path}" in err and "interrupted" in err
    monkeypatch.undo()
    _check_readable(path, capsys)
    _no_litter(path)
    assert list(RunStore.open(path).read_members(0)) == [0]
    assert main(["-q", "run", "--resume", str(path)]) == 0
    assert _atoms_csv(path) == runs["reference"]


def test_sigterm_is_handled_like_sigint(work, capsys, monkeypatch):
    path = work / "sigterm.h5"
    _interrupt_after_first_member(monkeypatch, signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)
    assert main(_run_args(work, path)) == 143
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI restores the handler it replaced
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err
    monkeypatch.undo()
    _check_readable(path, capsys)
    _no_litter(path)
    store = RunStore.open(path)
    assert store.stage_complete(0, "augmenter") and not store.stage_complete(0, "trainer")


def test_resume_refuses_another_seed(runs, work, capsys):
    code = main(["run", "--resume", str(work / "reference.h5"), "--set", "seed=4"])
    assert code == 2
    assert "seed" in capsys.readouterr().err


def test_a_crashed_commit_leaves_the_old_file(tmp_path):
    """A process dying inside a commit leaves the previous file; the clone is cleared by the next writer."""
    from elit.store.commit import tmp_path as clone_of

    path = tmp_path / "run.h5"
    store = RunStore.create(path)
    store.write_config({"seed": 1})
    before = path.read_bytes()

    def dies(f):
        f.create_dataset("half", data=np.arange(10))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store._commit(dies)
    assert path.read_bytes() == before
    assert not clone_of(path).exists()
    clone_of(path).write_bytes(b"stale clone of a SIGKILLed commit")
    RunStore.open(path, mode="a").write_summary([])
    assert not clone_of(path).exists()
    assert RunStore.open(path).read_config() == {"seed": 1}


class _Crash(BaseException):
    """Stands for the process dying at that point."""


def test_crash_between_a_part_and_its_link_then_resume(runs, work, capsys, monkeypatch):
    """Every large dataset in a part file; the run dies right after a part is renamed into place, before the link."""
    import elit.store.parts as parts

    monkeypatch.setattr(parts, "PART_ABOVE_BYTES", 0)
    path = work / "parts.h5"
    real = parts.write_part
    calls = []

    def dies_after_fifth_part(f, run_path, link_path, fill, durable=True):
        calls.append(link_path)
        if len(calls) == 5:
            folder = parts.parts_folder(run_path, f)
            folder.mkdir(exist_ok=True)
            with h5py.File(folder / "0123456789abcdef0123456789abcdef.h5", "w") as part:
                fill(part, link_path.rsplit("/", 1)[-1])
            raise _Crash()
        return real(f, run_path, link_path, fill, durable)

    monkeypatch.setattr(parts, "write_part", dies_after_fifth_part)
    with pytest.raises(_Crash):
        main(_run_args(work, path))
    monkeypatch.setattr(parts, "write_part", real)
    folder = path.with_name(path.name + ".parts")
    assert (folder / "0123456789abcdef0123456789abcdef.h5").exists()
    _check_readable(path, capsys)
    assert main(["-q", "run", "--resume", str(path)]) == 0
    assert not (folder / "0123456789abcdef0123456789abcdef.h5").exists()  # the unlinked part was swept
    with h5py.File(path, "r") as f:
        linked = parts.linked_parts(f)
        assert linked and {p.name for p in folder.iterdir()} == {name.split("/")[-1] for name in linked}
        assert f["/inputs/frames/frames"].shape[0] == 2  # read through the link
    assert _atoms_csv(path) == runs["reference"]


def test_member_maps_of_some_frames_resume_to_the_same_atoms(work, tmp_path, capsys):
    args = _run_args(work, tmp_path / "every.h5") + ["--set", "store.member_maps_every=2"]
    assert main(args) == 0
    full = _atoms_csv(tmp_path / "every.h5")
    store = RunStore.open(tmp_path / "every.h5", mode="a")
    maps = "/iterations/iter_001/predict/member_probabilities/member_probabilities"
    assert store.read_image(maps).shape[1] == 1 and list(store.attrs(maps)["frames"]) == [0]
    store.discard_from(1, "refiner")  # iteration 1 again, from iteration 0's maps predicted anew
    assert main(["-q", "run", "--resume", str(tmp_path / "every.h5")]) == 0
    assert _atoms_csv(tmp_path / "every.h5") == full


def test_member_maps_are_kept_for_at_most_member_maps_frames(work, tmp_path):
    """The cap thins the stored member maps of a long movie (here 2 frames, at most 1 kept)."""
    from elit.config import StoreConfig

    assert StoreConfig().member_map_step(6) == 1 and StoreConfig().member_map_step(1000) == 16
    assert StoreConfig(member_maps_frames=0).member_map_step(1000) == 1
    assert StoreConfig(member_maps_every=20).member_map_step(1000) == 20
    args = _run_args(work, tmp_path / "cap.h5") + ["--set", "store.member_maps_frames=1"]
    assert main(args) == 0
    store = RunStore.open(tmp_path / "cap.h5")
    maps = "/iterations/iter_000/predict/member_probabilities/member_probabilities"
    assert store.read_image(maps).shape[1] == 1 and list(store.attrs(maps)["frames"]) == [0]
    assert store.read_image("/iterations/iter_000/predict/mean/mean").shape[0] == 2
