"""Training and inference speed of elit's default ensemble against the conventional way, at equal accuracy.

Usage::

    python bench/ensemble_speed.py            # full run, ~10-15 min on 2 idle cores
    python bench/ensemble_speed.py --quick    # smoke run, a few minutes

Both sides learn from the same simulated graphene (``GrapheneSimulator``, drawn at
the data's native 0.1 A/px) and are scored on the same 512x512 frames at 0.1 A/px.

* **reference** -- the conventional way: 16-filter U-Net (AtomAI's default shape:
  blocks [1,2,2,3], batch norm, bilinear up-sampling) at the native 0.1 A/px, members
  trained one by one for a fixed number of Adam steps (BCE, lr 1e-3, batches of
  8 x 128^2 crops -- 256^2 crops cost 4x more per step and would not fit the time
  budget), applied one by one with ``torch.no_grad`` in NCHW.
* **elit** -- the defaults: training images resampled to the 0.2 A/px working scale
  and labels redrawn there, ``compact-unet`` + ``multi-swa`` defaults (8 members,
  early stopping, SWA); frames resampled to 0.2 A/px, ``Ensemble.predict``, atoms
  mapped back to the frames' own pixels.

F1: atoms located on the mean of the 8 members' maps (``elit.atoms.locate_atoms``,
threshold 0.5), matched one to one within 0.5 A (``elit.metrics.detection_scores``).
``train_speedup`` = reference training time / elit's training time (elit's full
default run, an upper bound on its time to reach the reference F1 -- reported only
as reached when ``elit_f1 >= reference_f1``); ``infer_speedup`` = reference / elit
time to apply 8 members to the test frames (elit's time includes resampling).
The peak memory of elit's default path on one 4096x4096 frame is measured in a
child process (``ru_maxrss``).

Prints ONE JSON line.  Timings on a shared machine are noisy: the line carries the
load average and the process CPU seconds next to the wall-clock times.
"""

from __future__ import annotations

import os

# Idle OpenMP threads must sleep, not spin: on a busy machine spinning threads make
# torch 5-10x slower (measured: 8-filter training step 2.0 s spinning, 0.35 s passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from elit.atoms import locate_atoms  # noqa: E402
from elit.data import TrainingSet  # noqa: E402
from elit.ensemble import Ensemble  # noqa: E402
from elit.plugins import with_architecture  # noqa: E402
from elit.masks import label_map  # noqa: E402
from elit.metrics import detection_scores  # noqa: E402
from elit.plugins import default_registry  # noqa: E402
from elit.scale import positions_to_input, resample  # noqa: E402

NATIVE = 0.1  # A/px of the simulated "data"
WORKING = 0.2  # elit's working scale
MATCH_A = 0.5  # match radius, Angstrom


# ----------------------------------------------------------------------------- data


def simulate(n, size, seed, noise):
    sim = default_registry().get_stage("simulator", "graphene")(image_size=size, noise_sigma=noise)
    return sim.simulate(n, np.random.default_rng(seed), NATIVE)


def to_working(ts: TrainingSet, radius_px: float) -> TrainingSet:
    """Resample images to the working scale and redraw the disc labels there."""
    factor = NATIVE / WORKING
    images = resample(ts.images, factor)
    shape = images.shape[1:]
    labels = np.zeros(images.shape, np.uint8)
    for i in range(len(ts)):
        a = ts.atoms.in_frame(i)
        rows, cols = (a.row + 0.5) * factor - 0.5, (a.col + 0.5) * factor - 0.5
        labels[i] = label_map(np.stack([rows, cols], 1), a.class_index, shape, radius_px)
    return TrainingSet(images, labels, ts.class_names, WORKING)


def f1_of(mean_maps: np.ndarray, truth, factor: float) -> dict:
    """Locate atoms on ``(N, K, H, W)`` maps, map to the frames' pixels, score against ``truth``."""
    found = locate_atoms(mean_maps, threshold=0.5, class_names=truth.class_names)
    if factor != 1.0:
        found.row, found.col = positions_to_input(found.row, found.col, factor)
    s = detection_scores(truth, found, MATCH_A / NATIVE)
    return {"f1": s["f1"], "precision": s["precision"], "recall": s["recall"]}


# ----------------------------------------------------------------------------- reference


def reference_arch():
    return default_registry().get_stage("architecture", "compact-unet")(base_filters=16, depth=3, blocks=(1, 2, 2, 3))


