"""Parallel candidate evaluation on Ray actors (``--workers N``, ``--ray-address ADDR``).

A search scores many independent structures. :class:`RayPool` spreads them over Ray actors,
each holding the data, the model and an :class:`~pruner.search.evaluator.Evaluator` once
(built by the same :class:`~pruner.runs.session.Session` code as the job itself, so a worker
scores a structure exactly as the job would). The job's own evaluator keeps everything
that makes a search reproducible — the memo, the evaluation cap, candidate ids and events,
resume and cancel — and only hands the *scoring* of a batch's new structures to the pool
(:meth:`~pruner.search.evaluator.Evaluator.evaluate_many`), in the order proposed, so with a
fixed seed the candidates and the answer do not depend on the number of workers.

Ray is started embedded (local, stopped with the pool) unless ``address`` names an existing
cluster (``ray start --head``; see the README). Actors get one GPU each when the run is on
CUDA, else an equal share of the CPU threads.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import CancelledError, PrunerError
from ..settings import CACHE_DIR_ENV, DATA_ROOT_ENV, WEIGHTS_DIR_ENV
from .config import RunConfig
from .rundir import Event, Status
from .session import Session

#: environment a worker needs to find the same data and weights as the job
_PASSED_ENV = (DATA_ROOT_ENV, WEIGHTS_DIR_ENV, CACHE_DIR_ENV, "OMP_WAIT_POLICY")

#: seconds a ``--ray-address`` has to answer a TCP connect before the job fails (Ray itself retries
#: for minutes); overridable with the environment variable below
RAY_CONNECT_TIMEOUT_S = 15.0
RAY_CONNECT_TIMEOUT_ENV = "PRUNER_RAY_CONNECT_TIMEOUT_S"
#: seconds the workers have to start (build their data, model and evaluator) before the job fails
WORKER_START_TIMEOUT_S = 300.0
WORKER_START_TIMEOUT_ENV = "PRUNER_WORKER_START_TIMEOUT_S"
#: how often a waiting start looks at the job's cancel
_POLL_S = 0.5

def _timeout(env: str, default: float) -> float:
    try:
        return max(0.1, float(os.environ.get(env, default)))
    except ValueError:
        return default


def _probe(address: str, should_stop: Callable[[], bool] | None) -> None:
    """Fail in at most :data:`RAY_CONNECT_TIMEOUT_S` when nobody answers a TCP connect at ``address``
    (``auto`` is resolved by Ray and left to it); a cancel between tries is honoured."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    limit = _timeout(RAY_CONNECT_TIMEOUT_ENV, RAY_CONNECT_TIMEOUT_S)
    end = time.monotonic() + limit
    reason = "no answer"
    while True:
        if should_stop is not None and should_stop():
            raise CancelledError("cancelled while starting workers")
        left = end - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.create_connection((host, int(port)), timeout=min(left, 2.0)):
                return
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            if isinstance(exc, socket.gaierror):
                break   # the name does not resolve: trying again will not help
        time.sleep(min(_POLL_S, max(0.0, end - time.monotonic())))
    raise PrunerError(f"nobody answers at the Ray address {address} ({reason}, tried for {limit:g} s); check "
                      "--ray-address (`ray start --head` prints it) or run without it for a local Ray")


class EvaluationWorker:
    """One actor: the run's data, model and evaluator, built once; scores structures on request."""

    def __init__(self, config: dict, ranking: Sequence[torch.Tensor], threads: int):
        torch.set_num_threads(max(1, int(threads)))
        self.session = Session(RunConfig.from_dict(config))
        self.session.ranking = [r.to(self.session.device) for r in ranking]
        self.evaluator = self.session.evaluator(max_evals=None)
        self.version = 0
        self.evaluations = 0
        self.busy = 0.0
        self.started = time.time()

    def set_model(self, version: int, state: dict, ranking: Sequence[torch.Tensor]) -> int:
        """Switch to the job's current weights (a strategy that trains them, e.g. ``joint``)."""
        model = self.evaluator.model
        model.load_state_dict(state)
        self.evaluator.set_model(model, [r.to(self.session.device) for r in ranking])
        self.evaluator.model_version = self.version = int(version)
        return self.version

    def score(self, version: int, counts: Sequence[int]) -> dict:
        if int(version) != self.version:
            raise RuntimeError(f"worker holds model version {self.version}, asked to score version {version}")
        t0 = time.perf_counter()
        out = self.evaluator.measure(list(counts))
        self.busy += time.perf_counter() - t0
        self.evaluations += 1
        return out

    def stats(self) -> dict:
        return {"pid": os.getpid(), "host": os.uname().nodename, "device": str(self.session.device),
                "threads": torch.get_num_threads(), "evaluations": self.evaluations,
                "busy_seconds": self.busy, "alive_seconds": time.time() - self.started}


def _ray():
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is in requirements.txt
        raise PrunerError("--workers needs Ray: pip install 'ray==2.60.0'") from None
    return ray


