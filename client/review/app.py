"""The review page: a worklist ordered by suspicion and a case view where each verdict is one click or key.

Server-rendered HTML (Jinja) with one small script for the case view; no front-end build. Every request but the
sign-in page needs a live session (HttpOnly, SameSite=Strict cookie naming a server-side session that expires);
every write needs the session's CSRF token and lands in the audit log with the reviewer's pseudonym. A verdict made
on a stale version of a box answers 409 with the current case, which the page shows instead of overwriting.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures, which name local dependencies.
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Form, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from client.feedback.accounts import Accounts, Session, Throttled
from client.feedback.store import Box, ConflictError, FeedbackStore, ImageRow
from client.review.images import image_png
from common.errors import FracflError

HERE = Path(__file__).parent
SESSION_COOKIE = "fracfl_session"
LOGIN_CSRF_COOKIE = "fracfl_login_csrf"
WORKLIST_ROWS = 500  # the most suspicious first; the case view's "next" walks on past them


@dataclass(frozen=True)
class ReviewSettings:
    secure_cookies: bool = False  # set when served behind TLS; plain http on 127.0.0.1 otherwise
    advance_seconds: float = 2.0  # pause before the next case opens by itself (any key or click cancels it)


class VerdictIn(BaseModel):
    kind: str
    box_id: int | None = None
    box: list[float] | None = None  # x1, y1, x2, y2 in image pixels
    cls: int = 0
    class_name: str | None = None
    note: str | None = None
    expected_version: int | None = None


def create_app(store: FeedbackStore, accounts: Accounts, settings: ReviewSettings | None = None) -> FastAPI:
    settings = settings or ReviewSettings()
    app = FastAPI(title="fracfl review", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")

    def session(request: Request) -> Session:
        s = accounts.session(request.cookies.get(SESSION_COOKIE))
        if s is None:
            raise HTTPException(401, "sign in first")
        return s

    def writer(
        s: Annotated[Session, Depends(session)], x_csrf_token: Annotated[str | None, Header()] = None
    ) -> Session:
        if not x_csrf_token or not secrets.compare_digest(x_csrf_token, s.csrf):
            raise HTTPException(403, "missing or wrong CSRF token")
        return s

    @app.exception_handler(401)
    async def _to_login(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": exc.detail}, 401)
        return RedirectResponse("/login", 303)

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        response = templates.TemplateResponse(request, name, context, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self'; frame-ancestors 'none'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(
            name, value, max_age=max_age, httponly=True, samesite="strict", secure=settings.secure_cookies, path="/"
        )

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, error: str = "") -> Response:
        token = secrets.token_urlsafe(32)
        response = page(request, "login.html", error=error, csrf=token)
        cookie(response, LOGIN_CSRF_COOKIE, token, max_age=3600)
        return response

    @app.post("/login")
    def login(
        request: Request,
        username: Annotated[str, Form()],
        password: Annotated[str, Form()],
        csrf: Annotated[str, Form()],
    ) -> Response:
        expected = request.cookies.get(LOGIN_CSRF_COOKIE)
        if not expected or not secrets.compare_digest(expected, csrf):
            raise HTTPException(403, "sign-in form expired: reload the page")
        try:
            s = accounts.login(username, password)
        except Throttled as e:
            return page(request, "login.html", 429, error=str(e), csrf=csrf)
        if s is None:
            return page(request, "login.html", 401, error="wrong user name or password", csrf=csrf)
        response = RedirectResponse("/", 303)
        cookie(response, SESSION_COOKIE, s.token)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
        return response

    @app.post("/logout")
    def logout(request: Request, csrf: Annotated[str, Form()]) -> Response:
        s = session(request)
        if not secrets.compare_digest(csrf, s.csrf):
            raise HTTPException(403, "missing or wrong CSRF token")
        accounts.logout(s)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/", response_class=HTMLResponse)
    def worklist(request: Request, s: Annotated[Session, Depends(session)]) -> Response:
        filters = _filters(request)
        rows = store.worklist(**filters, limit=WORKLIST_ROWS)
        return page(
            request,
            "worklist.html",
            user=s.user,
            csrf=s.csrf,
            rows=rows,
            filters=filters,
            facets=store.facets(),
            query=_query(filters),
            matching=store.count(**filters),
            total=store.count(),
        )

    @app.get("/case/{image_id}", response_class=HTMLResponse)
    def case(request: Request, image_id: int, s: Annotated[Session, Depends(session)]) -> Response:
        row = store.image(image_id)
        if row is None:
            raise HTTPException(404, "no such case")
        filters = _filters(request)
        return page(
            request,
            "case.html",
            user=s.user,
            csrf=s.csrf,
            row=row,
            filters=filters,
            query=_query(filters),
            state=_case_json(store, row, filters),
            settings=settings,
        )

    @app.get("/api/case/{image_id}")
    def case_state(request: Request, image_id: int, s: Annotated[Session, Depends(session)]) -> dict:
        row = store.image(image_id)
        if row is None:
            raise HTTPException(404, "no such case")
        return _case_json(store, row, _filters(request))

    @app.post("/api/case/{image_id}/verdict")
    def verdict(request: Request, image_id: int, body: VerdictIn, s: Annotated[Session, Depends(writer)]) -> Response:
        filters = _filters(request)
        try:
            if body.box is not None and len(body.box) != 4:
                raise FracflError("box: give x1, y1, x2, y2")
            box = Box(body.box[0], body.box[1], body.box[2], body.box[3], cls=body.cls) if body.box else None
            store.add_verdict(
                image_id=image_id,
                reviewer=s.user.reviewer_id,
                kind=body.kind,
                box_id=body.box_id,
                box=box,
                class_name=body.class_name,
                note=body.note,
                expected_version=body.expected_version,
            )
        except ConflictError as e:
            current = store.image(image_id)
            assert current is not None
            return JSONResponse(
                {
                    "detail": f"{e}: someone else changed it; the page now shows their version",
                    "case": _case_json(store, current, filters),
                },
                409,
            )
        except FracflError as e:
            raise HTTPException(400, str(e)) from None
        row = store.image(image_id)
        assert row is not None
        return JSONResponse(_case_json(store, row, filters))

    @app.get("/image/{image_id}.png")
    def image(image_id: int, s: Annotated[Session, Depends(session)]) -> Response:
        row = store.image(image_id)
        if row is None:
            raise HTTPException(404, "no such case")
        try:
            return Response(image_png(row.image_ref), media_type="image/png", headers={"Cache-Control": "no-store"})
        except FracflError as e:
            raise HTTPException(404, str(e)) from None

    @app.get("/heatmap/{image_id}.png")
    def heatmap(image_id: int, s: Annotated[Session, Depends(session)]) -> Response:
        row = store.image(image_id)
        if row is None or not row.heatmap_ref or not Path(row.heatmap_ref).is_file():
            raise HTTPException(404, "no heatmap for this case")
        return Response(
            Path(row.heatmap_ref).read_bytes(), media_type="image/png", headers={"Cache-Control": "no-store"}
        )

    @app.get("/admin", response_class=HTMLResponse)
    def admin(request: Request, s: Annotated[Session, Depends(session)]) -> Response:
        if s.user.role != "admin":
            raise HTTPException(403, "admins only")
        return page(
            request,
            "admin.html",
            user=s.user,
            csrf=s.csrf,
            audit=store.audit_log()[-500:][::-1],
            set_aside=store.set_aside_items(),
            users=accounts.users(),
        )

    return app


def _filters(request: Request) -> dict[str, Any]:
    q = request.query_params
    return {
        "unreviewed": q.get("unreviewed") == "1",
        "disagreements": q.get("disagreements") == "1",
        "model_version": q.get("model_version") or None,
        "body_part": q.get("body_part") or None,
    }


def _query(filters: dict[str, Any]) -> str:
    """The filters as a query string, so the case view's "next" follows the worklist the reviewer chose."""
    pairs = {k: ("1" if v is True else v) for k, v in filters.items() if v}
    return urlencode(pairs)


def _case_json(store: FeedbackStore, row: ImageRow, filters: dict[str, Any]) -> dict:
    """What the case view's script needs: boxes with versions, image version, and the next and previous cases
    (next: still matching the filters; previous: also cases already reviewed, to go back and check them)."""
    _, later = store.neighbours(row.id, **filters)
    earlier, _ = store.neighbours(row.id, **{**filters, "unreviewed": False})
    return {
        "id": row.id,
        "version": row.version,
        "no_fracture": row.no_fracture,
        "model_version": row.model_version,
        "probability": row.probability,
        "class_names": store.class_names() or ["fracture"],
        "boxes": [
            {
                "id": b.id,
                "version": b.version,
                "status": b.status,
                "origin": b.origin,
                **{k: v for k, v in asdict(b.box).items()},
            }
            for b in row.boxes
        ],
        "next": later,
        "previous": earlier,
    }
