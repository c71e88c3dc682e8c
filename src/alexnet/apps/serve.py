"""`alexnet serve`: a local web page and a JSON API to look inside a checkpoint (issue 12).

The standard library's ThreadingHTTPServer (no new dependency): a thread per connection,
the page's three files from the package (alexnet/apps/web/), and the API that README's "Look
inside" documents, whose computations are inspection.py's. What keeps it up under bad
input and many requests:

- a body is read only with a Content-Length (411 without one) of at most MAX_BODY bytes
  (413); a connection silent for SOCKET_TIMEOUT seconds is dropped;
- the model serves one request at a time (a lock: the forward hooks of `activations` and
  the memory of a forward pass are not shared), and at most MAX_WAITING requests wait for
  it: one more is answered 503 before its body is read, so at most 1 + MAX_WAITING uploads
  are in memory;
- every error is JSON {"error": "one line"}: 400 for what data.load_image refuses or a bad
  parameter, 404, 405 (with Allow), 411, 413 (a body over the limit, or an image over PIL's
  pixel limit), 503; anything else is a bug: a 500 with one line, and a line on stderr.
  Never a traceback in a response, and the server goes on;
- every response carries a Content-Security-Policy that allows this origin only (the page
  needs nothing from elsewhere: no CDN, no web fonts), nosniff, and no-store for the API;
- it binds 127.0.0.1 unless told otherwise, and then warns (no authentication). Bound to
  a loopback address, it answers only requests whose Host is a loopback name or address,
  so that a web page elsewhere cannot reach it through DNS rebinding; a POST whose
  Origin is another site's is refused (403).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
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
from typing import TYPE_CHECKING, Any

import torch

from ..core.checkpoint import load_inference
from ..core.rundir import read_metrics
from ..data.datasets import load_split
from ..run.errors import UserError
from ..run.jsonio import to_json
from ..run.runtime import resolve_device
from .inspection import (
    ImageTooLarge,
    activations,
    decode_upload,
    device_of,
    filters,
    image_array,
    layer_shapes,
    occlusion,
    png_bytes,
    predict,
    preprocess_for,
    towers,
)
from .neighbors import INDEX_BATCH, Fc7Index, checkpoint_key, fc7_index, neighbors

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..data.loaders import Split

MAX_BODY = 16 * 1024 * 1024  # bytes of an upload: a 24-megapixel JPEG is 5-12 MB
MAX_WAITING = 4  # requests waiting for the model behind the one using it; one more: 503
SOCKET_TIMEOUT = 30.0  # seconds a connection may stay silent (request line, headers, body)
MAX_DRAIN = 4 * MAX_BODY  # bytes of an unread body swallowed after an error response
SAMPLES = 12  # images of the validation/test split offered by the page
MAX_K = 50  # neighbours a request may ask for
MAX_TOPK = 10_000
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
ACTIONS = ("predict", "activations", "occlusion", "neighbors")
SAMPLE_PNG = re.compile(r"/api/samples/(\d{1,9})\.png")
ACTION = re.compile(r"/api/(?:samples/(\d{1,9})/)?(predict|activations|occlusion|neighbors)")


class HTTPError(Exception):
    """A response other than 200, with its one-line message and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def find_checkpoint(target: Path) -> Path:
    """A run directory's last.pt, else its model.safetensors; a file is itself."""
    if not target.is_dir():
        return target  # load_inference names a missing or unreadable file
    for name in ("last.pt", "model.safetensors"):
        if (target / name).is_file():
            return target / name
    raise UserError(f"{target}: no last.pt or model.safetensors in this directory (not a run directory?)")


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


# ----------------------------------------------------------------------------- what the requests share