def train_reference(ts: TrainingSet, members: int, steps: int, batch: int, patch: int, seed: int):
    """Members one by one: fixed steps of Adam on BCE, random crops, last weights kept."""
    from elit.ensemble import Member, state_to_arrays

    arch = reference_arch()
    out = []
    for m in range(members):
        rng = np.random.default_rng(seed + m)
        torch.manual_seed(seed + m)
        net = arch.build(1, 1)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        _, h, w = ts.images.shape
        p = min(patch, h, w)
        net.train()
        for _ in range(steps):
            idx = rng.integers(0, len(ts), batch)
            r = rng.integers(0, h - p + 1, batch)
            c = rng.integers(0, w - p + 1, batch)
            x = np.stack([ts.images[i, a : a + p, b : b + p] for i, a, b in zip(idx, r, c)])
            y = np.stack([ts.labels[i, a : a + p, b : b + p] for i, a, b in zip(idx, r, c)])
            logits = net(torch.from_numpy(x)[:, None])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y == 1).float()[:, None])
            opt.zero_grad()
            loss.backward()
            opt.step()
        out.append(Member(state=state_to_arrays(net), seed=seed + m))
    return Ensemble("compact-unet", arch.get_params(), 1, 1, ts.class_names, out, NATIVE, "sigmoid", stage=arch)


def predict_reference(ens: Ensemble, frames: np.ndarray) -> np.ndarray:
    """The conventional application: each member in turn, NCHW, ``torch.no_grad``, batch-norm unfused."""
    out = np.empty((len(ens), len(frames), 1) + frames.shape[1:], np.float32)
    x = torch.from_numpy(frames)[:, None]
    for m in range(len(ens)):
        net = ens.build_member(m)
        with torch.no_grad():
            for f in range(len(frames)):
                out[m, f] = torch.sigmoid(net(x[f : f + 1]))[0].numpy()
    return out


# ----------------------------------------------------------------------------- elit


def train_elit(ts_work: TrainingSet, members: int, seed: int, trainer_params: dict):
    reg = default_registry()
    arch = reg.get_stage("architecture", "compact-unet")()
    trainer = reg.get_stage("trainer", "multi-swa")({"n_members": members, "progress": False, **trainer_params})
    return trainer.fit(ts_work, arch, seed=seed)


def predict_elit(ens: Ensemble, frames_native: np.ndarray) -> tuple[np.ndarray, float]:
    factor = NATIVE / ens.pixel_size
    work = resample(frames_native, factor)
    return ens.predict(work), factor


# ----------------------------------------------------------------------------- memory child


