"""`alexnet serve`: a local web page and a JSON API to look inside a checkpoint (issue 12).

The standard library's ThreadingHTTPServer (no new dependency): a thread per connection,
the page's three files from the package (alexnet/apps/web/), and the API that README's "Look
inside" documents, whose computations are inspection.py's. What keeps it up under bad
input and many requests:

- a body is read only with a Content-Length (411 without one) of at most MAX_BODY bytes
  (413); a connection silent for SOCKET_TIMEOUT seconds is dropped;
- the model serves one request at a time, and which request waits for it or is told to
  come back (503 with Retry-After) is admission.py's rule: by the expected wait, at most
  `--max-wait` seconds (default 10), cheap requests ahead of expensive ones, nobody
  starved; what the requests share is session.py's Session;
- a request's body is read whole, and decoded, before it joins the model's queue: a slow
  client holds a thread, never the model, and is bounded by the socket timeouts (silence
  of SOCKET_TIMEOUT seconds; a body slower than MIN_UPLOAD_RATE bytes a second); at most
  MAX_UPLOADS bytes of uploads are in memory at once, as bodies or decoded images (one
  more: 503, before its body is read), and DECODERS are decoded at once;
- a request whose client disconnects while it waits for the model is dropped before it
  runs (a client that half-closes its connection is taken as gone);
- every error is JSON {"error": "one line"}: 400 for what data.load_image refuses or a bad
  parameter, 404, 405 (with Allow), 408, 411, 413 (a body over the limit, or an image over
  PIL's pixel limit), 503 (with Retry-After); anything else is a bug: a 500 with one
  line, and a line on stderr. Never a traceback in a response, and the server goes on;
- every response carries a Content-Security-Policy that allows this origin only (the page
  needs nothing from elsewhere: no CDN, no web fonts), nosniff, and no-store for the API;
- it binds 127.0.0.1 unless told otherwise, and then warns (no authentication). Bound to
  a loopback address, it answers only requests whose Host is a loopback name or address,
  so that a web page elsewhere cannot reach it through DNS rebinding; a POST whose
  Origin is another site's is refused (403).
"""

from __future__ import annotations

import ipaddress
import re
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..run.errors import UserError
from ..run.jsonio import to_json
from .admission import MAX_WAIT, Busy, Gone, Uploads
from .inspection import ImageTooLarge, decode_upload, image_array, png_bytes
from .session import NotFound, Session, action_params

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_BODY = 16 * 1024 * 1024  # bytes of an upload: a 24-megapixel JPEG is 5-12 MB
MAX_UPLOADS = 8 * MAX_BODY  # bytes of uploads in memory at once: bodies being read, decoded images
SOCKET_TIMEOUT = 30.0  # seconds a connection may stay silent (request line, headers, body)
MIN_UPLOAD_RATE = 64 * 1024  # bytes a second: a body may take SOCKET_TIMEOUT + its size / this
DECODERS = 2  # uploads decoded at once: more would take the cores (and the GIL) from the model
MAX_DRAIN = 4 * MAX_BODY  # bytes of an unread body swallowed after an error response
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
SAMPLE_PNG = re.compile(r"/api/samples/(\d{1,9})\.png")
ACTION = re.compile(r"/api/(?:samples/(\d{1,9})/)?(predict|activations|occlusion|neighbors)")


