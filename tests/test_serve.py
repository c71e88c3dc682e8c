"""`alexnet serve`'s HTTP API against a server on a free loopback port, in a thread: each
endpoint, each error, the model's queue (admission by expected wait, a burst, a slow and a
departed client, memory over many requests), a paper-model checkpoint, and the command."""

import base64
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from alexnet.apps import serve
from alexnet.apps.admission import Admission, Busy, Costs
from alexnet.apps.inspection import PNG_URL
from alexnet.config import DataConfig, RunConfig
from alexnet.core.checkpoint import save_checkpoint
from alexnet.core.model import build_model
from alexnet.core.recipes import resolve
from alexnet.core.rundir import METRIC_FIELDS

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # seconds: only a safety net against a hang, never a speed check
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]


# ------------------------------------------------------------------ a server and a client


def request(httpd, method, path, body=None, headers=None):
    """(status, headers, parsed JSON or raw bytes) of one request to the server."""
    conn = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    if headers.get("content-type") == "application/json":
        data = json.loads(data)
    return resp.status, headers, data


def raw(httpd, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Send bytes as they are (a request http.client would not write); the status and JSON."""
    with socket.create_connection(("127.0.0.1", httpd.server_address[1]), timeout=TIMEOUT) as s:
        s.sendall(head + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.split(b"\r\n\r\n", 1)[1])


def error(status, headers, data, code, *needles):
    """A JSON error with this status: one line naming every needle, no traceback."""
    assert status == code, (status, data)
    assert headers["content-type"] == "application/json"
    assert set(data) == {"error"} and "\n" not in data["error"] and "Traceback" not in data["error"]
    for n in needles:
        assert n in data["error"], (n, data["error"])


def decode(url: str) -> Image.Image:
    assert url.startswith(PNG_URL)
    img = Image.open(io.BytesIO(base64.b64decode(url[len(PNG_URL) :])))
    img.load()
    return img


def start(target) -> serve.Server:
    httpd = serve.make_server(target, "127.0.0.1", 0, "cpu")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def stop(httpd):
    httpd.shutdown()
    httpd.server_close()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, fashion_dir) -> Path:
    """An untrained small model (width 0.5) as a run directory in the middle of a run:
    config.json, one row of metrics.csv, last.pt, no summary.json yet; its data is a slice
    of Fashion-MNIST (600 training, 200 test images)."""
    out = tmp_path_factory.mktemp("serve-run")
    cfg = resolve("fashion-mnist", {"width": 0.5}, {"data_dir": fashion_dir, "limit_train": 600, "limit_val": 200}, {})
    torch.manual_seed(0)
    model = build_model("small", width=0.5, init="kaiming")
    ds_classes = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    save_checkpoint(out / "last.pt", {"config": cfg.to_dict(), "model": model.state_dict(), "classes": ds_classes})
    (out / "config.json").write_text(json.dumps(cfg.to_dict()))
    row = {"epoch": 1, "step": 6, "lr": 0.01, "train_loss": 2.3, "train_acc": 0.1, "epoch_seconds": 1.5}
    (out / "metrics.csv").write_text(
        ",".join(METRIC_FIELDS) + "\n" + ",".join(str(row.get(f, "")) for f in METRIC_FIELDS) + "\n"
    )
    return out


@pytest.fixture(scope="module")
def server(small_run):
    httpd = start(small_run)
    yield httpd
    stop(httpd)


@pytest.fixture(scope="module")
def sample_id(server) -> int:
    return request(server, "GET", "/api/samples")[2]["samples"][0]["id"]


@pytest.fixture(scope="module")
def photo(photos) -> bytes:
    return photos["astronaut.jpg"].read_bytes()


# ------------------------------------------------------------------ the GET endpoints


def test_health_and_info(server, small_run):
    status, headers, h = request(server, "GET", "/api/health")
    assert status == 200 and headers["cache-control"] == "no-store"
    assert h["status"] == "ok" and h["checkpoint"] == str(small_run / "last.pt")
    assert (h["model"], h["classes"], h["input_size"], h["channels"]) == ("small", 10, 28, 1)
    assert isinstance(h["version"], str)
    status, _, info = request(server, "GET", "/api/info")
    assert status == 200
    assert [layer["name"] for layer in info["layers"]] == LAYERS
    assert info["layers"][0]["shape"] == [18, 11, 11] and info["layers"][-1]["shape"] == [384]
    assert info["towers"] == 2 and len(info["classes"]) == 10 and info["config"]["model"]["width"] == 0.5
    assert info["has_run"] and info["has_samples"] and info["has_index"]


def test_samples(server):
    samples = request(server, "GET", "/api/samples")[2]["samples"]
    assert len(samples) == 12 and len({s["id"] for s in samples}) == 12
    assert all(0 <= s["id"] < 200 and s["url"] == f"/api/samples/{s['id']}.png" for s in samples)
    status, headers, data = request(server, "GET", samples[0]["url"])
    assert status == 200 and headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(data))
    assert img.size == (28, 28) and img.mode == "L"
    error(*request(server, "GET", "/api/samples/100000.png"), 404, "no sample 100000")


def test_filters_and_run(server):
    status, _, r = request(server, "GET", "/api/filters")
    assert status == 200 and [t["title"] for t in r["towers"]] == ["tower 1 (GPU 1)", "tower 2 (GPU 2)"]
    assert all(decode(t["grid"]).size == (t["cols"] * 6 - 1, t["rows"] * 6 - 1) for t in r["towers"])  # 5x5 kernels
    status, _, run = request(server, "GET", "/api/run")
    assert status == 200 and run["summary"] is None and run["config"]["model"]["name"] == "small"
    assert len(run["metrics"]) == 1 and run["metrics"][0]["train_loss"] == 2.3
    assert run["metrics"][0]["val_top1"] is None  # not validated that epoch: NaN -> null


def test_static_page(server):
    status, headers, data = request(server, "GET", "/")
    if (ROOT / "src" / "alexnet" / "apps" / "web" / "index.html").is_file():
        assert status == 200 and headers["content-type"].startswith("text/html")
    else:
        error(status, headers, data, 404, "not installed")


# ------------------------------------------------------------------ the model's endpoints


def test_predict(server, sample_id, photo):
    status, headers, r = request(server, "POST", "/api/predict", photo)
    assert status == 200 and headers["cache-control"] == "no-store"
    assert r["patches"] == 1 and len(r["predictions"]) == 5 and r["seconds"] >= 0
    probs = [p["probability"] for p in r["predictions"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert all(set(p) == {"class", "name", "probability"} for p in r["predictions"])
    assert decode(r["input"]).size == (28, 28)  # the network's input, a gray 28x28 patch
    status, _, ten = request(server, "POST", "/api/predict?topk=3&ten_crop=1", photo)
    assert status == 200 and ten["patches"] == 10 and len(ten["predictions"]) == 3
    status, _, s = request(server, "POST", f"/api/samples/{sample_id}/predict?topk=20")
    assert status == 200 and len(s["predictions"]) == 10  # topk beyond the classes: all of them
    error(*request(server, "POST", "/api/predict?topk=0", photo), 400, "topk")
    error(*request(server, "POST", "/api/predict?topk=many", photo), 400, "topk")
    error(*request(server, "POST", "/api/predict?ten_crop=maybe", photo), 400, "ten_crop")


def test_activations(server, sample_id, photo):
    for path, body in (("/api/activations", photo), (f"/api/samples/{sample_id}/activations", None)):
        status, _, r = request(server, "POST", path, body)
        assert status == 200 and [layer["name"] for layer in r["layers"]] == LAYERS
        for layer in r["layers"][:5]:
            c, h, w = layer["shape"]
            assert [t["channels"] for t in layer["towers"]] == [[0, c // 2], [c // 2, c]]
            for t in layer["towers"]:
                assert t["tile"] == [h, w] and decode(t["grid"]).size == (t["cols"] * w, t["rows"] * h)
        for layer in r["layers"][5:]:
            assert layer["shape"] == [384] and decode(layer["strip"]).size == (layer["cols"], layer["rows"])


def test_occlusion(server, sample_id, photo):
    status, _, r = request(server, "POST", "/api/occlusion", photo)
    assert status == 200 and (r["window"], r["stride"], r["positions"]) == (4, 2, 169)
    assert decode(r["heatmap"]).size == (28, 28) and decode(r["overlay"]).size == (28, 28)
    assert 0 <= r["probability"] <= 1 and r["class"] and r["name"]
    status, _, r = request(server, "POST", f"/api/samples/{sample_id}/occlusion?window=1&stride=1")
    assert status == 200 and r["positions"] == 784 <= 900
    error(*request(server, "POST", "/api/occlusion?window=29", photo), 400, "window")
    error(*request(server, "POST", "/api/occlusion?stride=0", photo), 400, "stride")


def test_neighbors_and_the_index_cache(server, small_run, sample_id, fashion_dir):
    status, _, first = request(server, "POST", f"/api/samples/{sample_id}/neighbors?k=4")
    assert status == 200 and first["train_images"] == 600 and len(first["neighbors"]) == 4
    d = [n["distance"] for n in first["neighbors"]]
    assert d == sorted(d)
    assert all(decode(n["image"]).size == (28, 28) and 0 <= n["index"] < 600 for n in first["neighbors"])
    assert list(small_run.glob("last.fc7-*.safetensors"))  # cached beside the checkpoint
    # a training image, uploaded as a PNG, is its own nearest neighbour; the index is in memory now
    from alexnet.data.datasets import fashion_mnist

    train = fashion_mnist(True, DataConfig(data_dir=fashion_dir))
    status, _, again = request(server, "POST", "/api/neighbors?k=3", png(Image.fromarray(train.data[123].numpy())))
    assert status == 200 and again["index_seconds"] == 0 and len(again["neighbors"]) == 3
    assert again["neighbors"][0]["index"] == 123 and again["neighbors"][0]["distance"] < 1e-2
    assert again["neighbors"][0]["label"] == train.classes[int(train.targets[123])]
    error(*request(server, "POST", "/api/neighbors?k=0", b"x"), 400, "k must be")


# ------------------------------------------------------------------ errors


def test_bad_uploads(server, photo, tmp_path):
    error(*request(server, "POST", "/api/predict", b"not a picture\n"), 400, "the upload", "not a readable image")
    error(*request(server, "POST", "/api/predict", b""), 400, "empty")
    whole = png(Image.new("L", (64, 64), 100))
    error(*request(server, "POST", "/api/activations", whole[: len(whole) // 2]), 400, "the upload", "truncated")
    from test_hostile_input import png_header_bomb

    bomb = png_header_bomb(tmp_path / "bomb.png", 30000, 30000).read_bytes()
    error(*request(server, "POST", "/api/predict", bomb), 413, "900,000,000 pixels", "decompression bomb")


def test_request_errors(server):
    port = server.server_address[1]
    status, headers, data = request(server, "GET", "/api/predict")
    error(status, headers, data, 405, "GET /api/predict")
    assert headers["allow"] == "POST"
    status, headers, data = request(server, "POST", "/api/health", b"")
    error(status, headers, data, 405)
    assert headers["allow"] == "GET"
    error(*request(server, "DELETE", "/api/info"), 405)
    error(*request(server, "GET", "/api/nothing"), 404, "/api/nothing")
    error(*request(server, "POST", "/api/samples/99999/predict"), 404, "no sample 99999")
    error(*request(server, "GET", "/api/health", headers={"Host": "evil.example:80"}), 403, "evil.example")
    error(*request(server, "POST", "/api/predict", b"x", {"Origin": "http://evil.example"}), 403, "origin")
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    # no Content-Length
    assert raw(server, b"POST /api/predict HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n") == (
        411,
        {"error": "Content-Length required: send the image file's bytes as the request body"},
    )
    # a Content-Length over the limit: answered before the body, which is never sent
    status, body = raw(server, b"POST /api/predict HTTP/1.1\r\n" + host + b"Content-Length: 16777217\r\n\r\n")
    assert status == 413 and "16,777,217 bytes" in body["error"]
    # sent whole, it is swallowed after the answer, which the client then reads
    error(*request(server, "POST", "/api/predict", bytes(serve.MAX_BODY + 1000)), 413, "16,778,216 bytes")
    # http.server's own refusals are JSON too: a header line over its 64 KiB
    status, body = raw(server, b"GET /api/health HTTP/1.1\r\n" + host + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n")
    assert status == 431 and set(body) == {"error"}


def test_security_headers_on_every_response(server, sample_id, photo):
    answers = [
        request(server, "GET", p)
        for p in (
            "/",
            "/api/health",
            "/api/info",
            "/api/samples",
            f"/api/samples/{sample_id}.png",
            "/api/filters",
            "/api/run",
            "/nope",
            "/api/predict",
        )
    ]
    answers += [request(server, "POST", "/api/predict", photo), request(server, "POST", "/api/predict", b"x")]
    for _, headers, _ in answers:
        assert headers["content-security-policy"] == serve.CSP
        assert "default-src 'none'" in serve.CSP and "connect-src 'self'" in serve.CSP
        assert headers["x-content-type-options"] == "nosniff"


def until(condition, what: str) -> None:
    """Wait for a condition of the server's state (TIMEOUT: a safety net, not a speed check)."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def hold_model(httpd, cost: float):
    """Take the model as a request expected to run `cost` seconds would; admission.done frees it."""
    admission = httpd.session.admission
    ticket = admission.join(cost)
    admission.wait(ticket)
    return ticket


@contextlib.contextmanager
def wait_bound(httpd, seconds: float):
    """The server's --max-wait set to `seconds` for a while (TIMEOUT: the tests' safety
    net, so that how fast this machine is cannot decide a test about the queue's order)."""
    admission = httpd.session.admission
    bound, admission.max_wait = admission.max_wait, seconds
    try:
        yield
    finally:
        admission.max_wait = bound


def rss() -> int:
    """This process's resident memory in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_admission_puts_cheap_requests_first_without_starving_any():
    """The rule of admission.py on a clock that stands still: a cheap request goes ahead of a
    queued expensive one as long as that one still starts within its bound; then it is
    placed behind it, and refused if its wait there is over the bound."""
    admission = Admission(max_wait=10, clock=lambda: 100.0)
    admission.wait(running := admission.join(1.0))  # the model is busy for 1 s more
    big = admission.join(8.0)  # waits 1 s, its deadline: 10 s after its arrival
    cheap = [admission.join(0.5) for _ in range(18)]  # each goes ahead of big: big starts at 1 + 18 * 0.5 = 10
    assert admission._queue == [*cheap, big]
    assert admission.expected_wait(0.5) == 1 + 18 * 0.5 + 8  # the 19th would go behind big
    with pytest.raises(Busy) as refused:
        admission.join(0.5)
    assert refused.value.retry_after == 8 and "busy" in str(refused.value)
    assert admission.expected_wait(20.0) == 18 and admission.waiting() == 19  # the refused one left nothing
    admission.done(running)
    admission.wait(cheap[0])  # the first cheap request is next
    assert admission._queue[0] is cheap[1] and admission.busy()


def test_costs_are_a_running_median_after_a_prior():
    costs = Costs({"predict": 0.05, "occlusion": 0.01})
    assert costs.estimate("occlusion", 100) == pytest.approx(1.0) and costs.measured("occlusion") == 0
    assert costs.estimate("index", 1000) == pytest.approx(1000 * 0.1)  # no prior of its own: the default
    costs.record("predict", 0.02, units=10)
    assert costs.estimate("predict", 1) == pytest.approx(0.002) and costs.measured("predict") == 1
    for _ in range(100):
        costs.record("occlusion", 2.0, units=200)
    assert costs.measured("occlusion") < 100 and costs.estimate("occlusion", 100) == pytest.approx(1.0)


def test_a_burst_of_64_is_answered_beside_a_slow_client(server, photo):
    """A client that sent its headers and half its body holds a thread, not the model:
    64 predictions at once are all admitted (not counted: the old rule took 5) and all
    answered meanwhile. The bound is the tests' safety net for the run, so that a slow,
    busy machine cannot push the expected wait past it: the cost is not what is tested."""
    with wait_bound(server, TIMEOUT):
        burst_beside_a_slow_client(server, photo)


def burst_beside_a_slow_client(server, photo):
    port = server.server_address[1]
    head = f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(photo)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as slow:
        slow.sendall(head.encode() + photo[: len(photo) // 2])
        until(lambda: server.uploads.held >= len(photo), "the slow upload is being read")
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(lambda _: request(server, "POST", "/api/predict", photo), range(64)))
        assert [status for status, _, _ in answers] == [200] * 64, [d for s, _, d in answers if s != 200][:1]
        assert all(len(r["predictions"]) == 5 for _, _, r in answers)
    until(lambda: server.uploads.held == 0, "the slow client's place is given back")
    assert server.session.admission.waiting() == 0 and not server.session.admission.busy()


def test_a_wait_over_the_bound_is_503_with_retry_after(server, photo):
    """The model held by a request expected to take 1,000 s: any request would wait more
    than --max-wait (10 s), and is answered 503 with Retry-After at once; what needs no
    model is answered."""
    admission = server.session.admission
    holder = hold_model(server, 1000.0)
    try:
        status, headers, data = request(server, "POST", "/api/predict", photo)
        error(status, headers, data, 503, "busy", "expected to be free in", "try again")
        assert 1000 - admission.max_wait - TIMEOUT <= int(headers["retry-after"]) <= 1000 - admission.max_wait
        assert request(server, "GET", "/api/health")[0] == 200
        assert admission.waiting() == 0
    finally:
        admission.done(holder)


def test_an_index_build_bounds_its_waiters_and_holds_no_model(server, sample_id, photo):
    """While the fc7 index is being built (here: a build whose progress says 1,000 s are
    left), a neighbours request is answered 503 with Retry-After, and the model answers
    the others: the build is beside the model's queue, not in it."""
    session = server.session

    class Build:
        def left(self):
            return 1000.0

    with session._index_cond:
        built, session._index, session._building = session._index, None, Build()
    try:
        status, headers, data = request(server, "POST", f"/api/samples/{sample_id}/neighbors")
        error(status, headers, data, 503, "busy")
        assert int(headers["retry-after"]) == 1000 - session.admission.max_wait
        assert request(server, "POST", "/api/predict", photo)[0] == 200
    finally:
        with session._index_cond:
            session._index, session._building = built, None


def test_uploads_in_memory_are_bounded(server, photo):
    """An upload that would take the bytes of uploads in memory over the limit is 503."""
    limit, server.uploads.limit = server.uploads.limit, len(photo) - 1
    try:
        status, headers, data = request(server, "POST", "/api/predict", photo)
        error(status, headers, data, 503, "busy", "uploads")
        assert int(headers["retry-after"]) >= 1
    finally:
        server.uploads.limit = limit
    assert request(server, "POST", "/api/predict", photo)[0] == 200 and server.uploads.held == 0


def test_queued_requests_are_answered_when_the_model_is_free(server, photo):
    admission = server.session.admission
    holder = hold_model(server, 0.0)
    try:
        with wait_bound(server, TIMEOUT), ThreadPoolExecutor(5) as pool:
            waiting = [pool.submit(request, server, "POST", "/api/activations", photo) for _ in range(5)]
            until(lambda: admission.waiting() == 5, "five requests wait")
            admission.done(holder)
            assert [f.result(TIMEOUT)[0] for f in waiting] == [200] * 5
    finally:
        admission.done(holder)
    assert admission.waiting() == 0 and not admission.busy()


def test_a_disconnected_client_frees_its_place(server, photo):
    """A request whose client leaves while it waits is dropped before it runs."""
    admission, costs = server.session.admission, server.session.costs
    port = server.server_address[1]
    head = f"POST /api/occlusion HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(photo)}\r\n\r\n"
    holder = hold_model(server, 0.0)
    try:
        dropped, ran = admission.dropped, costs.measured("occlusion")
        with wait_bound(server, TIMEOUT), socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(head.encode() + photo)
            until(lambda: admission.waiting() == 1, "the request waits for the model")
        until(lambda: admission.waiting() == 0, "the departed client's request leaves the queue")
        assert admission.dropped == dropped + 1
    finally:
        admission.done(holder)
    assert request(server, "POST", "/api/predict", photo)[0] == 200
    assert costs.measured("occlusion") == ran  # it never ran


def test_memory_stays_flat_over_1000_requests(server, sample_id):
    """1,000 predictions (4 clients at a time, a sample: no upload to decode): the server's
    memory after the last is within 16 MiB of what it was after the first 100."""
    path = f"/api/samples/{sample_id}/predict"
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda _: request(server, "POST", path)[0], range(100))) == {200}
        before = rss()
        assert set(pool.map(lambda _: request(server, "POST", path)[0], range(900))) == {200}
        grown = rss() - before
    assert grown < 16 * 2**20, f"{grown / 2**20:.1f} MiB more after 900 more requests"
    assert server.session.admission.waiting() == 0 and server.uploads.held == 0


