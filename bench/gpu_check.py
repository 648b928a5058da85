"""One self-contained check of elit's training and inference on a GPU; prints ONE JSON line.

Run from the repository root::

    python bench/gpu_check.py                      # on a CUDA machine, < 5 min
    python bench/gpu_check.py --device cpu --quick # smoke test anywhere

What it measures (each part in its own try/except: a failure is recorded under
``errors`` and the rest still runs; parts that would overrun ``--budget`` seconds
are skipped and listed under ``skipped``):

* ``env``: torch version, CUDA availability, GPU name and memory.
* ``train``: a small ``multi-swa`` ensemble (compact-unet defaults) trained on the
  device from simulated graphene at 0.2 A/px: member-steps/s, seconds, IoU; the same
  for a few steps on the CPU for comparison.
* ``infer``: 8 members on 512x512 frames, for every path: member loop vs all
  members batched (``torch.func`` vmap), fp32 vs float16 autocast (and channels-last):
  seconds per call, frames/s (all members applied) and which path is fastest.
* ``agree``: the device's predictions against the CPU's (fp32 and AMP, loop and
  batched): largest absolute difference of the probabilities and the share of pixels
  whose 0.5-threshold decision differs.
* ``memory``: peak CUDA memory and time of one 4096x4096 frame through the default path.

On the lent GPU machines (Python 3.12 with torch, no pydantic/ase), carry the wheels in
``bench/results/gpu_wheels`` (see docs/training.md) and run::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site bench/results/gpu_wheels/*.whl \
      && PYTHONPATH=/tmp/site:$PWD:$PWD/plugins python3 bench/gpu_check.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "plugins")):
    if path not in sys.path:
        sys.path.insert(0, path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULT: dict = {"errors": {}, "skipped": []}
START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - START


class Part:
    """Run a block, record its exception instead of raising, skip it when the budget is spent."""

    def __init__(self, name: str, budget: float, needs: float = 0.0) -> None:
        self.name, self.budget, self.needs = name, budget, needs
        self.run = elapsed() + needs <= budget

    def __enter__(self):
        if not self.run:
            RESULT["skipped"].append(self.name)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None:
            RESULT["errors"][self.name] = f"{exc_type.__name__}: {exc}"[:400]
            RESULT.setdefault("tracebacks", {})[self.name] = "".join(traceback.format_exception(exc_type, exc, tb))[-1500:]
            return True
        return False


def sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def training_set(n: int, size: int, seed: int):
    """Simulated graphene at 0.2 A/px (falls back to Gaussian blobs if the simulator cannot load)."""
    from elit.data import TrainingSet

    try:
        from elit.plugins import default_registry

        sim = default_registry().get_stage("simulator", "graphene")(image_size=size, noise_sigma=0.05)
        return sim.simulate(n, np.random.default_rng(seed), 0.2)
    except Exception as err:  # keep going without the simulator
        RESULT["errors"]["simulator"] = f"{type(err).__name__}: {err}"[:300]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, size, size), np.float32)
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        pts = rng.uniform(0, size, (size * size // 50, 2))
        for r, c in pts:
            d2 = (yy - r) ** 2 + (xx - c) ** 2
            images[i] += np.exp(-d2 / 4.0)
            labels[i][d2 <= 6.25] = 1
        images[i] = (images[i] - images[i].min()) / max(np.ptp(images[i]), 1e-6)
    return TrainingSet(images, labels, ("atom",), 0.2)


def time_call(fn, dev, repeats: int) -> float:
    fn()  # warm-up (cudnn autotuning, module building)
    sync(dev)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="elit GPU check")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200, help="training steps per member on the device")
    ap.add_argument("--frames", type=int, default=8, help="512x512 frames for inference timing")
    ap.add_argument("--budget", type=float, default=270.0, help="seconds; later parts are skipped past it")
    args = ap.parse_args(argv)
    if args.quick:
        args.members, args.steps, args.frames = min(args.members, 2), min(args.steps, 10), min(args.frames, 2)
    frame_size = 128 if args.quick else 512
    memory_size = 512 if args.quick else 4096
    R = RESULT
    R.update({"device_arg": args.device, "quick": args.quick, "members": args.members})

    # ---------------------------------------------------------------- env
    dev = torch.device("cpu")
    with Part("env", args.budget):
        from elit.devices import resolve_device

        R["torch"] = torch.__version__
        R["cuda_available"] = bool(torch.cuda.is_available())
        R["cpu_threads"] = torch.get_num_threads()
        dev = resolve_device(args.device)
        if dev.type == "cuda":
            props = torch.cuda.get_device_properties(dev)
            R["gpu"] = props.name
            R["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
            R["capability"] = f"{props.major}.{props.minor}"

    # ---------------------------------------------------------------- train
    ens = None
    with Part("train", args.budget) as part:
        if part.run:
            from elit.plugins import default_registry

            reg = default_registry()
            ts = training_set(8 if args.quick else 32, 96 if args.quick else 128, 0)
            arch = reg.get_stage("architecture", "compact-unet")()
            trainer = reg.get_stage("trainer", "multi-swa")(
                n_members=args.members, steps=args.steps, eval_every=max(5, args.steps // 4), progress=False
            )
            sync(dev)
            t = time.perf_counter()
            ens = trainer.fit(ts, arch, seed=0, device=str(dev))
            sync(dev)
            seconds = time.perf_counter() - t
            steps = sum(m.metrics["steps"] for m in ens.members)
            R["train_seconds"] = round(seconds, 2)
            R["train_member_steps_per_s"] = round(steps / seconds, 2)
            R["train_member_iou"] = [round(m.metrics["iou"], 4) for m in ens.members]
            R["train_steps_per_member"] = [int(m.metrics["steps"]) for m in ens.members]
    with Part("train_cpu", args.budget, needs=30) as part:
        if part.run and dev.type == "cuda":
            from elit.plugins import default_registry

            reg = default_registry()
            ts = training_set(8, 128, 0)
            trainer = reg.get_stage("trainer", "multi-swa")(n_members=1, steps=20, eval_every=10, progress=False)
            t = time.perf_counter()
            trainer.fit(ts, reg.get_stage("architecture", "compact-unet")(), seed=0, device="cpu")
            R["train_cpu_member_steps_per_s"] = round(20 / (time.perf_counter() - t), 2)

    if ens is None:
        with Part("fallback_ensemble", args.budget):
            # inference can still be timed with untrained members
            from elit.ensemble import Ensemble, Member, state_to_arrays
            from elit.plugins import default_registry

            arch = default_registry().get_stage("architecture", "compact-unet")()
            members = []
            for i in range(args.members):
                torch.manual_seed(i)
                members.append(Member(state_to_arrays(arch.build(1, 1)), i))
            ens = Ensemble("compact-unet", arch.get_params(), 1, 1, ("C",), members, 0.2, "sigmoid", stage=arch)

    # ---------------------------------------------------------------- inference
    frames = np.random.default_rng(1).random((args.frames, frame_size, frame_size)).astype(np.float32)
    if ens is not None:
        try:
            sim = training_set(args.frames, frame_size, 5)
            frames = sim.images
        except Exception:
            pass
    paths = {
        "loop_fp32": dict(batched=False, amp=False),
        "batched_fp32": dict(batched=True, amp=False),
        "loop_amp": dict(batched=False, amp=True),
        "batched_amp": dict(batched=True, amp=True),
        "loop_amp_channels_last": dict(batched=False, amp=True, channels_last=True),
    }
    if dev.type == "cpu":
        paths = {
            "loop_fp32": dict(batched=False, amp=False, channels_last=False),
            "batched_fp32": dict(batched=True, amp=False),
            "loop_fp32_channels_last": dict(batched=False, amp=False, channels_last=True),
        }
    timings, preds = {}, {}
    for name, kw in paths.items():
        with Part(f"infer_{name}", args.budget, needs=10) as part:
            if part.run and ens is not None:
                seconds = time_call(lambda: ens.predict(frames, device=str(dev), **kw), dev, 2 if args.quick else 3)
                timings[name] = seconds
                R[f"infer_{name}_s"] = round(seconds, 4)
                R[f"infer_{name}_frames_per_s"] = round(len(frames) / seconds, 2)
                preds[name] = ens.predict(frames[:1], device=str(dev), **kw)
    if timings:
        R["infer_fastest"] = min(timings, key=timings.get)
        if "loop_fp32" in timings:
            R["infer_speedup_vs_loop_fp32"] = {k: round(timings["loop_fp32"] / v, 2) for k, v in timings.items()}
    # a larger workload: one 2048x2048 frame (GPU busier, AMP and batching may pay off)
    big_size = 256 if args.quick else 2048
    big_frame = np.random.default_rng(3).random((1, big_size, big_size)).astype(np.float32)
    big_paths = {k: v for k, v in paths.items() if k in ("loop_fp32", "loop_amp", "batched_amp", "batched_fp32")}
    big_times = {}
    for name, kw in big_paths.items():
        with Part(f"infer_large_{name}", args.budget, needs=15) as part:
            if part.run and ens is not None:
                seconds = time_call(lambda: ens.predict(big_frame, device=str(dev), tile=0, **kw), dev, 2)
                big_times[name] = seconds
                R[f"infer_large_{name}_s"] = round(seconds, 4)
    if big_times:
        R["infer_large_frame_px"] = big_size
        R["infer_large_fastest"] = min(big_times, key=big_times.get)
    with Part("infer_cudnn_benchmark", args.budget, needs=10) as part:
        if part.run and ens is not None and dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
            try:
                for name in ("loop_fp32", "loop_amp"):
                    seconds = time_call(lambda: ens.predict(frames, device=str(dev), **paths[name]), dev, 3)
                    R[f"infer_{name}_cudnn_benchmark_s"] = round(seconds, 4)
            finally:
                torch.backends.cudnn.benchmark = False
    with Part("infer_default", args.budget, needs=10) as part:
        if part.run and ens is not None:
            seconds = time_call(lambda: ens.predict(frames, device=str(dev)), dev, 2)
            R["infer_default_s"] = round(seconds, 4)
            R["infer_default_frames_per_s"] = round(len(frames) / seconds, 2)

    # ---------------------------------------------------------------- agreement with the CPU
    with Part("agree", args.budget, needs=15) as part:
        if part.run and ens is not None and preds:
            cpu = ens.predict(frames[:1], device="cpu", batched=False, amp=False)
            agree = {}
            for name, p in preds.items():
                diff = np.abs(p - cpu)
                agree[name] = {
                    "max_abs": float(diff.max()),
                    "mean_abs": float(diff.mean()),
                    "decision_flips": float(np.mean((p >= 0.5) != (cpu >= 0.5))),
                }
            R["agree_vs_cpu"] = agree
            # cuDNN uses TF32 for fp32 convolutions on Ampere and newer: ~1e-3 differences are expected
            tol = {"fp32": 5e-3, "amp": 2e-2}
            R["agree_ok"] = all(v["max_abs"] <= (tol["amp"] if "amp" in k else tol["fp32"]) for k, v in agree.items())

    # ---------------------------------------------------------------- memory on a big frame
    with Part("memory", args.budget, needs=20) as part:
        if part.run and ens is not None:
            big = np.random.default_rng(2).random((memory_size, memory_size)).astype(np.float32)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            t = time.perf_counter()
            out = ens.predict(big, device=str(dev))
            R["memory_frame_px"] = memory_size
            R["memory_seconds"] = round(time.perf_counter() - t, 3)
            R["memory_output_mb"] = round(out.nbytes / 2**20, 1)
            if dev.type == "cuda":
                R["memory_cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)

    R["seconds"] = round(elapsed(), 1)
    R["ok"] = not R["errors"]
    if not R.get("tracebacks"):
        R.pop("tracebacks", None)
    print(json.dumps(R))


if __name__ == "__main__":
    main()