class HTTPError(Exception):
    """A response other than 200, with its one-line message and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> str | None:
    """The warning for an address other machines may reach, or None for a loopback one."""
    if is_loopback(host):
        return None
    return (
        f"alexnet: warning: serving on {host}: anyone who can reach this port can use the page and the API, "
        "which have no authentication (the default --host 127.0.0.1 serves this machine only)"
    )


# ----------------------------------------------------------------------------- HTTP


class Handler(BaseHTTPRequestHandler):
    """One connection's requests (HTTP/1.0: one request a connection)."""

    server: Server
    server_version = "alexnet"
    timeout = SOCKET_TIMEOUT

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def version_string(self) -> str:
        return self.server_version

    @property
    def session(self) -> Session:
        return self.server.session

    # --------------------------------------------------------------- routing

    def _route(self, path: str) -> tuple[tuple[str, ...], Callable[[dict], None]] | None:
        """The methods a path allows and what answers it; None: no such path."""
        ses = self.session
        gets: dict[str, Callable[[], dict]] = {
            "/api/health": ses.health,
            "/api/info": ses.info,
            "/api/samples": ses.sample_list,
            "/api/filters": ses.filter_grids,
            "/api/run": ses.run_files,
        }
        if path in STATIC:
            return ("GET",), lambda _q: self._static(path)
        if path in gets:
            return ("GET",), lambda _q: self._send_json(200, gets[path]())
        if m := SAMPLE_PNG.fullmatch(path):
            image = lambda _q: self._send(200, png_bytes(image_array(ses.sample(int(m[1])))), "image/png")
            return ("GET",), image
        if m := ACTION.fullmatch(path):
            return ("POST",), lambda q: self._inspect(m[2], q, None if m[1] is None else int(m[1]))
        return None

    def _dispatch(self, method: str) -> None:
        declared = self.headers.get("Content-Length", "").strip()
        self._sent, self._unread = False, int(declared) if declared.isdigit() else 0  # until read
        try:
            url = urllib.parse.urlsplit(self.path)
            self._check_host()
            route = self._route(url.path)
            if route is None:
                raise HTTPError(404, f"{url.path}: no such page or API endpoint")
            allowed, answer = route
            if method not in allowed:
                allow = ", ".join(allowed)
                raise HTTPError(405, f"{method} {url.path}: not allowed (use {allow})", {"Allow": allow})
            if method == "POST":
                self._check_origin()
            answer(urllib.parse.parse_qs(url.query, keep_blank_values=True))
        except HTTPError as e:
            self._error(e.status, e.message, e.headers)
        except Busy as e:
            self._error(503, str(e), {"Retry-After": str(e.retry_after)})
        except NotFound as e:
            self._error(404, str(e))
        except ImageTooLarge as e:
            self._error(413, str(e))
        except UserError as e:
            self._error(400, str(e))
        except TimeoutError:
            self._error(
                408,
                f"the request's body did not arrive in time (silent for {SOCKET_TIMEOUT:g} s, "
                f"or slower than {MIN_UPLOAD_RATE // 1024} KiB/s)",
            )
        except (BrokenPipeError, ConnectionResetError, Gone):
            self.close_connection = True  # the client left; nobody to answer
        except Exception as e:  # noqa: BLE001 - a bug: one line to the client and the log, the server goes on
            self._internal_error(e)
        finally:
            self._drain()

    def _internal_error(self, e: Exception) -> None:
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        at = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        self.log_error("internal error in %s %s: %s: %s%s", self.command, self.path, type(e).__name__, detail, at)
        self._error(500, f"internal error: {type(e).__name__}{': ' + detail if detail else ''}")

    def _check_host(self) -> None:
        """Bound to a loopback address, answer only requests addressed to one: a page on
        another site cannot reach this server by rebinding its DNS name to 127.0.0.1."""
        host = self.headers.get("Host")
        if not self.server.loopback or host is None:
            return
        name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
        if not is_loopback(name):
            raise HTTPError(403, f"Host {host[:100]!r} is not this machine's loopback: open {self.server.url}")

    def _check_origin(self) -> None:
        """A browser names the page that sends a POST: only this server's own page may."""
        origin = self.headers.get("Origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != self.headers.get("Host"):
            raise HTTPError(403, f"a request from another origin ({origin[:100]}) is refused")

    # --------------------------------------------------------------- bodies

    def _content_length(self, required: bool) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise HTTPError(411, "send the image with a Content-Length (chunked bodies are not accepted)")
        text = self.headers.get("Content-Length")
        if text is None:
            if required:
                raise HTTPError(411, "Content-Length required: send the image file's bytes as the request body")
            return 0
        if not text.strip().isdigit():
            raise HTTPError(400, f"Content-Length {text[:40]!r} is not a number of bytes")
        length = int(text)
        if length > MAX_BODY:
            raise HTTPError(413, f"the upload is {length:,} bytes, more than the {MAX_BODY:,} accepted")
        return length

    def _read(self, length: int) -> bytes:
        """The whole body: no silence of SOCKET_TIMEOUT s (the socket's timeout), and all of
        it within SOCKET_TIMEOUT + length / MIN_UPLOAD_RATE s (TimeoutError: 408)."""
        self._unread = 0  # what is not read now is not waited for
        deadline = time.monotonic() + SOCKET_TIMEOUT + length / MIN_UPLOAD_RATE
        chunks, got = [], 0
        while got < length:
            if time.monotonic() > deadline:
                raise TimeoutError
            chunk = self.rfile.read1(min(length - got, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got < length:
            raise HTTPError(400, f"the body ended after {got:,} of its {length:,} bytes")
        return b"".join(chunks)

    def _gone(self) -> bool:
        """Whether the client closed its connection while its request waits (a client that
        half-closes it after its request is taken as gone too): a look without waiting."""
        conn = self.connection
        timeout = conn.gettimeout()
        try:
            conn.settimeout(0)
            try:
                return not conn.recv(1, socket.MSG_PEEK)
            finally:
                conn.settimeout(timeout)
        except BlockingIOError:  # nothing to read: still there
            return False
        except OSError:  # reset
            return True

    def _drain(self) -> None:
        """Swallow a body left unread by an error answer (up to MAX_DRAIN bytes, for at most
        2 s of silence): a socket closed with unread bytes sends a reset, and the client
        could lose the answer before reading it."""
        left, self._unread = min(self._unread, MAX_DRAIN), 0
        if left <= 0:
            return
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)  # the answer is complete: the client may read it now
            self.connection.settimeout(2.0)
            while left > 0:
                chunk = self.rfile.read1(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    # --------------------------------------------------------------- the inspections

    def _inspect(self, action: str, query: dict[str, list[str]], sample: int | None) -> None:
        """A POST that runs the model on an upload (the body) or a sample: the parameters
        checked, Busy (503) at once if the model's queue is too long, the body read whole
        and decoded, then the session's turn of the model (Busy, or Gone if the client leaves)."""
        ses = self.session
        params = action_params(action, query, ses.config.model.input_size)
        length = self._content_length(required=sample is None)
        if sample is not None:
            ses.sample(sample)  # 404 before any waiting
        ses.admissible(action, params)
        uploads = self.server.uploads
        uploads.take(length)
        try:
            body = self._read(length)
            with self.server.decoding:
                start = time.perf_counter()
                data = ses.data
                image = ses.sample(sample) if sample is not None else decode_upload(body, data.channels, data.resize)
                decoded = time.perf_counter() - start
        finally:
            uploads.give(length)
        del body
        held = 0 if sample is not None else image.numel() * image.element_size()  # a sample is shared
        uploads.take(held)
        try:
            result = ses.inspect(action, image, params, self._gone)
        finally:
            uploads.give(held)
        result["seconds"] = round(decoded + result["seconds"], 4)
        self._send_json(200, result)

    # --------------------------------------------------------------- responses

    def _static(self, path: str) -> None:
        name, content_type = STATIC[path]
        try:
            body = (resources.files(__package__) / "web" / name).read_bytes()
        except OSError:
            raise HTTPError(404, f"{name}: the page is not installed (alexnet/apps/web/{name} is missing)") from None
        self._send(200, body, content_type)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        api = urllib.parse.urlsplit(getattr(self, "path", "")).path.startswith("/api")
        self.send_header("Cache-Control", "no-store" if api else "no-cache")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)
        self._sent = True

    def _send_json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, to_json(obj, indent=None).encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        if getattr(self, "_sent", False):
            return
        try:
            self._send_json(status, {"error": message}, headers)
        except OSError:  # the client left
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (a malformed request line, headers too long, an unknown
        method) as JSON like the others."""
        self._sent = False
        self._error(code, message or HTTPStatus(code).phrase)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Only failed requests are logged: a page load is a dozen requests."""
        if str(getattr(code, "value", code)).isdigit() and int(getattr(code, "value", code)) >= 400:
            super().log_request(code, size)

    def log_message(self, format: str, *args: object) -> None:
        _log(f"alexnet serve: {self.address_string()} {format % args}")


class Server(ThreadingHTTPServer):
    """A thread per connection (daemon threads: Ctrl-C does not wait for them)."""

    daemon_threads = True
    request_queue_size = 64  # a burst of connections waits in the kernel, not refused
    session: Session
    uploads: Uploads
    decoding: threading.Semaphore
    loopback: bool
    url: str


class Server6(Server):
    address_family = socket.AF_INET6


def make_server(
    target: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto", max_wait: float = MAX_WAIT
) -> Server:
    """The server, bound and with the model loaded, not yet serving (serve_forever). The
    port is taken first, so that a port in use is said before the model loads."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be from 0 to 65535, got {port}")
    if not 0 <= max_wait < float("inf"):
        raise UserError(f"--max-wait must be a number of seconds from 0, got {max_wait}")
    cls = Server6 if ":" in host else Server
    try:
        httpd = cls((host, port), Handler)
    except OSError as e:
        raise UserError(f"cannot serve on {host} port {port}: {e.strerror or e}") from e
    try:
        httpd.session = Session(target, device, max_wait)
    except BaseException:
        httpd.server_close()
        raise
    httpd.uploads, httpd.decoding = Uploads(MAX_UPLOADS), threading.Semaphore(DECODERS)
    httpd.loopback = is_loopback(host)
    shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    shown = f"[{shown}]" if ":" in shown else shown
    httpd.url = f"http://{shown}:{httpd.server_address[1]}/"
    return httpd


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (docker stop, systemd) end serve_forever with KeyboardInterrupt,
    whatever this process inherited: a shell starts a background job with SIGINT ignored,
    and Python then never raises KeyboardInterrupt."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.default_int_handler)


def serve(
    target: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto", max_wait: float = MAX_WAIT
) -> None:
    """`alexnet serve`: print the URL and serve until Ctrl-C (then return: exit status 0)."""
    httpd = make_server(target, host, port, device, max_wait)
    warning = host_warning(host)
    if warning:
        _log(warning)
    ses = httpd.session
    _stop_on_signals()
    print(f"alexnet: serving {ses.checkpoint} ({ses.config.model.name}) at {httpd.url} (Ctrl-C to stop)", flush=True)
    print(f"alexnet: LRN {ses.loaded.lrn}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        _log("alexnet: stopped")
    finally:
        httpd.server_close()