class RayPool:
    """``workers`` Ray actors that score structures for one run."""

    def __init__(self, config: dict, ranking: Sequence[torch.Tensor], workers: int, *,
                 address: str | None = None, device: torch.device | str = "cpu",
                 should_stop: Callable[[], bool] | None = None):
        """Starts (or joins) Ray and the actors, within deadlines (:data:`RAY_CONNECT_TIMEOUT_S`,
        :data:`WORKER_START_TIMEOUT_S`); ``should_stop`` cancels the start (CancelledError)."""
        if workers < 1:
            raise PrunerError(f"--workers must be >= 1, got {workers}")
        ray = _ray()
        self._ray = ray
        self._started = False
        device = torch.device(device)
        env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        package = Path(__file__).resolve().parents[1]
        # the workers import this package: on a machine of this one's, from where it lies here
        # (PYTHONPATH); on a cluster joined with ``address``, Ray ships it to every node (py_modules,
        # which Ray accepts only when it is started or joined, hence the two forms)
        actor_env = {"env_vars": {**env, "PYTHONPATH": os.pathsep.join(
            p for p in (str(package.parent), os.environ.get("PYTHONPATH")) if p)}}
        if not ray.is_initialized():
            try:
                if address:
                    _probe(address, should_stop)
                    actor_env = {"env_vars": env}
                    ray.init(address=address, runtime_env={"py_modules": [str(package)], "env_vars": env},
                             log_to_driver=False, configure_logging=False)
                else:
                    # an embedded Ray serves this job alone (no dashboard); docs/security.md on its ports
                    ray.init(num_cpus=max(os.cpu_count() or 1, workers), include_dashboard=False,
                             log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise PrunerError(f"could not start or join {where}: {_first_line(exc)}; check --ray-address "
                                  "(`ray start --head` prints it) or run without --workers") from None
            self._started = True
        if device.type == "cuda":
            options = {"num_gpus": 1, "num_cpus": 1}
            threads = 1
        else:
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            threads = max(1, int(cpus // workers))
            options = {"num_cpus": round(min(float(threads), cpus / workers), 4)}   # all actors fit at once
        actor_cls = ray.remote(EvaluationWorker).options(runtime_env=actor_env, **options)
        ranking = [r.detach().cpu() for r in ranking]
        self.actors = [actor_cls.remote(config, ranking, threads) for _ in range(workers)]
        try:  # surface a worker's start-up error (bad data path on a node, ...) now, not mid-search
            self._wait_started(should_stop)
        except CancelledError:
            self.close()
            raise
        except PrunerError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise PrunerError(f"a Ray worker failed to start: {_first_line(exc)}") from None
        self.workers = workers
        self.threads = threads
        self.on_stats: Callable[[list[dict]], object] | None = None   # called after every batch

    def _wait_started(self, should_stop: Callable[[], bool] | None) -> None:
        """Every actor answered, within :data:`WORKER_START_TIMEOUT_S`, looking at the cancel meanwhile."""
        limit = _timeout(WORKER_START_TIMEOUT_ENV, WORKER_START_TIMEOUT_S)
        end = time.monotonic() + limit
        pending = [a.stats.remote() for a in self.actors]
        while pending:
            if should_stop is not None and should_stop():
                raise CancelledError("cancelled while starting workers")
            left = end - time.monotonic()
            if left <= 0:
                raise PrunerError(f"{len(pending)} of {len(self.actors)} Ray workers did not start within {limit:g} s "
                                  "(no free CPU/GPU on the cluster, or a slow node?); use fewer --workers or "
                                  "check the cluster (`ray status`)")
            done, pending = self._ray.wait(pending, num_returns=len(pending), timeout=min(left, _POLL_S))
            self._ray.get(done)   # a worker's start-up error, raised here

    def score_many(self, version: int, counts: Sequence[Sequence[int]], *,
                   should_stop: Callable[[], bool] | None = None) -> list[dict]:
        """Scores of ``counts`` in order, spread over the actors (each takes the next as it frees
        up); stops with :class:`CancelledError` between results when ``should_stop`` says so."""
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        out = []
        try:
            for result in pool.map(lambda a, c: a.score.remote(version, [int(x) for x in c]), list(counts)):
                out.append(result)
                if should_stop is not None and should_stop():
                    raise CancelledError("search cancelled")
        except CancelledError:
            raise
        except Exception as exc:
            raise PrunerError(f"a Ray worker failed while scoring: {_first_line(exc)}") from None
        if self.on_stats is not None:
            self.on_stats(self.stats())
        return out

    def set_model(self, version: int, state: dict, ranking: Sequence[torch.Tensor]) -> None:
        ref = self._ray.put({k: v.detach().cpu() for k, v in state.items()})
        ranking = [r.detach().cpu() for r in ranking]
        self._ray.get([a.set_model.remote(version, ref, ranking) for a in self.actors])

    def stats(self) -> list[dict]:
        return self._ray.get([a.stats.remote() for a in self.actors])

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            try:
                self._ray.kill(a)
            except Exception:  # already gone
                pass
        self.actors = []
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # Ray wraps the worker's exception; its last line is the original message
    return (text[-1] if text else type(exc).__name__)[:300]


@contextmanager
def attach_workers(evaluator, config, emit: Callable[..., object] = lambda kind, **f: None):
    """With ``config.workers`` >= 1: a :class:`RayPool` attached to ``evaluator`` for the duration
    (its actors stopped afterwards, also on cancel or error); a ``workers`` event after every
    batch gives each worker's evaluations and busy time. With 0 workers: nothing, all in-process."""
    if config.workers < 1:
        yield None
        return
    emit(Event.STATUS, status=Status.STARTING_WORKERS, workers=config.workers, ray_address=config.ray_address)
    pool = RayPool(config.to_dict(), evaluator.ranking, config.workers, address=config.ray_address,
                   device=evaluator.device, should_stop=getattr(evaluator, "should_stop", None))
    pool.on_stats = lambda stats: emit(Event.WORKERS, workers=stats)
    evaluator.pool = pool
    try:
        pool.on_stats(pool.stats())
        yield pool
    finally:
        evaluator.pool = None
        pool.close()
