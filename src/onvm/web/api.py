"""The web API as plain functions of a request: routing, checks, answers.

Theory of operation
-------------------
Nothing here touches a socket, so every endpoint is tested in microseconds.
``Api.handle(request)`` finds the route by method and path, checks the host,
origin and (for changes) the bearer token, and returns a ``Response``.
Reads are answered from the sampler's latest sample; changes are operations
of the table in ``onvm.control.ops``, sent over the manager's control socket
with the one typed client, like every other tool.

Adding an endpoint::

    @api.route("POST", "/api/rules", change=True)
    def add_rule(req: Request, **params: str) -> Response:
        body = req.json()            # raises HttpError 400 on bad JSON
        return ok(api.control(ops.RuleAdd(rule=body.get("rule"))))

Security: the server binds 127.0.0.1 unless told otherwise; it sends no CORS
headers, so no other origin may read its answers; requests whose ``Host`` is
not one of the server's own names are refused (DNS rebinding); a change needs
``Authorization: Bearer <token>`` and, when the browser sends an ``Origin``,
the server's own origin.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onvm.control import ops
from onvm.errors import ConfigError, OnvmError
from onvm.web import metrics

MAX_BODY = 64 * 1024
MAX_CAPTURE_SECONDS = 60.0  # a capture downloaded from the web runs at most this long
MAX_CAPTURE_BYTES = 32 << 20  # and brings at most about this much
Capturer = Callable[[ops.CaptureStart, float], tuple[bytes, dict[str, Any]]]

_STATUS_BY_CODE = {
    "bad_request": 400,
    "no_such_nf": 404,
    "not_found": 404,
    "illegal_transition": 409,
    "busy": 409,
    "not_running": 503,
}


class HttpError(Exception):
    """An answer other than success, with a status and a message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty)."""
        if not self.body.strip():
            return {}
        try:
            value = json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HttpError(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise HttpError(400, "the body must be a JSON object")
        return value


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def ok(value: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(value).encode())


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps({"error": message, "status": status}).encode(),
                    headers=headers or {})


Handler = Callable[..., Response]


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    template: str
    handler: Handler
    change: bool


def _int_param(value: str, what: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", value):
        raise HttpError(400, f"{what} '{value}' is not a number")
    return int(value)


class Api:
    """Routes and handlers; ``source`` is a Sampler, ``control(op)`` runs an operation on the manager,
    ``capture(op, seconds)`` runs a capture as one pcap file and its counts."""

    def __init__(self, source: Any, control: Callable[[ops.Op], dict[str, Any]], token: str,
                 allowed_hosts: set[str] | None = None, capture: Capturer | None = None) -> None:
        self.source = source
        self.control = control
        self.capture = capture
        self.token = token
        self.allowed_hosts = allowed_hosts  # None: any Host (bound to a wildcard address)
        self.routes: list[Route] = []
        self._add_builtin()

    # ---- routing ----------------------------------------------------------
    def route(self, method: str, template: str, change: bool = False) -> Callable[[Handler], Handler]:
        """Register ``handler(request, **params)`` for ``template`` (``{name}`` = a path segment)."""
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"

        def deco(fn: Handler) -> Handler:
            self.routes.append(Route(method, re.compile(regex), template, fn, change))
            return fn

        return deco

    def handle(self, req: Request) -> Response:
        try:
            self._check_host(req)
            allowed = []
            for r in self.routes:
                m = r.pattern.match(req.path)
                if not m:
                    continue
                allowed.append(r.method)
                if r.method != req.method:
                    continue
                if r.change:
                    self._check_change(req)
                return r.handler(req, **m.groupdict())
            if allowed:
                return error(405, f"{req.method} is not allowed on {req.path}",
                             {"Allow": ", ".join(sorted(set(allowed)))})
            return error(404, f"no such endpoint: {req.path}")
        except HttpError as e:
            return error(e.status, e.message, e.headers)
        except OnvmError as e:
            return error(_STATUS_BY_CODE.get(e.code, 500), e.message)

    def refuse_host(self, req: Request) -> Response | None:
        """The refusal for a request with a foreign ``Host``, or None when it is ours."""
        try:
            self._check_host(req)
        except HttpError as e:
            return error(e.status, e.message)
        return None

    def _check_host(self, req: Request) -> None:
        if self.allowed_hosts is None:
            return
        host = req.headers.get("host", "").lower()
        if host not in self.allowed_hosts:
            raise HttpError(421, f"unexpected Host header {host!r}")

    def _check_change(self, req: Request) -> None:
        origin = req.headers.get("origin")
        if origin is not None:
            host = req.headers.get("host", "")
            if origin.lower() not in (f"http://{host}".lower(), f"https://{host}".lower()):
                raise HttpError(403, f"changes from origin {origin!r} are not allowed")
        auth = req.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if not auth:
            raise HttpError(401, "this change needs 'Authorization: Bearer <token>' (the manager "
                            "printed the token at start and keeps it in its token file)",
                            {"WWW-Authenticate": 'Bearer realm="onvm"'})
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                   self.token.encode()):
            raise HttpError(403, "wrong token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    # ---- answers ----------------------------------------------------------
    def _sample(self) -> dict[str, Any]:
        s: dict[str, Any] = self.source.latest()
        if not s:
            raise HttpError(503, "no sample yet")
        return s

    def _find(self, items: list[dict[str, Any]], ident: int, what: str) -> dict[str, Any]:
        for it in items:
            if it["id"] == ident:
                return it
        raise HttpError(404, f"no {what} {ident}")

    def _add_builtin(self) -> None:
        route = self.route

        @route("GET", "/api")
        def index(req: Request) -> Response:
            return ok({"endpoints": [{"method": r.method, "path": r.template, "token": r.change}
                                     for r in self.routes]})

        @route("GET", "/api/status")
        def status(req: Request) -> Response:
            s = self._sample()
            return ok({**s["status"], "services": s["services"], "chains": s["chains"],
                       "time": s["time"]})

        @route("GET", "/api/nfs")
        def nfs(req: Request) -> Response:
            return ok(self._sample()["status"]["nfs"])

        @route("GET", "/api/nfs/{nf}")
        def nf(req: Request, nf: str) -> Response:
            return ok(self._find(self._sample()["status"]["nfs"], _int_param(nf, "NF id"), "NF"))

        @route("GET", "/api/services")
        def services(req: Request) -> Response:
            return ok(self._sample()["services"])

        @route("GET", "/api/services/{svc}")
        def service(req: Request, svc: str) -> Response:
            return ok(self._find(self._sample()["services"], _int_param(svc, "service"), "service"))

        @route("GET", "/api/ports")
        def ports(req: Request) -> Response:
            return ok(self._sample()["status"]["ports"])

        @route("GET", "/api/ports/{port}")
        def port(req: Request, port: str) -> Response:
            return ok(self._find(self._sample()["status"]["ports"], _int_param(port, "port"), "port"))

        @route("GET", "/api/chains")
        def chains(req: Request) -> Response:
            return ok(self._sample()["chains"])

        @route("GET", "/api/rules")
        def rules(req: Request) -> Response:
            """A page of the rules, asked of the manager (a rule set may be far too big to sample)."""
            offset = _int_param(req.query.get("offset", "0"), "offset")
            limit = _int_param(req.query.get("limit", str(ops.RULE_PAGE)), "limit")
            if not 1 <= limit <= ops.RULE_PAGE:
                raise HttpError(400, f"limit {limit} is out of range (1..{ops.RULE_PAGE})")
            return ok(self.control(ops.RuleList(offset, limit)))

        @route("GET", "/api/flows")
        def flows(req: Request) -> Response:
            return ok(self._sample().get("flows", []))

        @route("GET", "/api/history")
        def history(req: Request) -> Response:
            return ok(self.source.history())

        @route("GET", "/api/events")
        def events(req: Request) -> Response:
            since = _int_param(req.query.get("since", "0"), "since")
            limit = _int_param(req.query.get("limit", "1000"), "limit")
            if not 1 <= limit <= 10000:
                raise HttpError(400, f"limit {limit} is out of range (1..10000)")
            return ok(self.source.events(since, limit))

        @route("GET", "/api/{section}")
        def section(req: Request, section: str) -> Response:
            """Sections the manager adds to each sample (its web_sections())."""
            sample = self._sample()
            if section in ("time", "status") or section not in sample:
                raise HttpError(404, f"no such endpoint: {req.path}")
            return ok(sample[section])

        @route("GET", "/metrics")
        def prometheus(req: Request) -> Response:
            return Response(200, metrics.render(self._sample()).encode(), metrics.CONTENT_TYPE)

        @route("POST", "/api/nfs/{nf}/stop", change=True)
        def stop_nf(req: Request, nf: str) -> Response:
            req.json()  # a body, if any, must be JSON
            return ok(self.control(ops.StopNF(_int_param(nf, "NF id"))))

        @route("POST", "/api/shutdown", change=True)
        def shutdown(req: Request) -> Response:
            req.json()
            return ok(self.control(ops.Shutdown()))

        @route("POST", "/api/capture", change=True)
        def capture(req: Request) -> Response:
            """A capture as a pcap download: the body is capture_start's arguments and ``seconds``
            (default 5, at most 60); it ends at its count, its time or about 32 MiB.  Packet
            contents are not for everyone: it needs the token like a change."""
            if self.capture is None:
                raise HttpError(404, "this server takes no captures")
            body = req.json()
            seconds = body.pop("seconds", 5.0)
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
                    or not 0 < seconds <= MAX_CAPTURE_SECONDS:
                raise HttpError(400, f"'seconds' must be a number in (0, {MAX_CAPTURE_SECONDS:g}]")
            op = ops.decode("capture_start", body)
            assert isinstance(op, ops.CaptureStart)  # decode made it from its name
            data, counts = self.capture(op, float(seconds))
            return Response(200, data, "application/vnd.tcpdump.pcap", {
                "Content-Disposition": 'attachment; filename="onvm-capture.pcap"',
                "X-Onvm-Captured": str(counts["captured"]), "X-Onvm-Dropped": str(counts["dropped"])})

        @route("POST", "/api/control/{op}", change=True)
        def control(req: Request, op: str) -> Response:
            """Any control operation by name, with the JSON body as its arguments."""
            cls = ops.OPS.get(op)
            if cls is None or not cls.from_web:
                raise ConfigError(f"'{op[:40]}' is not an operation the web API may ask for")
            return ok(self.control(ops.decode(op, req.json())))


def sse_frame(event: str, data: Any, ident: int | None = None) -> bytes:
    """One server-sent event."""
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()
