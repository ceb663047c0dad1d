"""The HTTP face of a :class:`~brcd_cli.serve.service.SearchService`: a small JSON API and one page.

    GET  /                 the search page (static HTML and JavaScript, nothing fetched from elsewhere)
    GET  /api/health       {"status": "ok"}, without a token (for probes)
    GET  /api/info         model, bits, code space, collection, count, backend
    POST /api/search       an image (multipart field "image", or the raw body) or ?item=N, with ?k= or ?radius=
    GET  /api/thumb/{i}    a small JPEG of served item i

Every error is JSON ``{"error": "..."}`` with a 4xx status, and the server goes
on serving. With a token, every /api route but health wants
``Authorization: Bearer <token>``. Bodies above ``max_body`` bytes are refused
(413) while they arrive, whether or not they declare a length. The model and
the search run in worker threads, so requests in flight do not wait on each
other's encode.
"""
import hmac
from importlib import resources
from typing import Any, Awaitable, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..errors import BrcdError
from ..search import request_of
from .images import ItemNotFound
from .service import SearchService

DEFAULT_MAX_BODY = 20 * 1024 * 1024


def page_html() -> str:
    """The search page shipped with the package."""
    return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(service: SearchService, token: Optional[str] = None, max_body: int = DEFAULT_MAX_BODY) -> FastAPI:
    """A FastAPI app serving ``service``."""
    app = FastAPI(title="brcd", docs_url=None, redoc_url=None, openapi_url=None)
    page = page_html()
    too_large = f"the request body is larger than the {max_body:,}-byte limit"

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error(400, f"{where}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(ItemNotFound)
    async def no_item(_: Request, exc: ItemNotFound) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(BrcdError)
    async def user_error(_: Request, exc: BrcdError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(Exception)
    async def server_fault(_: Request, exc: Exception) -> JSONResponse:
        """A fault of the server, not of the request: JSON like every other answer, and no internals in it (the
        traceback goes to the server's log, where its operator reads it)."""
        return error(500, f"internal server error ({type(exc).__name__}); the server's log has the details")

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """The token on /api routes, and the body limit on every request (declared length first, then bytes read)."""
        path = request.url.path
        if token is not None and path.startswith("/api/") and path != "/api/health":
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                return error(401, "a valid bearer token is required (Authorization: Bearer <token>)")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body):
            return error(413, too_large)
        return await call_next(request)

    async def read_body(request: Request) -> bytes:
        """The body, refused as soon as it passes the limit (a chunked upload declares no length)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise HTTPException(413, too_large)
            chunks.append(chunk)
        return b"".join(chunks)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.post("/api/search")
    async def search(request: Request, k: Optional[int] = None, radius: Optional[int] = None,
                     item: Optional[int] = None) -> dict[str, Any]:
        k, radius = request_of(k, radius)
        image: Optional[bytes] = None
        body = await read_body(request)
        if item is None:
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                image = await _multipart_image(request, body)
            else:
                image = body
        elif body:
            raise BrcdError("send an image or name a served item (?item=N), not both")
        return await run_in_threadpool(service.search, image, item, k, radius)

    @app.get("/api/thumb/{index}")
    async def thumb(index: int) -> Response:
        data = await run_in_threadpool(service.images.thumbnail, index)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def not_found(request: Request, rest: str) -> JSONResponse:
        """404 for a path no route has; 405, naming the methods it takes, for a route asked with another method."""
        path = f"/{rest}"
        allowed = sorted({method for route in app.routes if getattr(route, "path", None) == path
                          for method in getattr(route, "methods", ()) or ()} - {"HEAD"})
        if allowed:
            response = error(405, f"{request.method} is not allowed on {path}; use {' or '.join(allowed)}")
            response.headers["Allow"] = ", ".join(allowed)
            return response
        return error(404, f"no such page or API route: {path}")

    return app


async def _multipart_image(request: Request, body: bytes) -> bytes:
    """The "image" field of a multipart body already read (and so already within the limit)."""

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    field = form.get("image")
    if not isinstance(field, UploadFile):
        raise HTTPException(400, 'a multipart upload needs a file field named "image"')
    return await field.read()
