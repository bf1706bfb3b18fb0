"""``create_app(settings)``: the data server as an ASGI app; with ``run_workers`` it also runs the
execution workers (and their sandbox pool) for as long as the app lives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from data_server import encoders
from data_server.auth import PublicKeyring
from data_server.fair_jobs import FairJobs
from data_server.representations import MATERIALISATIONS_AT_ONCE, EncodingThreads
from data_server.routes import routes
from data_server.warm_files import WarmFiles
from shared.db.engine import create_server_engine, create_session_factory
from shared.errors import BadRequest
from shared.metrics import Metrics
from shared.results import ResultStore, open_result_store
from shared.scratch import sweep_dead
from shared.settings import Settings
from shared.web.http_limits import RequestLimitsMiddleware
from shared.web.metrics import MetricsMiddleware
from shared.web.middleware import RequestContextMiddleware
from shared.web.problems import EXCEPTION_HANDLERS, error_response

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # the worker (and its sandbox pool) is imported only where workers run
    from data_server.worker import Worker


def create_app(settings: Settings, *, run_workers: bool = False) -> Starlette:
    engine = create_server_engine(settings)
    sessions = create_session_factory(engine, in_turn=True)
    store = open_result_store(settings)
    encoding_threads = _encoding_threads(settings)
    warm_files = WarmFiles(store.scratch.own_directory(), settings.warm_scratch_mb * 1024 * 1024)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:  # before the first request is accepted; an optimisation, so never fatal
            await run_in_threadpool(encoders.warm_up)
        except Exception:
            logger.exception("warming the encoders failed")
        worker = None
        if run_workers:
            worker = await run_in_threadpool(
                start_workers, settings, sessions, store, app.state.metrics
            )
        app.state.worker = worker
        await run_in_threadpool(remove_dead_scratch, store)  # may remove gigabytes
        warm_files.start()
        keys_kept_fresh = asyncio.create_task(app.state.keyring.keep_fresh())
        try:
            yield
        finally:
            keys_kept_fresh.cancel()
            app.state.keyring.close()
            if worker is not None:
                await run_in_threadpool(stop_workers, worker)
            encoding_threads.shutdown()
            warm_files.close()
            engine.dispose()

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestContextMiddleware),
            Middleware(MetricsMiddleware),
            *_cors(settings),
            Middleware(RequestLimitsMiddleware),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # "/data/x/" is a 404 like any unknown path, not a redirect built from the Host header.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.metrics = Metrics(sessions)
    app.state.result_store = store
    app.state.encoding_threads = encoding_threads
    app.state.warm_files = warm_files
    app.state.keyring = PublicKeyring(settings)
    return app


def _encoding_threads(settings: Settings) -> EncodingThreads:
    """With one encode thread, each encoding runs alone on its own thread."""
    slices = None
    if settings.encode_threads > 1:
        slices = ThreadPoolExecutor(settings.encode_threads, thread_name_prefix="encode-slices")
    jobs = FairJobs(MATERIALISATIONS_AT_ONCE, name="encode")
    return EncodingThreads(jobs=jobs, slices=slices)


# What a browser page may send and read: the token header, ranges and validators.
CORS_REQUEST_HEADERS = ["Authorization", "Range", "If-Range", "If-None-Match", "Accept"]
CORS_EXPOSED_HEADERS = [
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "ETag",
    "Content-Encoding",
    "Content-Disposition",
    "X-Request-Id",
]


def _cors(settings: Settings) -> list[Middleware]:
    """CORS for the configured origins only (``DATAFERRY_CORS_ORIGINS``); off by default."""
    if not settings.cors_origin_list:
        return []
    return [
        Middleware(
            _JsonApiCors,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "HEAD"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
        )
    ]


class _JsonApiCors(CORSMiddleware):
    """Starlette's CORS, a refused preflight answered as a JSON:API error like any other."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != BadRequest.status:
            return response
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        error = BadRequest(
            f"This cross-origin request is not allowed here: its {refused} (see the "
            "Access-Control-Allow-* headers).",
            code="cors_preflight_refused",
        )
        answer = error_response(error)
        for name, value in response.headers.items():
            if name not in ("content-length", "content-type"):
                answer.headers[name] = value
        return answer


def remove_dead_scratch(store: ResultStore) -> None:
    """What servers killed on this machine left in the scratch space (a restart after a crash
    finds it there); the janitor looks again every minute. Never fatal: it only frees space."""
    try:
        _, removed = sweep_dead(store.scratch_dir)
    except OSError:  # the scratch space itself unreadable: the janitor says so each minute
        logger.exception("sweeping the scratch space failed")
        return
    if removed:
        logger.info("removed the scratch directories of processes that are gone: %d", removed)


def start_workers(
    settings: Settings,
    sessions: sessionmaker[Session],
    store: ResultStore,
    metrics: Metrics | None = None,
) -> Worker:
    from data_server.sandbox_pool import SandboxPool
    from data_server.worker import Worker, executor_count

    pool = SandboxPool(executor_count(settings), scratch_root=str(store.scratch.own_directory()))
    worker = Worker(settings, sessions, store, pool, metrics)
    worker.start()
    return worker


def stop_workers(worker: Worker) -> None:
    worker.stop()
    worker.pool.close()
