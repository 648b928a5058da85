"""Inference throughput and live latency of an 8-member ensemble on a GPU, against the FLOP and bandwidth limits.

Frames are 512x512 at 0.1 A/px, i.e. 256x256 working pixels at elit's 0.2 A/px;
the networks are compact-unet defaults (8 base filters, depth 3).  Paths measured
(frames/s: every member applied to every frame):

``elit``
    :meth:`elit.ensemble.Ensemble.predict` as the pipeline calls it (NumPy in, float32 out).
``loop``
    the members one after another, float16 weights, channels-last, data already on the device.
``grouped``
    all members as ONE network of grouped convolutions (member ``g`` owns channel
    group ``g``; the first convolution reads the shared frame once), float16,
    channels-last.
``grouped+graph``
    the same, replayed as a CUDA graph (no per-kernel launch cost).
``grouped+compile``
    the same through ``torch.compile`` (skipped with ``--no-compile``).
``stream``
    end to end: frames from pinned host memory, copied asynchronously on a
    second stream while the previous batch computes, probabilities quantized to
    uint8 on the device (the run file's precision) and copied back asynchronously
    into pinned memory.
``live``
    :class:`elit.live.LiveAnalyzer` on single 512x512 frames: latency per frame
    and its parts (prepare, predict, member scoring, locate), with and without a
    128-pixel scoring crop.

The limits: FLOPs per frame from ``torch.utils.flop_counter`` against
``--peak-tflops`` (default 989: H200 dense float16), and activation bytes per frame
(every layer's output written once and read once, float16) against ``--peak-tbs``
(default 4.8 TB/s).  Prints a table and one JSON line.

Usage::

    python bench/gpu_throughput.py                         # on a CUDA machine, ~3-5 min
    python bench/gpu_throughput.py --device cpu --quick    # smoke test (tiny sizes)

It needs elit's own dependencies (pydantic, pluggy, h5py, scipy, scikit-image...)
beside torch.  The lent GPU machines reach no network: download the wheels for
their Python here (``pip download --only-binary=:all: --python-version 3.12 -d
wheels pydantic pluggy ...``), carry the folder and ``pip install --no-index
--find-links wheels`` there before running this.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (ROOT, os.path.join(ROOT, "plugins")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


# ----------------------------------------------------------------------------- the grouped ensemble
def _group_conv(convs: list[nn.Conv2d], shared_input: bool) -> nn.Conv2d:
    """One convolution computing every member's convolution (groups = members)."""
    c0, g = convs[0], len(convs)
    conv = nn.Conv2d(
        c0.in_channels if shared_input else g * c0.in_channels, g * c0.out_channels, c0.kernel_size,
        padding=c0.padding, groups=1 if shared_input else g, bias=c0.bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(torch.cat([c.weight for c in convs], 0))
        if c0.bias is not None:
            conv.bias.copy_(torch.cat([c.bias for c in convs], 0))
    return conv


def _group_seq(seqs: list[nn.Sequential], shared_input: bool) -> nn.Sequential:
    layers, first = [], shared_input
    for parts in zip(*[list(s) for s in seqs]):
        if isinstance(parts[0], nn.Conv2d):
            layers.append(_group_conv(list(parts), first))
            first = False
        elif isinstance(parts[0], nn.Dropout2d):
            continue
        else:
            layers.append(parts[0])  # Identity (folded batch norm) or LeakyReLU: per channel
    return nn.Sequential(*layers)


class GroupedUNet(nn.Module):
    """compact-unet members (batch norm folded) as one grouped network: ``(B, 1, H, W) -> (G, B, K, H, W)`` logits."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        from elit_builtins.architectures import pad_to_multiple

        self._pad = pad_to_multiple
        m0 = members[0]
        self.g = len(members)
        self.size_multiple = m0.size_multiple
        self.mode = m0.upsample[0].mode
        self.encoder = nn.ModuleList(_group_seq([m.encoder[i] for m in members], i == 0) for i in range(len(m0.encoder)))
        self.bottleneck = _group_seq([m.bottleneck for m in members], False)
        self.up = nn.ModuleList(_group_conv([m.upsample[i].conv for m in members], False) for i in range(len(m0.upsample)))
        self.decoder = nn.ModuleList(_group_seq([m.decoder[i] for m in members], False) for i in range(len(m0.decoder)))
        self.head = _group_conv([m.head for m in members], False)

    def _cat(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n, _, h, w = a.shape
        return torch.cat([a.reshape(n, self.g, -1, h, w), b.reshape(n, self.g, -1, h, w)], 2).reshape(n, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = self._pad(x, self.size_multiple)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, block in zip(self.up, self.decoder):
            u = F.interpolate(x, scale_factor=2, mode=self.mode, **({} if self.mode == "nearest" else {"align_corners": False}))
            x = block(self._cat(up(u), skips.pop()))
        y = self.head(x)[..., :h, :w]
        n = y.shape[0]
        return y.reshape(n, self.g, -1, h, w).transpose(0, 1)


# ----------------------------------------------------------------------------- helpers
def make_ensemble(n_members: int, device: str):
    """A trained-for-a-few-steps 8-member compact-unet ensemble (weights do not matter for speed)."""
    from elit.data import TrainingSet
    from elit_builtins.architectures import CompactUNetArchitecture
    from elit_builtins.trainers import MultiSWATrainer

    rng = np.random.default_rng(0)
    size = 64
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((8, size, size), np.float32)
    labels = np.zeros((8, size, size), np.uint8)
    for i in range(8):
        for r, c in rng.uniform(0, size, (30, 2)):
            d2 = (yy - r) ** 2 + (xx - c) ** 2
            images[i] += np.exp(-d2 / 4.5)
            labels[i][d2 <= 6.25] = 1
    ts = TrainingSet(images, labels, ("atom",), 0.2)
    trainer = MultiSWATrainer(n_members=n_members, steps=4, batch_size=4, patch_size=32, eval_every=2, val_patches=2,
                              bn_batches=2, min_steps=0, progress=False)
    return trainer.fit(ts, CompactUNetArchitecture(), seed=1, device=device)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, seconds: float, min_reps: int = 3) -> float:
    """Median seconds of one call of ``fn`` (after a warm-up call)."""
    fn()
    sync(dev)
    times, t_end = [], time.perf_counter() + seconds
    while len(times) < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def flops_and_bytes(module: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """FLOPs of one forward call, and activation bytes (each layer output written and read once, float16)."""
    from torch.utils.flop_counter import FlopCounterMode

    total = [0]

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * 2 * 2

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    for h in handles:
        h.remove()
    return float(counter.get_total_flops()), float(total[0] + x.numel() * 2)


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--size", type=int, default=512, help="raw frame size (working size is half: 0.1 -> 0.2 A/px)")
    ap.add_argument("--batch", type=int, default=64, help="frames per call")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per path")
    ap.add_argument("--live-frames", type=int, default=30)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense float16 peak of the device (H200: 989)")
    ap.add_argument("--peak-tbs", type=float, default=4.8, help="memory bandwidth of the device, TB/s (H200: 4.8)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test on any machine")
    args = ap.parse_args()
    if args.quick:
        args.size, args.batch, args.seconds, args.live_frames, args.members = 128, 4, 0.2, 3, 3
    dev = torch.device(args.device)
    half = torch.float16 if dev.type == "cuda" else torch.float32  # float16 convolutions are slow or missing on CPUs
    cl = torch.channels_last
    torch.backends.cudnn.benchmark = True
    out: dict = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
                 "members": args.members, "frame": args.size, "working": args.size // 2, "batch": args.batch, "paths": {}}
    from elit.ensemble import fuse_batch_norm

    t0 = time.perf_counter()
    ens = make_ensemble(args.members, str(dev))
    out["setup_s"] = round(time.perf_counter() - t0, 1)
    work = args.size // 2
    frames_np = np.random.default_rng(0).random((args.batch, work, work), dtype=np.float32)
    members = [fuse_batch_norm(ens.build_member(i, "cpu")).eval() for i in range(args.members)]
    for m in members:
        for p in m.parameters():
            p.requires_grad_(False)
    grouped = GroupedUNet(members).eval()

    # correctness of the grouped network against the members (float32, CPU)
    x_chk = torch.from_numpy(frames_np[:2])[:, None]
    with torch.no_grad():
        ref = torch.stack([m(x_chk) for m in members])
        err = float((grouped(x_chk) - ref).abs().max())
    out["grouped_max_abs_logit_diff"] = err
    assert err < 1e-3, f"grouped network differs from the members by {err}"

    flops_member, bytes_member = flops_and_bytes(members[0], x_chk[:1])
    flops_frame, bytes_frame = flops_member * args.members, bytes_member * args.members
    out["gflop_per_frame"] = round(flops_frame / 1e9, 3)
    out["activation_mb_per_frame"] = round(bytes_frame / 1e6, 2)
    limit_flop = args.peak_tflops * 1e12 / flops_frame
    limit_bw = args.peak_tbs * 1e12 / bytes_frame
    out["limit_frames_per_s"] = {"flop": round(limit_flop), "bandwidth": round(limit_bw)}

    def record(name: str, seconds_per_call: float, n_frames: int) -> None:
        fps = n_frames / seconds_per_call
        out["paths"][name] = {"frames_per_s": round(fps, 1), "of_flop_limit": round(fps / limit_flop, 4),
                              "of_bandwidth_limit": round(fps / limit_bw, 4)}
        print(f"{name:>18}: {fps:10.1f} frames/s  ({100 * fps / limit_flop:6.2f} % of the FLOP limit, "
              f"{100 * fps / limit_bw:6.2f} % of the bandwidth limit)", flush=True)

    print(f"{out['device']}: {args.members} members, {args.size}^2 frames ({work}^2 working), {args.batch} frames per call; "
          f"{out['gflop_per_frame']} GFLOP and {out['activation_mb_per_frame']} MB of activations per frame; "
          f"limits {limit_flop:.0f} (FLOP) and {limit_bw:.0f} (bandwidth) frames/s", flush=True)

    def attempt(name, fn):
        try:
            fn()
        except Exception as exc:  # a path that fails is reported, the others still run
            out["paths"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            print(f"{name:>18}: failed ({out['paths'][name]['error']})", flush=True)

    # elit's own path
    attempt("elit", lambda: record("elit", timed(lambda: ens.predict(frames_np, device=str(dev)), dev, args.seconds), args.batch))

    x = torch.from_numpy(frames_np)[:, None].to(dev).to(half).contiguous(memory_format=cl)
    loop_members = [m.to(dev).to(half).to(memory_format=cl) for m in [fuse_batch_norm(ens.build_member(i, "cpu")).eval()
                                                                      for i in range(args.members)]]
    g = grouped.to(dev).to(half).to(memory_format=cl)

    def run_loop():
        with torch.inference_mode():
            return torch.stack([torch.sigmoid(m(x)) for m in loop_members])

    def run_grouped():
        with torch.inference_mode():
            return torch.sigmoid(g(x))

    attempt("loop", lambda: record("loop", timed(run_loop, dev, args.seconds), args.batch))
    attempt("grouped", lambda: record("grouped", timed(run_grouped, dev, args.seconds), args.batch))

    if dev.type == "cuda":
        def graph_path():
            static_x = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(3):
                    torch.sigmoid(g(static_x))
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_y = torch.sigmoid(g(static_x))
            record("grouped+graph", timed(graph.replay, dev, args.seconds), args.batch)
            return graph, static_x, static_y

        graph_state = {}
        attempt("grouped+graph", lambda: graph_state.update(zip(("graph", "x", "y"), graph_path())))

        if not args.no_compile:
            def compile_path():
                t = time.perf_counter()
                cg = torch.compile(g, mode="max-autotune-no-cudagraphs", dynamic=False)
                with torch.inference_mode():
                    cg(x)
                out["compile_s"] = round(time.perf_counter() - t, 1)

                def run():
                    with torch.inference_mode():
                        return torch.sigmoid(cg(x))

                record("grouped+compile", timed(run, dev, args.seconds), args.batch)

            attempt("grouped+compile", compile_path)

        def stream_path():
            """Pinned host frames -> async H2D (copy stream) -> graph replay -> uint8 on device -> async D2H (pinned)."""
            gs = graph_state
            if not gs:
                raise RuntimeError("needs the CUDA graph path")
            n_batches = 8
            host_in = [torch.from_numpy(frames_np).to(half).pin_memory() for _ in range(2)]
            host_out = [torch.empty((args.members, args.batch, 1, work, work), dtype=torch.uint8).pin_memory() for _ in range(2)]
            copy = torch.cuda.Stream()
            dev_in = [torch.empty((args.batch, 1, work, work), dtype=half, device=dev).contiguous(memory_format=cl) for _ in range(2)]
            ready = [torch.cuda.Event() for _ in range(2)]

            def run():
                with torch.cuda.stream(copy):
                    dev_in[0].copy_(host_in[0][:, None], non_blocking=True)
                    ready[0].record(copy)
                for b in range(n_batches):
                    i = b % 2
                    if b + 1 < n_batches:  # the next batch's copy overlaps this batch's compute
                        with torch.cuda.stream(copy):
                            dev_in[1 - i].copy_(host_in[1 - i][:, None], non_blocking=True)
                            ready[1 - i].record(copy)
                    torch.cuda.current_stream().wait_event(ready[i])
                    gs["x"].copy_(dev_in[i])
                    gs["graph"].replay()
                    q = (gs["y"] * 255).round_().to(torch.uint8)
                    host_out[i].copy_(q, non_blocking=True)
                torch.cuda.current_stream().synchronize()

            record("stream", timed(run, dev, args.seconds), args.batch * n_batches)

        attempt("stream", stream_path)

    # live latency
    def live_path():
        from elit.experiments import graphene_movie
        from elit.live import LiveAnalyzer

        movie = graphene_movie(n_frames=args.live_frames, size=args.size, pixel_size=0.1, seed=1).frames
        res = {}
        for label, crop in (("full", None), ("crop128", 128)):
            an = LiveAnalyzer(ens, {"scale": {"input_pixel_size": 0.1}}, device=str(dev), score_size=crop)
            an.process(movie[0])  # warm-up
            parts = [an.process(f).timings | {"latency": 0.0} for f in movie[1:]]
            lat = [sum(v for k, v in p.items() if k != "latency") for p in parts]
            res[label] = {"latency_ms": round(1e3 * float(np.median(lat)), 1),
                          **{k + "_ms": round(1e3 * float(np.median([p[k] for p in parts])), 1) for k in parts[0] if k != "latency"}}
            print(f"{'live ' + label:>18}: {res[label]}", flush=True)
        out["live"] = res

    try:
        live_path()
    except Exception as exc:
        out["live"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        print(f"{'live':>18}: failed ({out['live']['error']})", flush=True)
    best = max((v.get("frames_per_s", 0), k) for k, v in out["paths"].items())
    out["best"] = {"path": best[1], "frames_per_s": best[0]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
