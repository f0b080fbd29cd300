"""The HTTP front door (FastAPI on Ray Serve): the page at /, /healthz, /v1/model, /v1/generate and the
page's helpers. It checks every request (the Host header on every route, Content-Type: application/json on
the POSTs (security.py), limits, then `make_request`, the Python API's own validation) before a replica sees
it, and answers every failure as JSON {"error": "<one line>"} with a 4xx (the request's fault) or a 503 with
Retry-After (the server's load or a lost replica), never a traceback.

No `from __future__ import annotations` here: FastAPI reads the route methods' annotations (Request) at import."""
import asyncio
import logging
import math
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InputError
from .batching import Job
from .drain import DRAIN_RETRY_AFTER_S, Gate, GateMiddleware
from .options import ServeOptions
from .schema import http_inputs, parse_body, png_base64, prepare
from .page import examples_payload, label_map_payload, model_payload
from .security import content_type_error, host_error, loopback_replica_grpc

log = logging.getLogger("cdx.serve")
STATIC = Path(__file__).resolve().parent / "static"


class HttpError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


def error_response(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def _shutting_down() -> JSONResponse:
    return error_response(503, "the server is shutting down: it takes no new request; retry later",
                          DRAIN_RETRY_AFTER_S)


app = FastAPI(title="cdx", docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _gate() -> Gate | None:
    """The gate of the ingress replica this process serves (None before it exists)."""
    try:
        return getattr(serve.get_replica_context().servable_object, "gate", None)
    except Exception:  # noqa: BLE001 - not in a replica (yet)
        return None


app.add_middleware(GateMiddleware, gate_of=_gate, refuse=_shutting_down)  # drain.py


@app.exception_handler(HttpError)
async def _http_error(request, e: HttpError):
    return error_response(e.status, str(e), e.retry_after)


@app.exception_handler(StarletteHTTPException)
async def _starlette_error(request, e: StarletteHTTPException):  # unknown route, wrong method
    return error_response(e.status_code, f"{e.detail}: {request.method} {request.url.path}")


@app.exception_handler(Exception)
async def _any_error(request, e: Exception):  # a bug: logged here with its traceback, one line to the client
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(500, f"internal error (a bug in cdx): {type(e).__name__}")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (by its Content-Length or as it streams)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HttpError(413 if declared.isdigit() else 400,
                        f"the body is {declared} bytes; this server takes at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"the body passes {limit} bytes, the most this server takes")
        chunks.append(chunk)
    return b"".join(chunks)


def _replica_failure(e: Exception) -> bool:
    """A Ray error that says the replica (or its actor) went away, not that cdx's code raised."""
    import ray.exceptions as rex

    return isinstance(e, (rex.RayActorError, rex.ActorUnavailableError, rex.ObjectLostError,
                          rex.WorkerCrashedError, rex.NodeDiedError))


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Ingress:
    def __init__(self, model: DeploymentHandle, options: dict):
        from ..api import config_of

        loopback_replica_grpc()  # before Serve starts this replica's gRPC server (after __init__)
        self.model, self.options = model, ServeOptions.from_dict(options)
        self.gate = Gate()  # closed by `drain` when `cdx serve` stops (drain.py)
        self.cfg = config_of(self.options.checkpoint, self.options.engine_dir)  # manifest only, no weights
        self.backend: str | None = None
        self.seconds = 1.0  # a running mean of a request's time at the model: the Retry-After it advises

    def check(self, request: Request, json_body: bool = False) -> None:
        """The Host header names this server (400), and a body is JSON by its Content-Type (415)."""
        if (error := host_error(request.headers.get("host"), self.options.allowed_hosts)) is not None:
            raise HttpError(400, error)
        if json_body and (error := content_type_error(request.headers.get("content-type"),
                                                      request.url.path)) is not None:
            raise HttpError(415, error)

    def retry_after(self) -> int:
        return max(1, math.ceil(self.seconds))

    async def drain(self) -> int:
        """Take no new request (each gets 503 with Retry-After); the number still in flight (drain.py)."""
        return self.gate.close()

    async def in_flight(self) -> int:
        """The HTTP requests this replica took and has not answered yet."""
        return self.gate.in_flight

    async def _model_ready(self) -> tuple[bool, str]:
        ctx = serve.get_replica_context()
        status = await asyncio.to_thread(serve.status)
        dep = status.applications.get(ctx.app_name)
        model = dep.deployments.get("Model") if dep else None
        running = (model.replica_states or {}).get("RUNNING", 0) if model else 0
        if running < 1:
            return False, f"no model replica is ready yet ({model.status if model else 'not deployed'})"
        return True, f"{running} model replica(s) running"

    @app.get("/")
    async def index(self, request: Request):
        self.check(request)
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def healthz(self, request: Request):
        self.check(request)
        ok, message = await self._model_ready()
        if not ok:
            return error_response(503, message, self.retry_after())
        return {"status": "ok", "detail": message}

    @app.get("/v1/model")
    async def describe(self, request: Request):
        self.check(request)
        if self.backend is None:
            self.backend = await self.model.describe.remote()
        payload = model_payload(self.cfg, self.options, self.backend)
        for m in payload["modalities"]:  # what /v1/generate takes, not what the Python API does
            m["input"] = http_inputs(self.options).get(m["kind"], "not taken over HTTP (/v1/generate takes "
                                                                  "text and mask)")
        payload["limits"]["max_text_chars"] = self.options.max_text_chars
        return payload

    @app.post("/v1/label-map")
    async def label_map(self, request: Request):
        self.check(request, json_body=True)
        raw = await read_body(request, self.options.max_body_bytes)
        try:
            return await asyncio.to_thread(label_map_payload, raw, self.options)
        except InputError as e:
            raise HttpError(400, str(e)) from None

    @app.get("/v1/examples")
    async def examples(self, request: Request):
        self.check(request)
        return await asyncio.to_thread(examples_payload)

    @app.post("/v1/generate")
    async def generate(self, request: Request):
        self.check(request, json_body=True)
        raw = await read_body(request, self.options.max_body_bytes)
        try:
            body = parse_body(raw)
        except InputError as e:
            raise HttpError(422, str(e)) from None
        try:
            req, guidance, warned = await asyncio.to_thread(prepare, body, self.cfg, self.options)
        except InputError as e:
            raise HttpError(400, str(e)) from None
        reply = await self._call_model(Job(req, guidance))
        if reply.error is not None:
            raise HttpError(400 if reply.user_error else 500, reply.error)
        return await asyncio.to_thread(self._encode, reply, body.return_influence, warned)

    async def _call_model(self, job: Job):
        from ray.serve.exceptions import BackPressureError

        started = time.monotonic()
        try:
            reply = await self.model.generate.remote(job)
        except BackPressureError:
            raise HttpError(503, f"the server is at its queue limit ({self.options.max_queued} requests "
                                 "waiting); retry later", self.retry_after()) from None
        except Exception as e:  # noqa: BLE001 - sorted below: a lost replica is the client's to retry
            if not _replica_failure(e):
                raise
            log.warning("a model replica failed while serving a request: %s", type(e).__name__)
            raise HttpError(503, f"the model replica serving this request failed ({type(e).__name__}); "
                                 "it is being replaced: retry", self.retry_after()) from None
        self.seconds = 0.8 * self.seconds + 0.2 * (time.monotonic() - started)
        return reply

    def _encode(self, reply, with_influence: bool, warned: list[str] | None = None) -> dict:
        from ..render import influence_grid

        out = {"images": [png_base64(a) for a in reply.arrays], "seeds": reply.seeds, "backend": reply.backend,
               "modalities": reply.modalities, "timings": reply.timings, "call_images": reply.call_items,
               "warnings": list(warned or [])}
        if with_influence and reply.influence is not None:
            grid = influence_grid(reply.influence, reply.modalities, reply.timesteps, columns=10, item=0)
            out["influence"] = png_base64(grid)
        return out
