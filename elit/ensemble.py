"""A trained ensemble: its members' weights, and fast application to frames.

An :class:`Ensemble` holds plain NumPy weights (no pickles, no torch modules), so it
round-trips through :meth:`Ensemble.to_arrays` / :meth:`Ensemble.from_arrays`
(a JSON-able spec plus flat arrays) into any store.  :meth:`Ensemble.predict`
applies every member separately and returns per-member probability maps
``(M, N, K, H, W)`` (members, frames, atom classes, rows, cols); at the first,
simulated stage of ELIT the members must not be averaged.

Speed (measured, see ``docs/training.md``): inference runs under
``torch.inference_mode`` with batch norm folded into the convolutions; on the CPU
in channels-last memory format (faster there), large frames in overlapping tiles
(bounded memory), and on CUDA with float16 autocast and optionally all members
batched into one call (``torch.func.stack_module_state`` + ``vmap``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from elit.devices import prefers_channels_last, resolve_device
from elit.errors import InputError

FORMAT = "elit.ensemble"
FORMAT_VERSION = 1
ACTIVATIONS = ("sigmoid", "softmax")

# Whether all members run as one batched (vmap) call, by device type, when not asked
# explicitly.  Measured (docs/training.md): the plain member loop is faster on the
# CPU (2.4x) and on an H200 (1.8x, 8 members x 8 frames of 512^2, bench/gpu_check.py).
BATCHED_MEMBERS_DEFAULT = {"cpu": False, "cuda": False}
# Pixels per forward call before frames are split into tiles / batches.
MEAN_STD_FRAMES = 16
"""Frames per step of :meth:`Ensemble.mean_std` (the result does not depend on it)."""
PIXEL_BUDGET = {"cpu": 1024 * 1024, "cuda": 8 * 1024 * 1024}
TILE_DEFAULT = {"cpu": 1024, "cuda": 2048}


# --------------------------------------------------------------------------- state helpers


def state_to_arrays(module: nn.Module) -> dict[str, np.ndarray]:
    """Return a module's ``state_dict`` as NumPy arrays (float32; integer buffers as int64)."""
    out = {}
    for key, value in module.state_dict().items():
        arr = value.detach().to("cpu")
        arr = arr.to(torch.int64) if not arr.is_floating_point() else arr.to(torch.float32)
        out[key] = arr.numpy().copy()
    return out