class Inspector:
    """What the request threads share: the model (one request at a time, model_lock), the
    admission count, and what is computed once: the samples, the training split and its
    fc7 index, the filters."""

    def __init__(self, target: str | Path, device: str = "auto") -> None:
        target = Path(target)
        self.checkpoint = find_checkpoint(target)
        self.key = checkpoint_key(self.checkpoint)  # before loading: the index is of this file
        self.loaded = load_inference(self.checkpoint, resolve_device(device))
        self.config = self.loaded.config
        # no DataLoader worker processes forked from a server thread; the index of a big
        # folder is better built beforehand by `alexnet neighbors`, which uses them
        self.data = dataclasses.replace(self.config.data, workers=0)
        parent = self.checkpoint.parent
        is_run = (parent / "metrics.csv").is_file() or (parent / "config.json").is_file()
        self.run_dir = target if target.is_dir() else parent if is_run else None
        self.layers = layer_shapes(self.loaded)
        self.model_lock = threading.Lock()
        self._count_lock, self._admitted = threading.Lock(), 0
        self._data_lock = threading.Lock()
        self._samples: dict[int, tuple[str, torch.Tensor]] | None = None
        self._train: Split | str | None = None  # the split, or why it cannot be read
        self._index: Fc7Index | None = None
        self._filters: dict | None = None

    def admit(self) -> bool:
        """Take a place: the one using the model or one of MAX_WAITING waiting for it."""
        with self._count_lock:
            if self._admitted > MAX_WAITING:
                return False
            self._admitted += 1
            return True

    def release(self) -> None:
        with self._count_lock:
            self._admitted -= 1

    def readable_name(self, cls: str) -> str:
        return dict(zip(self.loaded.classes, self.loaded.class_names)).get(cls, cls)

    def samples(self) -> dict[int, tuple[str, torch.Tensor]]:
        """SAMPLES images of the validation/test split (a fixed draw), by their index in
        it: their readable label and uint8 image. Empty if the data is not readable here."""
        with self._data_lock:
            if self._samples is None:
                self._samples = {}
                try:
                    split = load_split(False, self.data, 64, limit=self.data.limit_val, ordered=True)
                    pick = torch.randperm(split.size, generator=torch.Generator().manual_seed(0))[:SAMPLES]
                    images, labels = split.loader.items(sorted(pick.tolist())) if split.size else ([], [])
                    for i, y, img in zip(sorted(pick.tolist()), labels, images):
                        self._samples[i] = (self.readable_name(split.classes[y]), img)
                except UserError as e:
                    _log(f"alexnet: no sample images: {e}")
            return self._samples

    def sample(self, sample_id: int) -> torch.Tensor:
        found = self.samples().get(sample_id)
        if found is None:
            raise HTTPError(404, f"no sample {sample_id} (GET /api/samples lists them)")
        return found[1]

    def train_split(self) -> Split:
        """The training split the model was trained on (its --limit-train), every image
        once in file order, strict (a skipped file would shift the index's positions)."""
        with self._data_lock:
            if self._train is None:
                try:
                    limit = self.data.limit_train
                    self._train = load_split(True, self.data, INDEX_BATCH, limit=limit, ordered=True, strict=True)
                except UserError as e:
                    self._train = f"no neighbours: the training data is not readable here ({e})"
            if isinstance(self._train, str):
                raise UserError(self._train)
            return self._train

    def has_index(self) -> bool:
        try:
            return self.train_split().size > 0
        except UserError:
            return False

    def index(self) -> Fc7Index:
        """The fc7 index (under model_lock: building it runs the model); built_seconds is
        what this call spent on it, 0 once it is in memory."""
        if self._index is not None:
            return dataclasses.replace(self._index, built_seconds=0.0)
        split = self.train_split()
        pre, dev = preprocess_for(self.loaded), device_of(self.loaded)
        self._index = fc7_index(self.loaded.model, pre, split, self.checkpoint, self.key, self.data.limit_train, dev)
        return self._index

    def run(self, action: str, image: torch.Tensor, params: dict[str, Any]) -> dict:
        """One computation of the API on a uint8 image (the caller holds model_lock)."""
        if action == "predict":
            return predict(self.loaded, image, params["topk"], params["ten_crop"])
        if action == "activations":
            return activations(self.loaded, image)
        if action == "occlusion":
            return occlusion(self.loaded, image, params["window"], params["stride"])
        return neighbors(self.loaded, self.index(), image, params["k"])

    # --------------------------------------------------------------- the GET endpoints

    def health(self) -> dict:
        from .. import __version__

        m = self.config.model
        return {
            "status": "ok",
            "checkpoint": str(self.checkpoint),
            "model": m.name,
            "classes": m.num_classes,
            "input_size": m.input_size,
            "channels": m.in_channels,
            "version": __version__,
        }

    def info(self) -> dict:
        m = self.config.model
        return {
            "checkpoint": str(self.checkpoint),
            "model": m.name,
            "config": self.config.to_dict(),
            "classes": self.loaded.class_names,
            "input_size": m.input_size,
            "channels": m.in_channels,
            "towers": towers(self.loaded.model),
            "layers": self.layers,
            "has_run": self.run_dir is not None and (self.run_dir / "metrics.csv").is_file(),
            "has_samples": bool(self.samples()),
            "has_index": self.has_index(),
        }

    def sample_list(self) -> dict:
        return {
            "samples": [
                {"id": i, "label": label, "url": f"/api/samples/{i}.png"} for i, (label, _) in self.samples().items()
            ]
        }

    def filter_grids(self) -> dict:
        with self._data_lock:
            if self._filters is None:
                self._filters = filters(self.loaded.model)
            return self._filters

    def run_files(self) -> dict:
        """The run directory's config.json, metrics.csv (its rows so far) and summary.json
        (null while the run goes on); nulls and no rows without a run directory."""
        if self.run_dir is None:
            return {"config": None, "metrics": [], "summary": None}
        try:
            rows = read_metrics(self.run_dir)
        except UserError:  # no epoch finished yet
            rows = []
        return {
            "config": _read_json(self.run_dir / "config.json"),
            "metrics": rows,
            "summary": _read_json(self.run_dir / "summary.json"),
        }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _int_param(query: dict[str, list[str]], name: str, default: int | None, lo: int, hi: int) -> int | None:
    text = (query.get(name) or [""])[-1]
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{name} must be a whole number, got {text[:40]!r}") from None
    if not lo <= value <= hi:
        raise UserError(f"{name} must be from {lo} to {hi}, got {value}")
    return value