def memory_child(folder: str, size: int, members: int) -> None:
    """Load the ensemble saved in ``folder``, predict one size x size frame, print peak RSS."""
    with open(os.path.join(folder, "spec.json")) as fh:
        spec = json.load(fh)
    with np.load(os.path.join(folder, "arrays.npz"), allow_pickle=False) as npz:
        arrays = {k.replace("|", "/"): npz[k] for k in npz.files}  # "/" is not portable in npz keys
    ens = with_architecture(Ensemble.from_arrays(spec, arrays)).subset(list(range(members)))
    frame = np.random.default_rng(0).random((size, size)).astype(np.float32)
    ens.predict(frame[:64, :64])  # build the members once
    reset = _reset_peak_rss()
    base = _rss_mb("VmRSS")
    t = time.perf_counter()
    p = ens.predict(frame)
    seconds = time.perf_counter() - t
    peak = _rss_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_before_mb": base,
                "peak_rss_mb": peak,
                "peak_increase_mb": peak - base,
                "output_mb": p.nbytes / 2**20,
                "peak_is_since_reset": reset,
            }
        )
    )


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss_mb(field: str) -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_memory(ens: Ensemble, size: int, members: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        spec, arrays = ens.to_arrays()
        with open(os.path.join(folder, "spec.json"), "w") as fh:
            json.dump(spec, fh)
        np.savez(os.path.join(folder, "arrays.npz"), **{k.replace("/", "|"): v for k, v in arrays.items()})
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")])
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--memory-child", folder, "--memory-size", str(size), "--memory-members", str(members)],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
        return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run (fewer images, steps, members)")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--train-images", type=int, default=48, help="256x256 training images at 0.1 A/px")
    ap.add_argument("--test-frames", type=int, default=4, help="512x512 test frames at 0.1 A/px")
    ap.add_argument("--noise", type=float, default=0.05, help="simulator noise_sigma")
    ap.add_argument("--ref-steps", type=int, default=100, help="reference steps per member")
    ap.add_argument("--ref-batch", type=int, default=8)
    ap.add_argument("--ref-patch", type=int, default=128)
    ap.add_argument("--elit", default="{}", help="JSON of multi-swa settings overriding the defaults")
    ap.add_argument("--memory-size", type=int, default=4096)
    ap.add_argument("--memory-members", type=int, default=None, help="members for the memory run (default: all)")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.memory_size, args.memory_members or 8)
        return
    if args.quick:
        args.members = min(args.members, 2)
        args.train_images = min(args.train_images, 12)
        args.test_frames = min(args.test_frames, 1)
        args.ref_steps = min(args.ref_steps, 20)
    elit_params = json.loads(args.elit)
    if args.quick:
        elit_params = {"steps": 60, "eval_every": 20, **elit_params}
    result = {"quick": args.quick, "members": args.members, "threads": torch.get_num_threads(), "load_before": os.getloadavg()[0]}

    t = time.perf_counter()
    train = simulate(args.train_images, 256, args.seed, args.noise)
    test = simulate(args.test_frames, 512, args.seed + 1000, args.noise)
    radius_work = train.metadata.get("mask_radius_px", 5.0) * NATIVE / WORKING
    train_work = to_working(train, radius_work)
    result["simulate_s"] = time.perf_counter() - t

    # reference
    c0, t = time.process_time(), time.perf_counter()
    ref = train_reference(train, args.members, args.ref_steps, args.ref_batch, args.ref_patch, args.seed)
    result["reference_train_s"] = time.perf_counter() - t
    result["reference_train_cpu_s"] = time.process_time() - c0
    t = time.perf_counter()
    ref_maps = predict_reference(ref, test.images)
    result["reference_infer_s"] = time.perf_counter() - t
    ref_scores = f1_of(Ensemble.mean_std(ref_maps)[0], test.atoms, 1.0)
    result["reference_f1"] = ref_scores["f1"]
    result["reference_precision"], result["reference_recall"] = ref_scores["precision"], ref_scores["recall"]

    # elit
    c0, t = time.process_time(), time.perf_counter()
    ens = train_elit(train_work, args.members, args.seed, elit_params)
    result["elit_train_s"] = time.perf_counter() - t
    result["elit_train_cpu_s"] = time.process_time() - c0
    result["elit_steps_per_member"] = [m.metrics["steps"] for m in ens.members]
    result["elit_member_iou"] = [round(m.metrics["iou"], 4) for m in ens.members]
    ens.predict(np.zeros((1, 64, 64), np.float32))  # build the inference modules (part of loading)
    t = time.perf_counter()
    maps, factor = predict_elit(ens, test.images)
    result["elit_infer_s"] = time.perf_counter() - t
    elit_scores = f1_of(Ensemble.mean_std(maps)[0], test.atoms, factor)
    result["elit_f1"] = elit_scores["f1"]
    result["elit_precision"], result["elit_recall"] = elit_scores["precision"], elit_scores["recall"]

    # atom-class IoU of the ensemble mean on the held-out simulated test frames, at the working scale
    test_work = to_working(test, radius_work)
    mean_work = Ensemble.mean_std(ens.predict(test_work.images))[0]
    pred, true = mean_work[:, 0] >= 0.5, test_work.labels == 1
    result["elit_ensemble_iou"] = float((pred & true).sum() / max(1, (pred | true).sum()))
    result["reached_reference_f1"] = bool(result["elit_f1"] >= result["reference_f1"])
    result["train_speedup"] = result["reference_train_s"] / result["elit_train_s"]
    result["train_speedup_cpu"] = result["reference_train_cpu_s"] / result["elit_train_cpu_s"]
    result["infer_speedup"] = result["reference_infer_s"] / result["elit_infer_s"]
    result["targets_met"] = bool(
        result["train_speedup"] >= 2 and result["infer_speedup"] >= 2 and result["elit_f1"] >= result["reference_f1"] - 0.01
    )
    if not args.skip_memory:
        mem_members = args.memory_members or (2 if args.quick else args.members)
        mem = measure_memory(ens, args.memory_size, mem_members)
        result["memory_frame_px"] = args.memory_size
        result["memory_members"] = mem_members
        result.update({f"memory_{k}": v for k, v in mem.items()})
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}))


if __name__ == "__main__":
    main()