def load_state(module: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load NumPy arrays into ``module`` (strict: keys and shapes must match)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise InputError(
            f"stored weights do not fit the architecture: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}"
        )
    tensors = {}
    for key, ref in own.items():
        arr = np.asarray(state[key])
        if tuple(arr.shape) != tuple(ref.shape):
            raise InputError(f"stored weight {key!r} has shape {arr.shape}, the architecture needs {tuple(ref.shape)}")
        tensors[key] = torch.from_numpy(np.ascontiguousarray(arr)).to(ref.dtype)
    module.load_state_dict(tensors)


def load_matching_state(module: nn.Module, state: dict[str, np.ndarray]) -> list[str]:
    """Load the tensors of ``state`` whose name and shape match ``module``; return the names skipped.

    Used for warm starts across a change of class count (the output layer differs).
    """
    own = module.state_dict()
    take, skipped = {}, []
    for key, ref in own.items():
        arr = state.get(key)
        if arr is not None and tuple(np.shape(arr)) == tuple(ref.shape):
            take[key] = torch.from_numpy(np.ascontiguousarray(arr)).to(ref.dtype)
        else:
            skipped.append(key)
    module.load_state_dict(take, strict=False)
    return skipped


def fuse_batch_norm(module: nn.Module) -> nn.Module:
    """Fold every ``BatchNorm2d`` that follows a ``Conv2d`` in an ``nn.Sequential`` into the conv.

    Works in place on an eval-mode module (inference only) and returns it.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in list(module.children()):
        fuse_batch_norm(child)
    if isinstance(module, nn.Sequential):
        items = list(module._modules.items())
        for (name_a, a), (name_b, b) in zip(items, items[1:]):
            if (
                isinstance(a, nn.Conv2d)
                and isinstance(b, nn.BatchNorm2d)
                and b.track_running_stats
                and b.running_mean is not None
            ):
                module._modules[name_a] = fuse_conv_bn_eval(a, b)
                module._modules[name_b] = nn.Identity()
    return module


def _nan_to_none(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# --------------------------------------------------------------------------- Member


@dataclass
class Member:
    """One trained network of an ensemble.

    Attributes
    ----------
    state : dict of str to ndarray
        ``state_dict`` as float32 arrays (batch-norm counters int64).
    seed : int
        The seed that set its weight initialisation and its shuffling.
    history : dict of str to list of float
        Training curves, one entry per evaluation (``step``, ``train_loss``,
        ``val_loss``, ``val_iou``).
    metrics : dict of str to float
        Final figures: ``iou/<class>`` on the held-out split, ``steps``, ``seconds``, ...
    """

    state: dict[str, np.ndarray]
    seed: int
    history: dict[str, list[float]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Return a JSON-able spec and flat arrays (weights by name, ``history/<key>`` curves)."""
        spec = {
            "seed": int(self.seed),
            "metrics": _nan_to_none({k: float(v) for k, v in self.metrics.items()}),
            "state_keys": list(self.state),
            "history_keys": list(self.history),
        }
        arrays = {k: np.asarray(v) for k, v in self.state.items()}
        for k, v in self.history.items():
            arrays[f"history/{k}"] = np.asarray(v, dtype=np.float64)
        return spec, arrays

    @classmethod
    def from_arrays(cls, spec: dict, arrays: dict[str, np.ndarray]) -> Member:
        """Rebuild a member from :meth:`to_arrays` output."""
        try:
            state = {k: np.asarray(arrays[k]) for k in spec["state_keys"]}
            history = {k: [float(x) for x in np.asarray(arrays[f"history/{k}"]).ravel()] for k in spec["history_keys"]}
        except KeyError as err:
            raise InputError(f"stored ensemble member lacks array {err.args[0]!r}") from None
        metrics = {k: (float("nan") if v is None else float(v)) for k, v in spec.get("metrics", {}).items()}
        return cls(state=state, seed=int(spec["seed"]), history=history, metrics=metrics)


# --------------------------------------------------------------------------- tiling


def tile_spans(size: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int, int, int]]:
    """Split ``[0, size)`` into overlapping tiles.

    Tile starts are multiples of ``multiple`` (so a network's pooling grid lines up
    with the whole-frame pass), and each output pixel is taken from the tile whose
    centre is nearest (the seam is in the middle of each overlap).

    Returns
    -------
    list of (start, stop, keep_start, keep_stop)
        Tile extent and the part of it written to the output.
    """
    if size <= tile:
        return [(0, size, 0, size)]
    step = max(multiple, ((tile - overlap) // multiple) * multiple)
    starts = []
    s = 0
    while s + tile < size:
        starts.append(s)
        s += step
    last = ((size - tile) // multiple) * multiple
    if not starts or last > starts[-1]:
        starts.append(last)
    stops = [min(st + tile, size) for st in starts]
    stops[-1] = size
    spans = []
    for i, (st, sp) in enumerate(zip(starts, stops)):
        keep0 = 0 if i == 0 else (starts[i] + stops[i - 1]) // 2
        keep1 = size if i == len(starts) - 1 else (starts[i + 1] + sp) // 2
        spans.append((st, sp, keep0, keep1))
    return spans


# --------------------------------------------------------------------------- Ensemble


class Ensemble:
    """Trained members sharing one architecture, applied member by member.

    Parameters
    ----------
    architecture : str
        Registered architecture name (e.g. ``"compact-unet"``).
    architecture_params : dict
        The architecture's config (JSON values).
    in_channels, out_channels : int
        Network inputs and outputs (``out_channels = K`` for sigmoid, ``K + 1`` for softmax).
    class_names : tuple of str
        Atom class names (``K`` entries, background excluded).
    members : list of Member
        The trained members.
    pixel_size : float
        Angstrom per pixel the members were trained at; frames must be resampled to it.
    activation : {"sigmoid", "softmax"}
        Output activation; with softmax, channel 0 is the background and is dropped.
    metadata : dict, optional
        JSON-able extras (e.g. the trainer's settings) kept with the ensemble.
    stage : Architecture or callable, optional
        The stage that builds the members' networks, or a function that returns
        it when first needed.  The trainer gives its own;
        :meth:`elit.store.RunStore.read_ensemble` looks ``architecture`` up in a
        plugin registry.  Needed to predict, not to store.
    """

    def __init__(
        self,
        architecture: str,
        architecture_params: dict,
        in_channels: int,
        out_channels: int,
        class_names: tuple[str, ...],
        members: list[Member],
        pixel_size: float,
        activation: str,
        metadata: dict | None = None,
        stage=None,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise InputError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.architecture = str(architecture)
        self.architecture_params = dict(architecture_params)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.class_names = tuple(str(c) for c in class_names)
        self.members = list(members)
        self.pixel_size = float(pixel_size)
        self.activation = activation
        self.metadata = dict(metadata or {})
        self.stage = stage
        expected = len(self.class_names) + (1 if activation == "softmax" else 0)
        if self.out_channels != expected:
            raise InputError(
                f"{len(self.class_names)} classes with {activation} need {expected} output channels, got {self.out_channels}"
            )
        self._cache: dict[tuple, nn.Module] = {}

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return (
            f"Ensemble({self.architecture!r}, members={len(self)}, classes={self.class_names}, "
            f"pixel_size={self.pixel_size}, activation={self.activation!r})"
        )

    @property
    def n_classes(self) -> int:
        """Number of atom classes (background excluded)."""
        return len(self.class_names)

    # ----------------------------------------------------------------- building

    def architecture_stage(self):
        """The Architecture stage that builds the members' networks (see ``stage``)."""
        if self.stage is None:
            raise InputError(
                f"this {self.architecture!r} ensemble has no architecture stage to build its networks: give one "
                "(Ensemble(..., stage=...)), or read the ensemble with RunStore.read_ensemble or "
                "elit.plugins.with_architecture"
            )
        if not hasattr(self.stage, "build"):  # found when first needed
            self.stage = self.stage()
        return self.stage

    def build_member(self, i: int, device="cpu") -> nn.Module:
        """Return member ``i`` as a torch module in eval mode, weights loaded, on ``device``."""
        if not 0 <= i < len(self.members):
            raise IndexError(f"member {i} out of range for an ensemble of {len(self.members)}")
        module = self.architecture_stage().build(self.in_channels, self.out_channels)
        load_state(module, self.members[i].state)
        return module.to(resolve_device(device)).eval()

    def _inference_module(self, i: int, dev: torch.device, channels_last: bool) -> nn.Module:
        key = (i, str(dev), channels_last)
        module = self._cache.get(key)
        if module is None:
            module = fuse_batch_norm(self.build_member(i, "cpu"))
            module = module.to(dev)
            if channels_last:
                module = module.to(memory_format=torch.channels_last)
            for p in module.parameters():
                p.requires_grad_(False)
            self._cache[key] = module
        return module

    def clear_cache(self) -> None:
        """Drop the networks kept for repeated :meth:`predict` calls (frees memory)."""
        self._cache.clear()

    # ----------------------------------------------------------------- prediction

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.activation == "softmax":
            return torch.softmax(logits, dim=-3)[..., 1:, :, :]
        return torch.sigmoid(logits)

    def _size_multiple(self, module: nn.Module) -> int:
        return int(getattr(module, "size_multiple", 32))

    def predict(
        self,
        frames,
        members: Sequence[int] | None = None,
        device="cpu",
        batch_size: int | None = None,
        tile: int | None = None,
        overlap: int = 32,
        progress: bool = False,
        *,
        batched: bool | None = None,
        amp: bool | None = None,
        channels_last: bool | None = None,
    ) -> np.ndarray:
        """Apply each member to normalised frames.

        Parameters
        ----------
        frames : array, shape (H, W) or (N, H, W)
            Frames at the ensemble's ``pixel_size``, normalised like the training
            images (``elit.scale.normalize``); any numeric dtype.
        members : sequence of int, optional
            Members to apply (default all), in this order.
        device : str
            ``"cpu"``, ``"cuda"`` or ``"auto"``.
        batch_size : int, optional
            Frames (or tiles) per forward call; default from a pixel budget.
        tile : int, optional
            Tile side for large frames; 0 disables tiling; default: tile frames larger
            than the device's pixel budget (1024 px tiles on CPU, 2048 on CUDA).
        overlap : int
            Overlap between tiles in pixels; seams fall in the middle of it.
        progress : bool
            Show a progress bar.
        batched : bool, optional
            Run all members as one vmapped call (default: per device, by measurement).
        amp : bool, optional
            float16 autocast (default: on CUDA only).
        channels_last : bool, optional
            channels-last memory format (default: on CPU only).

        Returns
        -------
        ndarray, shape (M, N, K, H, W), float32
            Atom-class probabilities per member (no background channel).
        """
        frames = _as_frames(frames)
        idx = list(range(len(self.members))) if members is None else [int(m) for m in members]
        for m in idx:
            if not 0 <= m < len(self.members):
                raise InputError(f"member {m} out of range for an ensemble of {len(self.members)}")
        n, h, w = frames.shape
        out = np.empty((len(idx), n, self.n_classes, h, w), dtype=np.float32)
        self._predict_into(frames, idx, device, batch_size, tile, overlap, progress, batched, amp, channels_last, out)
        return out

    def predict_chunks(self, frames, chunk: int = 16, **kw) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(frame_slice, predictions)`` for consecutive chunks of frames.

        For long movies: memory holds only one chunk's ``(M, chunk, K, H, W)`` maps.
        ``frames`` may be any array-like indexable along the first axis (an h5py
        dataset or a memory map works); keywords are those of :meth:`predict`.
        """
        if chunk < 1:
            raise InputError(f"chunk must be >= 1, got {chunk}")
        shape = np.shape(frames)
        if len(shape) == 2:
            yield slice(0, 1), self.predict(frames, **kw)
            return
        for start in range(0, shape[0], chunk):
            sl = slice(start, min(start + chunk, shape[0]))
            yield sl, self.predict(np.asarray(frames[sl]), **kw)

    def _predict_into(self, frames, idx, device, batch_size, tile, overlap, progress, batched, amp, channels_last, out):
        dev = resolve_device(device)
        kind = dev.type
        if batched is None:
            batched = BATCHED_MEMBERS_DEFAULT.get(kind, False) and len(idx) > 1
        if amp is None:
            amp = kind == "cuda"
        if channels_last is None:
            channels_last = prefers_channels_last(dev)
        n, h, w = frames.shape
        budget = PIXEL_BUDGET.get(kind, PIXEL_BUDGET["cpu"])
        if tile is None:
            tile = TILE_DEFAULT.get(kind, 1024) if h * w > budget else 0
        if batch_size is None and kind == "cpu":
            # one frame (or tile) per call: oneDNN's summation order depends on the batch, so batching would
            # make a frame's map depend on how the movie was chunked (locally or in cluster tasks)
            batch_size = 1
        if batch_size is None:
            px = min(h, tile or h) * min(w, tile or w)
            per_call = max(1, len(idx)) if batched else 1
            batch_size = max(1, budget // max(1, px * per_call))
        groups = [idx] if batched else [[m] for m in idx]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(groups) * n, desc="members x frames", unit="frame")
        try:
            with torch.inference_mode():
                pos = 0
                for group in groups:
                    fn, multiple = self._forward_fn(group, dev, batched, amp, channels_last)
                    self._apply(fn, frames, out[pos : pos + len(group)], batch_size, tile, overlap, multiple, dev, bar)
                    pos += len(group)
        finally:
            if bar is not None:
                bar.close()

    def _forward_fn(self, group, dev, batched, amp, channels_last):
        """Return ``fn(x) -> (G, B, K, h, w)`` probabilities for a member group, and its size multiple."""
        modules = [self._inference_module(m, dev, channels_last and not batched) for m in group]
        multiple = self._size_multiple(modules[0])
        autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if (amp and dev.type == "cuda") else None

        if batched and len(modules) > 1:
            from torch.func import functional_call, stack_module_state, vmap

            key = ("stacked", tuple(group), str(dev))
            stacked = self._cache.get(key)
            if stacked is None:
                params, buffers = stack_module_state(modules)
                base = copy.deepcopy(modules[0]).to("meta")
                stacked = _Stacked(base, params, buffers)
                self._cache[key] = stacked

            def call(p, b, x):
                return functional_call(stacked.base, (p, b), (x,))

            vcall = vmap(call, in_dims=(0, 0, None))

            def fn(x):
                if autocast:
                    with autocast():
                        z = vcall(stacked.params, stacked.buffers, x)
                else:
                    z = vcall(stacked.params, stacked.buffers, x)
                return self._activate(z)

            return fn, multiple

        module = modules[0]
        mf = torch.channels_last if channels_last else None

        def fn(x):
            if mf is not None:
                x = x.contiguous(memory_format=mf)
            if autocast:
                with autocast():
                    z = module(x)
            else:
                z = module(x)
            return self._activate(z)[None]

        return fn, multiple

    def _apply(self, fn, frames, out, batch_size, tile, overlap, multiple, dev, bar):
        """Run ``fn`` over all frames (tiled if asked) and write into ``out`` (G, N, K, H, W)."""
        n, h, w = frames.shape
        if tile and (h > tile or w > tile):
            tile = max(multiple, (int(tile) // multiple) * multiple)
            overlap = min(int(overlap), tile - multiple)
            rows = tile_spans(h, tile, overlap, multiple)
            cols = tile_spans(w, tile, overlap, multiple)
            tiles = [(r, c) for r in rows for c in cols]
            for f in range(n):
                for t0 in range(0, len(tiles), batch_size):
                    part = tiles[t0 : t0 + batch_size]
                    # Tiles of one batch must share a shape; group by shape.
                    by_shape: dict[tuple[int, int], list] = {}
                    for r, c in part:
                        by_shape.setdefault((r[1] - r[0], c[1] - c[0]), []).append((r, c))
                    for items in by_shape.values():
                        x = np.stack([frames[f, r[0] : r[1], c[0] : c[1]] for r, c in items])
                        p = fn(torch.from_numpy(x)[:, None].to(dev)).float().cpu().numpy()
                        for j, (r, c) in enumerate(items):
                            out[:, f, :, r[2] : r[3], c[2] : c[3]] = p[
                                :, j, :, r[2] - r[0] : r[3] - r[0], c[2] - c[0] : c[3] - c[0]
                            ]
                if bar is not None:
                    bar.update(1)
            return
        for f0 in range(0, n, batch_size):
            x = torch.from_numpy(frames[f0 : f0 + batch_size])[:, None].to(dev)
            out[:, f0 : f0 + len(x)] = fn(x).float().cpu().numpy()
            if bar is not None:
                bar.update(len(x))

    # ----------------------------------------------------------------- statistics

    @staticmethod
    def mean_std(predictions: np.ndarray, members: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return the mean and standard deviation over the member axis.

        Parameters
        ----------
        predictions : ndarray, shape (M, N, K, H, W)
        members : sequence of int, optional
            Members to include (default all).

        Returns
        -------
        mean, std : ndarray, shape (N, K, H, W), float32
        """
        if not hasattr(predictions, "shape"):
            predictions = np.asarray(predictions)
        shape = tuple(predictions.shape)
        if len(shape) != 5:
            raise InputError(f"predictions must be (M, N, K, H, W), got shape {shape}")
        idx = list(range(shape[0])) if members is None else list(members)
        if len(idx) == 0:
            raise InputError("mean_std needs at least one member")
        mean = np.empty(shape[1:], np.float32)
        std = np.empty(shape[1:], np.float32)
        step = MEAN_STD_FRAMES
        for f0 in range(0, shape[1], step):  # a few frames at a time: float64 sums of a long movie stay small
            p = np.asarray(predictions[idx, f0 : f0 + step], dtype=np.float32)
            mean[f0 : f0 + step] = p.mean(axis=0, dtype=np.float64)
            std[f0 : f0 + step] = p.std(axis=0, dtype=np.float64)
        return mean, std

    def subset(self, members: list[int]) -> Ensemble:
        """Return a new ensemble with only ``members`` (in that order)."""
        for m in members:
            if not 0 <= int(m) < len(self.members):
                raise InputError(f"member {m} out of range for an ensemble of {len(self.members)}")
        return Ensemble(
            self.architecture,
            self.architecture_params,
            self.in_channels,
            self.out_channels,
            self.class_names,
            [self.members[int(m)] for m in members],
            self.pixel_size,
            self.activation,
            metadata=self.metadata,
            stage=self.stage,
        )

    # ----------------------------------------------------------------- persistence

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Return a JSON-able spec and flat arrays named ``member_000/<param>``.

        The spec holds the architecture name and config, channels, class names,
        pixel size, activation, metadata and each member's spec.
        """
        spec = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "architecture": self.architecture,
            "architecture_params": self.architecture_params,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "class_names": list(self.class_names),
            "pixel_size": self.pixel_size,
            "activation": self.activation,
            "metadata": self.metadata,
            "members": [],
        }
        arrays: dict[str, np.ndarray] = {}
        for i, member in enumerate(self.members):
            mspec, marrays = member.to_arrays()
            spec["members"].append(mspec)
            for k, v in marrays.items():
                arrays[f"member_{i:03d}/{k}"] = v
        return spec, arrays

    @classmethod
    def from_arrays(cls, spec: dict, arrays: dict[str, np.ndarray], stage=None) -> Ensemble:
        """Rebuild an ensemble from :meth:`to_arrays` output (``stage``: see the class)."""
        if spec.get("format", FORMAT) != FORMAT:
            raise InputError(f"not an elit ensemble (format {spec.get('format')!r})")
        if int(spec.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise InputError(
                f"ensemble format version {spec['format_version']} is newer than this elit reads ({FORMAT_VERSION}); upgrade elit"
            )
        members = []
        for i, mspec in enumerate(spec["members"]):
            prefix = f"member_{i:03d}/"
            sub = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            members.append(Member.from_arrays(mspec, sub))
        return cls(
            spec["architecture"],
            spec["architecture_params"],
            spec["in_channels"],
            spec["out_channels"],
            tuple(spec["class_names"]),
            members,
            spec["pixel_size"],
            spec["activation"],
            metadata=spec.get("metadata") or {},
            stage=stage,
        )


class _Stacked:
    """Members' parameters stacked along a new first axis, for the vmapped path."""

    def __init__(self, base: nn.Module, params: dict, buffers: dict) -> None:
        self.base = base
        self.params = params
        self.buffers = buffers


def _as_frames(frames) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"frames must be (H, W) or (N, H, W), got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"frames are empty (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"frames must be real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InputError("frames contain NaN or infinite values")
    return arr