def test_command_errors_are_one_line(small_run, tmp_path, cli, one_line_error):
    rc, _, err = cli("serve", tmp_path)
    one_line_error(rc, err, str(tmp_path), "no last.pt or model.safetensors")
    rc, _, err = cli("serve", tmp_path / "missing.pt", "--port", 0)
    one_line_error(rc, err, "missing.pt", "no such checkpoint")
    rc, _, err = cli("serve", small_run, "--port", 70000)
    one_line_error(rc, err, "--port", "70000")
    rc, _, err = cli("serve", small_run, "--port", 0, "--max-wait", -1)
    one_line_error(rc, err, "--max-wait", "-1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, _, err = cli("serve", small_run, "--port", port)
        one_line_error(rc, err, f"cannot serve on 127.0.0.1 port {port}")


def test_host_warning():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert serve.host_warning(host) is None
    for host in ("0.0.0.0", "::", "192.168.1.10", "myhost"):
        assert "no authentication" in serve.host_warning(host)


# ------------------------------------------------------------------ a paper model, the command


@pytest.mark.slow
def test_paper_checkpoint(imagenet, tmp_path, photo):
    """The paper's network (random weights, 227 inputs, a per-pixel mean image) on a tiny
    ImageNet-style folder: every endpoint, two towers of conv1's 48 kernels."""
    torch.manual_seed(0)
    model = build_model("paper", num_classes=3)
    data = DataConfig(name=str(imagenet), workers=0)
    classes = sorted(p.name for p in (imagenet / "train").iterdir())
    mean = torch.full((3, 256, 256), 110.0) + torch.rand(3, 256, 256)
    save_checkpoint(
        tmp_path / "paper.pt",
        {
            "config": RunConfig(model=model.config, data=data).to_dict(),
            "model": model.state_dict(),
            "classes": classes,
            "mean_image": mean,
        },
    )
    httpd = start(tmp_path / "paper.pt")
    try:
        info = request(httpd, "GET", "/api/info")[2]
        assert info["layers"][0]["shape"] == [96, 27, 27] and info["layers"][5]["shape"] == [4096]
        assert info["has_samples"] and info["has_index"] and not info["has_run"]
        r = request(httpd, "POST", "/api/predict?ten_crop=1", photo)[2]
        assert r["patches"] == 10 and len(r["predictions"]) == 3
        assert decode(r["input"]).size == (227, 227) and decode(r["input"]).mode == "RGB"
        r = request(httpd, "POST", "/api/activations", photo)[2]
        conv1 = r["layers"][0]
        assert [t["channels"] for t in conv1["towers"]] == [[0, 48], [48, 96]]
        assert decode(conv1["towers"][0]["grid"]).size == (8 * 27, 6 * 27)
        assert decode(r["layers"][6]["strip"]).size == (64, 64)
        r = request(httpd, "POST", "/api/occlusion?window=64&stride=64", photo)[2]
        assert (r["positions"], decode(r["heatmap"]).size) == (16, (227, 227))
        sample = request(httpd, "GET", "/api/samples")[2]["samples"][0]["id"]
        status, _, r = request(httpd, "POST", f"/api/samples/{sample}/neighbors?k=3")
        assert status == 200 and r["train_images"] == 12 and len(r["neighbors"]) == 3
        assert decode(r["neighbors"][0]["image"]).size == (256, 256)
        towers = request(httpd, "GET", "/api/filters")[2]["towers"]
        assert len(towers) == 2 and decode(towers[0]["grid"]).mode == "RGB"
    finally:
        stop(httpd)


@pytest.mark.slow
def test_trained_run_shares_the_index_with_neighbors(fashion_run, cli, capsys):
    """The fashion_run fixture: its metrics and summary; the fc7 index serve builds is the
    one `alexnet neighbors` then reads (over the same 4,000 training images)."""
    for cached in fashion_run.glob("last.fc7-*.safetensors"):  # another test's (the browser's)
        cached.unlink()
    httpd = start(fashion_run)
    try:
        run = request(httpd, "GET", "/api/run")[2]
        assert len(run["metrics"]) == 2 and run["summary"]["status"]
        sample = request(httpd, "GET", "/api/samples")[2]["samples"][0]["id"]
        r = request(httpd, "POST", f"/api/samples/{sample}/neighbors")[2]
        assert r["train_images"] == 4000 and len(r["neighbors"]) == 6
    finally:
        stop(httpd)
    assert "computing the fc7 index of 4,000" in capsys.readouterr().err  # serve built it
    rc, out, err = cli(
        "neighbors",
        fashion_run / "last.pt",
        "--limit-train",
        4000,
        "--queries",
        2,
        "--out",
        fashion_run / "shared.png",
        "--json",
    )
    assert rc == 0, err
    assert "computing the fc7 index" not in err and json.loads(out)["train_images"] == 4000


@pytest.mark.slow
def test_serve_command_prints_the_url_and_stops_on_ctrl_c(small_run):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "alexnet", "serve", str(small_run), "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()  # printed once the server listens
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split("http://", 1)[1].split()[0]
        host, port = url.rstrip("/").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
        conn.request("GET", "/api/health")
        assert json.loads(conn.getresponse().read())["status"] == "ok"
        conn.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
        err = proc.stderr.read()
        assert "Traceback" not in err and "stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