def _bool_param(query: dict[str, list[str]], name: str) -> bool:
    text = (query.get(name) or ["0"])[-1].lower()
    if text not in ("0", "1", "false", "true", ""):
        raise UserError(f"{name} must be 0 or 1, got {text[:40]!r}")
    return text in ("1", "true")


def action_params(action: str, query: dict[str, list[str]], input_size: int) -> dict[str, Any]:
    """The query parameters of an action, checked (a UserError: 400)."""
    if action == "predict":
        return {"topk": _int_param(query, "topk", 5, 1, MAX_TOPK), "ten_crop": _bool_param(query, "ten_crop")}
    if action == "occlusion":
        return {
            "window": _int_param(query, "window", None, 1, input_size),
            "stride": _int_param(query, "stride", None, 1, input_size),
        }
    if action == "neighbors":
        return {"k": _int_param(query, "k", 6, 1, MAX_K)}
    return {}


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
    def inspector(self) -> Inspector:
        return self.server.inspector

    # --------------------------------------------------------------- routing

    def _route(self, path: str) -> tuple[tuple[str, ...], Callable[[dict], None]] | None:
        """The methods a path allows and what answers it; None: no such path."""
        ins = self.inspector
        gets: dict[str, Callable[[], dict]] = {
            "/api/health": ins.health,
            "/api/info": ins.info,
            "/api/samples": ins.sample_list,
            "/api/filters": ins.filter_grids,
            "/api/run": ins.run_files,
        }
        if path in STATIC:
            return ("GET",), lambda _q: self._static(path)
        if path in gets:
            return ("GET",), lambda _q: self._send_json(200, gets[path]())
        if m := SAMPLE_PNG.fullmatch(path):
            image = lambda _q: self._send(200, png_bytes(image_array(ins.sample(int(m[1])))), "image/png")
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
        except ImageTooLarge as e:
            self._error(413, str(e))
        except UserError as e:
            self._error(400, str(e))
        except TimeoutError:
            self._error(408, f"the request's body did not arrive within {SOCKET_TIMEOUT:g} s")
        except (BrokenPipeError, ConnectionResetError):
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
        body = self.rfile.read(length)
        self._unread = 0
        if len(body) < length:
            raise HTTPError(400, f"the body ended after {len(body):,} of its {length:,} bytes")
        return body

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
        """A POST that runs the model on an upload (the body) or a sample: admitted or 503,
        the body read, the image decoded, then the model alone under its lock."""
        ins = self.inspector
        params = action_params(action, query, ins.config.model.input_size)
        length = self._content_length(required=sample is None)
        if sample is not None:
            ins.sample(sample)  # 404 before any waiting
        if not ins.admit():
            raise HTTPError(
                503, f"busy: {MAX_WAITING} requests are already waiting for the model; try again", {"Retry-After": "2"}
            )
        try:
            body = self._read(length)
            start = time.perf_counter()
            data = ins.data
            image = ins.sample(sample) if sample is not None else decode_upload(body, data.channels, data.resize)
            decoded = time.perf_counter() - start
            with ins.model_lock:
                start = time.perf_counter()
                result = ins.run(action, image, params)
                result["seconds"] = round(decoded + time.perf_counter() - start, 4)
        finally:
            ins.release()
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
    inspector: Inspector
    loopback: bool
    url: str


class Server6(Server):
    address_family = socket.AF_INET6


def make_server(target: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto") -> Server:
    """The server, bound and with the model loaded, not yet serving (serve_forever). The
    port is taken first, so that a port in use is said before the model loads."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be from 0 to 65535, got {port}")
    cls = Server6 if ":" in host else Server
    try:
        httpd = cls((host, port), Handler)
    except OSError as e:
        raise UserError(f"cannot serve on {host} port {port}: {e.strerror or e}") from e
    try:
        httpd.inspector = Inspector(target, device)
    except BaseException:
        httpd.server_close()
        raise
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


def serve(target: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto") -> None:
    """`alexnet serve`: print the URL and serve until Ctrl-C (then return: exit status 0)."""
    httpd = make_server(target, host, port, device)
    warning = host_warning(host)
    if warning:
        _log(warning)
    ins = httpd.inspector
    _stop_on_signals()
    print(f"alexnet: serving {ins.checkpoint} ({ins.config.model.name}) at {httpd.url} (Ctrl-C to stop)", flush=True)
    print(f"alexnet: LRN {ins.loaded.lrn}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        _log("alexnet: stopped")
    finally:
        httpd.server_close()
