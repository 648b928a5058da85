"""Built-in trainers: ``multi-swa``, an ensemble of independently seeded members, each with SWA."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field

from elit.data import IGNORE, TrainingSet
from elit.devices import prefers_channels_last, resolve_device, set_threads
from elit.ensemble import Ensemble, Member, load_matching_state, state_to_arrays
from elit.errors import ConfigError, InputError
from elit.losses import LOSSES, activation_for, make_loss, output_channels, resolve_loss
from elit.stages import Architecture, EnsembleTrainer, StageConfig

log = logging.getLogger("elit")


def member_seeds(seed: int, n: int) -> list[int]:
    """Per-member seeds: ``SeedSequence(seed).spawn(n)``, each reduced to one 32-bit int.

    Member ``i`` gets the same seed whatever ``n`` is, so a larger ensemble extends a smaller one.
    """
    return [int(child.generate_state(1)[0]) for child in np.random.SeedSequence(int(seed)).spawn(n)]


class PatchSampler:
    """Random square crops (with random flips / 90-degree turns) from a stack of images.

    Each epoch visits the images in a new random order (the member's own shuffling).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, patch: int, batch: int, rng: np.random.Generator, flips: bool):
        self.images, self.labels = images, labels
        self.patch = int(min(patch, images.shape[1], images.shape[2]))
        self.batch, self.rng, self.flips = int(batch), rng, flips
        self._order: list[int] = []

    def _next_image(self) -> int:
        if not self._order:
            self._order = list(self.rng.permutation(len(self.images)))
        return int(self._order.pop())

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(images, labels)`` of shape ``(batch, patch, patch)``."""
        p = self.patch
        _, h, w = self.images.shape
        xs = np.empty((self.batch, p, p), np.float32)
        ys = np.empty((self.batch, p, p), np.uint8)
        for b in range(self.batch):
            i = self._next_image()
            r = int(self.rng.integers(0, h - p + 1))
            c = int(self.rng.integers(0, w - p + 1))
            x = self.images[i, r : r + p, c : c + p]
            y = self.labels[i, r : r + p, c : c + p]
            if self.flips:
                k = int(self.rng.integers(4))
                x, y = np.rot90(x, k), np.rot90(y, k)
                if self.rng.integers(2):
                    x, y = x[:, ::-1], y[:, ::-1]
            xs[b], ys[b] = x, y
        return xs, ys


def fixed_crops(images: np.ndarray, labels: np.ndarray, patch: int, count: int, rng: np.random.Generator):
    """Return ``count`` crops of side ``patch`` spread over the images (deterministic for a given rng)."""
    n, h, w = images.shape
    p = int(min(patch, h, w))
    xs, ys = [], []
    for j in range(count):
        i = j % n
        r = int(rng.integers(0, h - p + 1))
        c = int(rng.integers(0, w - p + 1))
        xs.append(images[i, r : r + p, c : c + p])
        ys.append(labels[i, r : r + p, c : c + p])
    return np.stack(xs), np.stack(ys)


def split_held_out(ts: TrainingSet, fraction: float, min_rows: int, rng: np.random.Generator):
    """Split images and labels into training and held-out parts.

    Several images: a random ``fraction`` of the images (at least one) is held out.
    One image: its bottom ``fraction`` of rows (at least ``min_rows``) is held out,
    when the image is tall enough; otherwise nothing is held out.

    Returns
    -------
    (train_images, train_labels), (val_images, val_labels), held_out : bool
    """
    images, labels = ts.images, ts.labels
    n, h, _ = images.shape
    if fraction <= 0:
        return (images, labels), (images, labels), False
    if n >= 2:
        n_val = min(n - 1, max(1, int(round(fraction * n))))
        order = rng.permutation(n)
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
        return (images[train], labels[train]), (images[val], labels[val]), True
    rows = max(min_rows, int(round(fraction * h)))
    if h - rows < min_rows:
        return (images, labels), (images, labels), False
    return (images[:, : h - rows], labels[:, : h - rows]), (images[:, h - rows :], labels[:, h - rows :]), True


class MultiSWATrainer(EnsembleTrainer):
    """Trains N members one after another, each with its own seed and SWA.

    Each member: random patches (own shuffling), Adam at a constant learning rate,
    periodic evaluation on a held-out split with early stopping, stochastic weight
    averaging over the last ``swa_fraction`` of its steps, then batch-norm
    statistics recomputed on training patches for the averaged weights.
    When early stopping fires before the SWA phase, the SWA phase starts there and
    lasts so that it still covers the last ``swa_fraction`` of the member's steps.
    """

    name = "multi-swa"
    version = "1"
    description = "independently seeded members, Adam at constant LR, SWA with recomputed batch-norm, early stopping"

    class Config(StageConfig):
        n_members: int = Field(8, ge=1, le=256, description="ensemble members (the paper: 6-8 are enough for uncertainty)")
        steps: int = Field(200, ge=1, description="maximum optimiser steps per member (early stopping may end sooner)")
        batch_size: int = Field(8, ge=1, description="patches per step")
        patch_size: int = Field(
            64, ge=8, description="side of the random training crops, px (64 px = 12.8 A at 0.2 A/px, ~80 atoms of graphene)"
        )
        learning_rate: float = Field(2e-3, gt=0, le=1, description="Adam learning rate, constant (SWA needs no schedule)")
        weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
        swa_fraction: float = Field(0.25, gt=0, lt=1, description="fraction of a member's last steps whose weights are averaged")
        swa_every: int = Field(1, ge=1, description="steps between SWA weight samples")
        eval_every: int = Field(25, ge=1, description="steps between evaluations on the held-out split")
        patience: int = Field(4, ge=1, description="evaluations without improvement before early stopping")
        min_delta: float = Field(0.01, ge=0, description="relative held-out loss decrease that counts as improvement")
        min_steps: int = Field(100, ge=0, description="no early stopping before this many steps")
        warm_steps: int | None = Field(
            None, ge=1, description="maximum steps per member when warm-started (retraining needs fewer); None = steps"
        )
        val_fraction: float = Field(
            0.15, ge=0, lt=1, description="images held out for evaluation (one image: its bottom rows); 0 = evaluate on training data"
        )
        val_patches: int = Field(16, ge=1, description="fixed crops of the held-out split used for evaluation")
        bn_batches: int = Field(16, ge=1, description="training batches used to recompute batch-norm statistics after SWA")
        loss: Literal[LOSSES] = Field(  # type: ignore[valid-type]
            "auto", description="loss; auto = bce+dice for one atom class, ce for several"
        )
        focal_gamma: float = Field(2.0, ge=0, description="focusing parameter of the focal loss")
        class_balance: float = Field(
            0.5, ge=0, le=1, description="with several atom classes, weigh each label value by its pixel count ** -this "
            "(0: unweighted; 0.5: square-root balancing, so 18 Si among 3,000 C still count)",
        )
        flips: bool = Field(True, description="random flips and 90-degree rotations of training patches")
        threads: int = Field(0, ge=0, description="torch CPU threads; 0 = leave torch's setting (all cores)")
        progress: bool | None = Field(None, description="progress bar; None = only when stderr is a terminal")

    # ------------------------------------------------------------------ public

    def fit(
        self,
        training_set: TrainingSet,
        architecture: Architecture,
        seed: int,
        *,
        init: Ensemble | None = None,
        device: str = "cpu",
        completed: dict | None = None,
        on_member: Callable | None = None,
        executor=None,
    ) -> Ensemble:
        """Train the ensemble (see :meth:`elit.stages.EnsembleTrainer.fit`).

        Members are independent tasks of ``executor`` (default: one after another
        here); each returns plain arrays and ``on_member`` runs here, in the driver.
        """
        from elit.executors import LocalExecutor

        cfg = self.config
        if not isinstance(training_set, TrainingSet):
            raise InputError(f"fit needs a TrainingSet, got {type(training_set).__name__}")
        dev = resolve_device(device)
        set_threads(cfg.threads or None)
        n_classes = training_set.n_classes
        loss_name = resolve_loss(cfg.loss, n_classes)
        activation = activation_for(loss_name)
        out_ch = output_channels(loss_name, n_classes)
        weights = None
        if cfg.class_balance > 0 and n_classes > 1:
            weights = [float(w) for w in training_set.class_weights(power=cfg.class_balance)]
            log.info("class-balanced loss: weights %s (background first)", [round(w, 2) for w in weights])
        make_loss(loss_name, n_classes, cfg.focal_gamma, weights)  # a bad loss setting fails here, not in a worker
        completed = dict(completed or {})
        for k in completed:
            if not 0 <= int(k) < cfg.n_members:
                raise ConfigError(f"completed member {k} is out of range for n_members={cfg.n_members}")
        if init is not None and len(init) == 0:
            raise ConfigError("warm start ensemble has no members")

        split_rng = np.random.default_rng([int(seed), 0xE1171])
        (tr_x, tr_y), (va_x, va_y), held_out = split_held_out(training_set, cfg.val_fraction, cfg.patch_size, split_rng)
        val_x, val_y = fixed_crops(va_x, va_y, cfg.patch_size, cfg.val_patches, split_rng)
        executor = executor if executor is not None else LocalExecutor()
        local = isinstance(executor, LocalExecutor)
        seeds = member_seeds(seed, cfg.n_members)
        members: list[Member | None] = [completed.get(i) for i in range(cfg.n_members)]
        shared = {
            "trainer": self if local else type(self)(self.config),
            "architecture": architecture,
            "device": str(dev) if local else dev.type,  # a dask worker uses the GPU it sees
            "n_classes": n_classes,
            "class_names": tuple(training_set.class_names),
            "loss": loss_name,
            "class_weights": weights,
            "train": (tr_x, tr_y),
            "val": (val_x, val_y),
            "held_out": bool(held_out),
            "show": (cfg.progress if cfg.progress is not None else sys.stderr.isatty()) and local,
            "keep_last_iterate": local,
        }
        todo = {
            i: (seeds[i], None if init is None else init.members[i % len(init)].state, f"member {i + 1}/{cfg.n_members}")
            for i in range(cfg.n_members)
            if members[i] is None
        }
        self.last_iterate_: dict[str, np.ndarray] | None = None
        for i, result in executor.map_members(train_member_task, todo, shared):
            member = Member.from_arrays(*result["member"])
            if result.get("last_iterate") is not None:
                self.last_iterate_ = result["last_iterate"]
            members[i] = member
            if not local:
                log.info("member %d/%d trained (%.1f s)", i + 1, cfg.n_members, member.metrics.get("seconds", float("nan")))
            if on_member is not None:
                on_member(i, member)
        metadata = {
            "trainer": self.name,
            "trainer_version": self.version,
            "trainer_params": self.get_params(),
            "seed": int(seed),
            "loss": loss_name,
            "train_images": int(len(tr_x)),
            "held_out": bool(held_out),
            "warm_start": init is not None,
        }
        return Ensemble(
            architecture.name,
            architecture.get_params(),
            1,
            out_ch,
            training_set.class_names,
            members,  # type: ignore[arg-type]
            training_set.pixel_size,
            activation,
            metadata=metadata,
            stage=architecture,
        )

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _target(labels: np.ndarray, n_classes: int, activation: str, dev: torch.device) -> torch.Tensor:
        y = torch.from_numpy(np.ascontiguousarray(labels)).to(dev)
        if activation == "softmax":
            return y.long()
        k = torch.arange(1, n_classes + 1, device=dev, dtype=y.dtype)[None, :, None, None]
        target = (y[:, None] == k).float()
        return torch.where((y == IGNORE)[:, None], torch.full_like(target, -1.0), target)  # -1: left out of the loss

    def _train_member(self, ctx: _Context, architecture: Architecture, member_seed: int, init_state, show: bool, label: str) -> Member:
        cfg, dev = ctx.cfg, ctx.dev
        t0 = time.perf_counter()
        rng = np.random.default_rng(member_seed)
        fork_devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(member_seed)
            model = architecture.build(1, ctx.out_ch)
            warm = False
            if init_state is not None:
                skipped = set(load_matching_state(model, init_state))
                sizes = {k: v.numel() for k, v in model.state_dict().items() if v.is_floating_point()}
                loaded = sum(n for k, n in sizes.items() if k not in skipped)
                if loaded < 0.5 * sum(sizes.values()):
                    raise ConfigError(
                        "warm start: most weights of the initial ensemble do not fit this architecture; "
                        "warm-start only from an ensemble with the same architecture and settings"
                    )
                warm = True
            model.to(dev)
            if ctx.memory_format is not None:
                model.to(memory_format=ctx.memory_format)
            # the fused kernel (CPU and CUDA, the devices resolve_device allows): 0.75 ms a step against 3.6 ms
            # for the per-tensor loop (default net, 2 cores)
            opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
            sampler = PatchSampler(ctx.train[0], ctx.train[1], cfg.patch_size, cfg.batch_size, rng, cfg.flips)
            history: dict[str, list[float]] = {"step": [], "train_loss": [], "val_loss": [], "val_iou": []}
            end = cfg.warm_steps if (warm and cfg.warm_steps) else cfg.steps
            swa_start = int(round((1 - cfg.swa_fraction) * end))
            swa_model = None
            best, since_best, stopped_early = math.inf, 0, False
            running, n_running = 0.0, 0
            bar = None
            if show:
                from tqdm.auto import tqdm

                bar = tqdm(total=end, desc=label, unit="step", leave=False)
            step = 0
            try:
                while step < end:
                    model.train()
                    xb, yb = sampler.sample()
                    x = ctx.as_input(xb)
                    y = self._target(yb, ctx.n_classes, ctx.activation, dev)
                    loss = ctx.loss_fn(model(x), y)
                    if not torch.isfinite(loss):
                        raise InputError(
                            f"training diverged (loss {loss.item()}) at step {step}; lower learning_rate or check the training set"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    running += float(loss.detach())
                    n_running += 1
                    if step > swa_start and (step - swa_start) % cfg.swa_every == 0:
                        if swa_model is None:
                            swa_model = torch.optim.swa_utils.AveragedModel(model)
                        swa_model.update_parameters(model)
                    if bar is not None:
                        bar.update(1)
                    if step % cfg.eval_every == 0 or step == end:
                        val_loss, ious = self._evaluate(ctx, model)
                        history["step"].append(float(step))
                        history["train_loss"].append(running / max(1, n_running))
                        history["val_loss"].append(val_loss)
                        history["val_iou"].append(float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan"))
                        running, n_running = 0.0, 0
                        if bar is not None:
                            bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", val=f"{val_loss:.3f}")
                        if val_loss < best * (1 - cfg.min_delta):
                            best, since_best = val_loss, 0
                        else:
                            since_best += 1
                        if since_best >= cfg.patience and step >= cfg.min_steps and step <= swa_start:
                            # Plateau: start SWA now, for the last swa_fraction of the (shortened) run.
                            stopped_early = True
                            swa_start = step
                            end = min(end, step + max(1, math.ceil(step * cfg.swa_fraction / (1 - cfg.swa_fraction))))
                            if bar is not None:
                                bar.total = end
                                bar.refresh()
            finally:
                if bar is not None:
                    bar.close()
            self.last_iterate_ = state_to_arrays(model)
            final = model
            swa_samples = 0
            if swa_model is not None:
                swa_samples = int(swa_model.n_averaged.item())
                final = swa_model.module
                bn_loader = [ctx.as_input(sampler.sample()[0]) for _ in range(cfg.bn_batches)]
                torch.optim.swa_utils.update_bn(bn_loader, swa_model, device=dev)
            val_loss, ious = self._evaluate(ctx, final)
        metrics = {f"iou/{name}": float(v) for name, v in zip(ctx.class_names, ious)}
        metrics.update(
            {
                "iou": float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan"),
                "val_loss": float(val_loss),
                "steps": float(step),
                "swa_samples": float(swa_samples),
                "stopped_early": float(stopped_early),
                "warm_start": float(warm),
                "seconds": time.perf_counter() - t0,
            }
        )
        return Member(state=state_to_arrays(final), seed=member_seed, history=history, metrics=metrics)

    def _evaluate(self, ctx: _Context, model: torch.nn.Module) -> tuple[float, np.ndarray]:
        """Held-out loss and per-atom-class IoU (background excluded; NaN where a class is absent and not predicted)."""
        x_all, y_all = ctx.val
        model.eval()
        inter = np.zeros(ctx.n_classes)
        union = np.zeros(ctx.n_classes)
        total, count = 0.0, 0
        chunk = max(1, 2 * ctx.cfg.batch_size)
        with torch.inference_mode():
            for s in range(0, len(x_all), chunk):
                x, y = x_all[s : s + chunk], y_all[s : s + chunk]
                z = model(x)
                total += float(ctx.loss_fn(z, y)) * len(x)
                count += len(x)
                if ctx.activation == "softmax":
                    pred = z.argmax(1)
                    for k in range(ctx.n_classes):
                        valid = y != IGNORE
                        p, t = (pred == k + 1) & valid, y == k + 1
                        inter[k] += float((p & t).sum())
                        union[k] += float((p | t).sum())
                else:
                    p, t = (z > 0) & (y >= 0), y > 0.5
                    inter += (p & t).sum((0, 2, 3)).double().cpu().numpy()
                    union += (p | t).sum((0, 2, 3)).double().cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            ious = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
        return total / max(1, count), ious


class _Context:
    """Per-fit settings shared by the members.

    On the CPU, networks and inputs are channels-last: a training step of the default
    8-filter U-Net (8 x 64^2 patches, 2 cores) takes about a quarter less time than in NCHW.
    """

    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)
        self.memory_format = torch.channels_last if prefers_channels_last(self.dev) else None

    def as_input(self, images: np.ndarray) -> torch.Tensor:
        """Return a ``(B, H, W)`` batch as a ``(B, 1, H, W)`` network input on the device."""
        x = torch.from_numpy(np.ascontiguousarray(images))[:, None].to(self.dev)
        return x if self.memory_format is None else x.contiguous(memory_format=self.memory_format)


def train_member_task(item: tuple, shared: dict) -> dict:
    """Train one member; a module-level function, so executors can send it to workers.

    Parameters
    ----------
    item : (member_seed, init_state or None, label)
    shared : dict
        What every member shares (built by :meth:`MultiSWATrainer.fit`): the
        trainer, the architecture, the device name, the loss, the training and
        held-out arrays.

    Returns
    -------
    dict
        ``member``: ``Member.to_arrays()``; ``last_iterate``: the weights before
        averaging (local runs only, else None).  Plain arrays, never modules.
    """
    member_seed, init_state, label = item
    trainer: MultiSWATrainer = shared["trainer"]
    cfg = trainer.config
    dev = resolve_device(shared["device"])
    set_threads(cfg.threads or None)
    n_classes, loss_name = shared["n_classes"], shared["loss"]
    activation = activation_for(loss_name)
    val_x, val_y = shared["val"]
    ctx = _Context(
        cfg=cfg,
        dev=dev,
        n_classes=n_classes,
        class_names=shared["class_names"],
        activation=activation,
        out_ch=output_channels(loss_name, n_classes),
        loss_fn=make_loss(loss_name, n_classes, cfg.focal_gamma, shared.get("class_weights")),
        train=shared["train"],
    )
    ctx.val = (ctx.as_input(val_x), trainer._target(val_y, n_classes, activation, dev))
    member = trainer._train_member(ctx, shared["architecture"], member_seed, init_state, shared["show"], label)
    member.metrics["held_out"] = float(shared["held_out"])
    return {"member": member.to_arrays(), "last_iterate": trainer.last_iterate_ if shared["keep_last_iterate"] else None}


STAGES = [MultiSWATrainer]
