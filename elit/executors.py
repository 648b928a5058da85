"""Executors: where independent tasks (ensemble members, frame chunks) run.

:class:`LocalExecutor` runs them one after another in this process (the
default).  :class:`DaskExecutor` sends each one to a ``dask.distributed``
cluster: a running scheduler (``address``), or a LocalCluster of worker
processes on 127.0.0.1 started on first use.  With GPUs and no address, one
worker per GPU is started, each seeing only its GPU (``CUDA_VISIBLE_DEVICES``)
and advertising the resource ``GPU=1``, so each task gets one whole GPU.

Tasks are plain functions of plain arguments that return plain arrays: only the
driver writes the result file (a single HDF5 writer).  Dask moves tasks and
results between processes with cloudpickle; nothing is pickled into files.

Example
-------
>>> with make_executor({"kind": "dask", "n_workers": 2}) as ex:   # doctest: +SKIP
...     for index, value in ex.map_members(square, [1, 2, 3]):
...         print(index, value)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from elit.errors import ConfigError, ElitError

log = logging.getLogger("elit")

_NO_SHARED = object()


@runtime_checkable
class Executor(Protocol):
    """Runs independent tasks and yields their results as they complete."""

    def map_members(self, fn: Callable, items: Iterable | Mapping, shared: Any = _NO_SHARED) -> Iterator[tuple[Any, Any]]:
        """Yield ``(index, fn(item[, shared]))`` for every item, in order of completion.

        Parameters
        ----------
        fn : callable
            A module-level function (it travels to the workers).
        items : sequence or mapping
            The tasks' arguments; a mapping's keys are the indices, else positions are.
        shared : object, optional
            One argument common to every task (e.g. the training arrays); sent to
            each worker once and passed as ``fn(item, shared)``.
        """
        ...

    def close(self) -> None:
        """Release workers and connections."""
        ...


def _indexed(items: Iterable | Mapping) -> list[tuple[Any, Any]]:
    if isinstance(items, Mapping):
        return list(items.items())
    return list(enumerate(items))


class LocalExecutor:
    """Runs every task in this process, one after another (the default)."""

    kind = "local"

    def map_members(self, fn: Callable, items: Iterable | Mapping, shared: Any = _NO_SHARED) -> Iterator[tuple[Any, Any]]:
        """Yield ``(index, result)`` for each item, in order (see :meth:`Executor.map_members`)."""
        for index, item in _indexed(items):
            yield index, (fn(item) if shared is _NO_SHARED else fn(item, shared))

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return "LocalExecutor()"


def visible_gpus() -> list[int]:
    """Indices of the CUDA devices this process sees (empty without CUDA)."""
    try:
        from elit.devices import cuda_available

        if not cuda_available():
            return []
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # pragma: no cover - broken driver reads as no GPU
        return []


class DaskExecutor:
    """Runs tasks on a ``dask.distributed`` cluster.

    Parameters
    ----------
    address : str, optional
        Address of a running scheduler (``tcp://host:8786``).  None: start a
        LocalCluster of worker processes on 127.0.0.1 (at first use).
    n_workers : int
        Workers of the LocalCluster (ignored with ``address``).
    threads_per_worker : int
        Tasks each worker runs at the same time (keep 1 for training).
    retries : int
        Times a task that raised is tried again.  A task whose worker died is
        rescheduled on another worker by dask itself.
    gpus : list of int, optional
        GPUs for a LocalCluster, one worker each (None: every visible GPU when
        ``use_gpus``, else none).
    use_gpus : bool
        Start one worker per visible GPU when no address and no ``gpus`` are given.
    """

    kind = "dask"

    def __init__(
        self,
        address: str | None = None,
        n_workers: int = 2,
        threads_per_worker: int = 1,
        retries: int = 1,
        gpus: list[int] | None = None,
        use_gpus: bool = False,
    ) -> None:
        if n_workers < 1:
            raise ConfigError(f"executor n_workers must be at least 1, got {n_workers}")
        if threads_per_worker < 1:
            raise ConfigError(f"executor threads_per_worker must be at least 1, got {threads_per_worker}")
        self.address = address
        self.n_workers = int(n_workers)
        self.threads_per_worker = int(threads_per_worker)
        self.retries = int(retries)
        self.gpus = list(gpus) if gpus is not None else (visible_gpus() if use_gpus and address is None else [])
        self._client = None
        self._cluster = None

    # ------------------------------------------------------------------ connection
    @property
    def client(self):
        """The ``dask.distributed.Client`` (connects or starts the cluster on first use)."""
        if self._client is None:
            self._start()
        return self._client

    def _start(self) -> None:
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError("executor kind 'dask' needs dask.distributed: pip install 'elit[dask]'") from None
        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger("distributed").setLevel(logging.WARNING)  # dask's chatter only with --debug logging
        if self.address:
            try:
                self._client = Client(self.address, timeout="20s")
            except (OSError, TimeoutError) as err:
                raise ElitError(f"cannot reach the dask scheduler at {self.address!r} ({err}); is it running?") from None
            return
        import dask

        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which made torch training
        # 2x slower here (measured); workers of our own cluster keep glibc's default.
        pre_spawn = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
        pre_spawn.pop("MALLOC_TRIM_THRESHOLD_", None)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}):
            if self.gpus:
                self._cluster = _gpu_cluster(self.gpus, self.threads_per_worker)
            else:
                self._cluster = LocalCluster(
                    n_workers=self.n_workers,
                    threads_per_worker=self.threads_per_worker,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",  # loopback only, any free port
                )
        self._client = Client(self._cluster)
        log.info("dask cluster with %d workers started; dashboard %s", len(self._cluster.workers), self._client.dashboard_link)

    def _task_resources(self) -> dict | None:
        """``{"GPU": 1}`` when every worker advertises GPUs, else None."""
        workers = self.client.scheduler_info().get("workers", {})
        if workers and all(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values()):
            return {"GPU": 1}
        return None

    def worker_pids(self) -> dict[str, int]:
        """Process id of each worker, by worker address."""
        return self.client.run(os.getpid)

    # ------------------------------------------------------------------ tasks
    def map_members(self, fn: Callable, items: Iterable | Mapping, shared: Any = _NO_SHARED) -> Iterator[tuple[Any, Any]]:
        """Submit every item as a task; yield ``(index, result)`` as tasks finish.

        Raises
        ------
        ElitError
            When a task fails for good (after its retries, or when workers keep
            dying); results yielded before that are complete and can be kept.
        """
        from dask.distributed import as_completed

        pairs = _indexed(items)
        if not pairs:
            return
        client = self.client
        futures, index_of, done = [], {}, set()
        try:
            resources = self._task_resources()
            # ``shared`` goes in as a task of its own (not scattered): when the worker
            # holding it dies, the scheduler can make it again from the task.
            extra = ()
            if shared is not _NO_SHARED:
                extra = (client.submit(_identity, shared, pure=False, key=f"elit-shared-{os.urandom(4).hex()}"),)
            threads = driver_threads()
            for index, item in pairs:
                key = f"elit-{getattr(fn, '__name__', 'task')}-{index}-{os.urandom(4).hex()}"
                fut = client.submit(
                    run_pinned, fn, threads, item, *extra, pure=False, retries=self.retries, resources=resources, key=key
                )
                index_of[fut.key] = index
                futures.append(fut)
        except Exception as err:
            raise ElitError(f"cannot submit tasks to the dask cluster ({type(err).__name__}: {err})") from err
        try:
            for fut in as_completed(futures):
                index = index_of[fut.key]
                try:
                    result = fut.result()
                except ElitError:
                    raise
                except Exception as err:  # KilledWorker, CancelledError, lost scheduler, ...
                    raise ElitError(
                        f"task {index} failed on the dask cluster ({type(err).__name__}: {err}); "
                        "finished results are kept, so run again (or resume) to continue"
                    ) from err
                done.add(fut.key)
                yield index, result
        finally:
            for fut in futures:
                if fut.key not in done:
                    fut.cancel()

    def close(self) -> None:
        """Close the client and any cluster this executor started."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            nanny_log = logging.getLogger("distributed.nanny")
            level = nanny_log.level
            if not log.isEnabledFor(logging.DEBUG):
                nanny_log.setLevel(logging.ERROR)  # "still alive after 4 s, killing" is routine at shutdown
            try:
                self._cluster.close()
            finally:
                nanny_log.setLevel(level)
            self._cluster = None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.address or (f"{len(self.gpus)} GPU workers" if self.gpus else f"{self.n_workers} local workers")
        return f"DaskExecutor({where})"


def _identity(x):
    return x


def driver_threads() -> int:
    """torch's intra-op thread count in this process (the count every task is pinned to)."""
    import torch

    return int(torch.get_num_threads())


def run_pinned(fn: Callable, threads: int, *args):
    """Run ``fn(*args)`` with torch's intra-op threads set to ``threads`` (a worker-side task wrapper).

    A float reduction split over another number of threads sums in another
    order, so a member trained with 1 thread differs in its last bits from one
    trained with 2, and the difference grows through training and the following
    iterations.  Dask starts workers with ``OMP_NUM_THREADS=1``; pinning each
    task to the driver's count makes a task's result bitwise equal to the same
    call in the driver.  The worker's previous setting is restored afterwards.
    """
    import torch

    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(int(threads))
    try:
        return fn(*args)
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _gpu_cluster(gpus: list[int], threads_per_worker: int):
    """A cluster on 127.0.0.1 with one worker process per GPU.

    Each worker's ``CUDA_VISIBLE_DEVICES`` names its GPU alone (so ``cuda`` in the
    task means that GPU) and it advertises ``resources={"GPU": 1}``.
    """
    from dask.distributed import Nanny, Scheduler, SpecCluster

    workers = {
        f"gpu-{g}": {
            "cls": Nanny,
            "options": {
                "nthreads": threads_per_worker,
                "host": "127.0.0.1",
                "resources": {"GPU": 1},
                "env": {"CUDA_VISIBLE_DEVICES": str(g)},
            },
        }
        for g in gpus
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
    return SpecCluster(workers=workers, scheduler=scheduler)


def make_executor(config=None, *, device: str | None = None) -> LocalExecutor | DaskExecutor:
    """Build the executor an ``executor:`` config section describes.

    Parameters
    ----------
    config : ExecutorConfig or dict or None
        ``kind`` (``local`` or ``dask``), ``address``, ``n_workers``,
        ``threads_per_worker``, ``retries``; None: local.
    device : str, optional
        The run's device; with ``cuda`` and no address, a LocalCluster gets one
        worker per visible GPU.
    """
    if config is None:
        return LocalExecutor()
    if hasattr(config, "model_dump"):
        config = config.model_dump()
    config = dict(config)
    kind = config.pop("kind", "local")
    if kind == "local":
        return LocalExecutor()
    if kind != "dask":
        raise ConfigError(f"unknown executor kind {kind!r}; use 'local' or 'dask'")
    return DaskExecutor(
        address=config.get("address"),
        n_workers=int(config.get("n_workers", 2)),
        threads_per_worker=int(config.get("threads_per_worker", 1)),
        retries=int(config.get("retries", 1)),
        use_gpus=str(device or "").startswith("cuda"),
    )


def _predict_chunk(item: tuple, shared: dict) -> np.ndarray:
    """Worker side of :func:`predict_frames`: rebuild the ensemble from arrays, predict one chunk."""
    from elit.ensemble import Ensemble

    start, frames = item
    ensemble = Ensemble.from_arrays(*shared["ensemble"], stage=shared["stage"])
    return ensemble.predict(frames, device=shared["device"], **shared["options"])


def predict_frame_chunks(executor, ensemble, frames, *, chunk: int = 16, device: str = "cpu", **options):
    """Yield ``(frame_slice, predictions)`` of chunks of frames predicted as separate tasks, as they finish.

    The driver holds only the chunks that arrived and were not consumed yet; see
    :func:`predict_frames` for the arguments.  A local executor (or None)
    predicts the chunks here, one after another.
    """
    if chunk < 1:
        raise ConfigError(f"chunk must be at least 1 frame, got {chunk}")
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if executor is None or isinstance(executor, LocalExecutor):
        yield from ensemble.predict_chunks(frames, chunk=chunk, device=device, **options)
        return
    import torch

    dev_type = torch.device(str(device)).type if str(device) != "auto" else "auto"
    shared = {"ensemble": ensemble.to_arrays(), "stage": ensemble.architecture_stage(), "device": dev_type,
              "options": {**options, "progress": False}}
    items = {start: (start, frames[start : start + chunk]) for start in range(0, len(frames), chunk)}
    for start, pred in executor.map_members(_predict_chunk, items, shared):
        yield slice(start, start + pred.shape[1]), pred


def predict_frames(executor, ensemble, frames, *, chunk: int = 16, device: str = "cpu", **options) -> np.ndarray:
    """Apply an ensemble to a stack of frames, chunks of frames as separate tasks.

    Parameters
    ----------
    executor : Executor or None
        A local executor (or None) predicts in this process in one call.
    ensemble : elit.ensemble.Ensemble
        Sent to the workers as plain arrays (``to_arrays``).
    frames : ndarray (N, H, W) or (H, W)
        Normalised frames at the ensemble's pixel size.
    chunk : int
        Frames per task.
    device : str
        ``cpu`` or ``cuda`` (a dask worker uses the GPU it sees).
    **options
        Further keywords of :meth:`elit.ensemble.Ensemble.predict`.

    Returns
    -------
    ndarray (M, N, K, H, W) float32
        The same as ``ensemble.predict(frames)``, assembled here in frame order.
    """
    if chunk < 1:
        raise ConfigError(f"chunk must be at least 1 frame, got {chunk}")
    frames = np.asarray(frames)
    if executor is None or isinstance(executor, LocalExecutor) or frames.ndim == 2 or len(frames) <= chunk:
        return ensemble.predict(frames, device=device, **options)
    out = None
    for sl, pred in predict_frame_chunks(executor, ensemble, frames, chunk=chunk, device=device, **options):
        if out is None:
            out = np.empty((pred.shape[0], len(frames)) + pred.shape[2:], np.float32)
        out[:, sl] = pred
    return out
