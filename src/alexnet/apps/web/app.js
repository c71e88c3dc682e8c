// The page of `alexnet serve`: plain JavaScript, no framework, nothing from another origin.
// It calls the JSON API of the same server (README, "Look inside"); every error the API
// answers ({"error": ...}) is shown in the message bar at the top of the page.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const RUN_POLL_MS = 5000;
  const STALE = ["prediction", "activations-body", "neighbors", "occlusion-body"];

  const state = {
    info: null, // GET /api/info
    source: null, // the chosen image: {kind: "upload", blob, name, url} or {kind: "sample", id, label, url}
    generation: 0, // bumped on every new choice: answers for an older choice are dropped
    controller: null, // aborts the requests of the previous choice
    zoom: null, // the enlarged channel: {layer, tower, channel}, kept across images
    runTimer: null,
  };

  // ------------------------------------------------------------------ messages and busy states

  function showError(text) {
    $("message-text").textContent = text;
    $("message").hidden = false;
  }

  function clearError() {
    $("message").hidden = true;
    $("message-text").textContent = "";
  }

  // A busy line that counts the seconds, so a slow request visibly is one; returns stop().
  // The line belongs to the latest caller: an aborted older request does not hide it.
  const busyOwner = new Map();
  function busy(id, text) {
    const el = $(id);
    const token = {};
    busyOwner.set(id, token);
    const start = performance.now();
    const tick = () => {
      el.textContent = `${text} ${((performance.now() - start) / 1000).toFixed(0)} s`;
    };
    tick();
    el.hidden = false;
    const section = el.closest("section");
    if (section) section.setAttribute("aria-busy", "true");
    const timer = setInterval(tick, 1000);
    return () => {
      clearInterval(timer);
      if (busyOwner.get(id) !== token) return;
      el.hidden = true;
      if (section) section.removeAttribute("aria-busy");
    };
  }

  class ApiError extends Error {}

  // fetch + JSON; a 4xx/5xx becomes an ApiError carrying the server's one-line message.
  async function api(path, { method = "GET", body, signal } = {}) {
    let res;
    try {
      const headers = body ? { "Content-Type": "application/octet-stream" } : undefined;
      res = await fetch(path, { method, body, signal, headers, cache: "no-store" });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(`${method} ${path}: no answer from the server (${e.message})`);
    }
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!res.ok) {
      const why = data && typeof data.error === "string" ? data.error : `${res.status} ${res.statusText}`;
      throw new ApiError(why);
    }
    if (data === null || typeof data !== "object") throw new ApiError(`${method} ${path}: the answer is not JSON`);
    return data;
  }

  const isAbort = (e) => e && e.name === "AbortError";

  // ------------------------------------------------------------------ small helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const percent = (p) => (p >= 0.001 || p === 0 ? `${(100 * p).toFixed(1)}%` : "<0.1%");
  const seconds = (s) => (s < 10 ? `${s.toFixed(2)} s` : `${s.toFixed(1)} s`);
  const shape = (s) => s.join("×");

  // Small images (28 pixels) are shown magnified with hard pixel edges, by a whole factor that
  // brings them near `target` CSS pixels wide (the layout may still shrink them to fit).
  function magnify(img, target, box = img) {
    const fit = () => {
      if (!img.naturalWidth) return;
      const factor = Math.max(1, Math.min(16, Math.round(target / img.naturalWidth)));
      box.style.maxWidth = `${img.naturalWidth * factor}px`;
    };
    if (img.complete) fit();
    else img.addEventListener("load", fit, { once: true });
  }

  function unavailable(id, why) {
    const node = $(id);
    node.textContent = `Not available for this checkpoint: ${why}`;
    node.hidden = false;
  }

  // ------------------------------------------------------------------ the model

  async function loadInfo() {
    const [info, health] = await Promise.all([api("/api/info"), api("/api/health")]);
    state.info = info;
    const n = Array.isArray(info.classes) ? info.classes.length : info.classes;
    const towers = info.towers === 2 ? "two towers" : "one tower";
    const colour = info.channels === 1 ? "grayscale" : "RGB";
    $("model-line").textContent =
      `${info.model} · ${n} classes · input ${info.input_size}×${info.input_size} ${colour} · ${towers} · ` +
      `${info.checkpoint} · alexnet ${health.version}`;
    document.title = `alexnet serve · ${info.model}`;
    const layers = (info.layers || []).map((l) => `${l.name} ${shape(l.shape)}`).join(" → ");
    if (layers) $("activations-empty").textContent = `Choose an image above. The layers: ${layers}.`;
    if (!info.has_index) {
      unavailable("neighbors-unavailable",
        "the training images are not readable on this machine, so there is no fc7 index to search");
      $("neighbors-empty").hidden = true;
    }
  }

  // ------------------------------------------------------------------ 1. predict

  async function loadSamples() {
    if (!state.info.has_samples) {
      unavailable("samples-unavailable", "the run's test images are not readable on this machine");
      return;
    }
    const { samples } = await api("/api/samples");
    if (!samples.length) {
      unavailable("samples-unavailable", "the run's test images are not readable on this machine");
      return;
    }
    const box = $("samples");
    for (const s of samples) {
      const img = el("img", { src: s.url, alt: s.label, class: "pixelated" });
      const button = el("button", { type: "button", class: "sample", title: `test image ${s.id}: ${s.label}` },
        img, el("span", { text: s.label }));
      button.dataset.id = String(s.id);
      button.addEventListener("click", () => choose({ kind: "sample", id: s.id, label: s.label, url: s.url }));
      box.append(button);
    }
  }

  function request(what, query = "") {
    const src = state.source;
    if (src.kind === "sample") return { path: `/api/samples/${src.id}/${what}${query}`, body: undefined };
    return { path: `/api/${what}${query}`, body: src.blob };
  }

  async function call(what, query, generation) {
    const { path, body } = request(what, query);
    const data = await api(path, { method: "POST", body, signal: state.controller.signal });
    if (generation !== state.generation) throw new DOMException("a newer image was chosen", "AbortError");
    return data;
  }

  function choose(source) {
    if (state.source && state.source.kind === "upload") URL.revokeObjectURL(state.source.url);
    if (state.controller) state.controller.abort();
    state.controller = new AbortController();
    state.source = source;
    state.generation += 1;
    clearError();
    for (const b of document.querySelectorAll(".sample")) {
      b.classList.toggle("chosen", source.kind === "sample" && b.dataset.id === String(source.id));
    }
    // what the page shows until each answer comes belongs to the image before: dimmed
    for (const id of STALE) $(id).classList.add("stale");
    $("original").src = source.url;
    $("original").alt = source.kind === "sample" ? `test image: ${source.label}` : source.name;
    $("occ-run").disabled = true; // until this image's occlusion is done
    analyse(state.generation);
  }

  // The requests for one image, one after the other (the server runs the model for one
  // request at a time, so firing them together would only queue them there).
  async function analyse(generation) {
    try {
      await predict(generation);
    } catch (e) {
      if (!isAbort(e)) {
        failed("Predict", e);
        clearResults();
      }
      return;
    }
    const steps = [["Activations", activations, "activations-body"], ["Neighbours", neighbors, "neighbors"],
      ["Occlusion", occlusion, "occlusion-body"]];
    for (const [name, step, id] of steps) {
      try {
        await step(generation);
      } catch (e) {
        if (isAbort(e)) return;
        failed(name, e);
        $(id).hidden = id !== "neighbors"; // not the image before's
        if (id === "neighbors") $(id).replaceChildren();
        $(id).classList.remove("stale");
      }
    }
  }

  // An image the server refused: what the page showed belonged to the image before it.
  function clearResults() {
    for (const id of STALE) $(id).classList.remove("stale");
    $("prediction").hidden = true;
    $("activations-body").hidden = true;
    $("occlusion-body").hidden = true;
    $("neighbors").replaceChildren();
    $("neighbors-meta").textContent = "";
    for (const id of ["activations-empty", "occlusion-empty"]) $(id).hidden = false;
    $("neighbors-empty").hidden = !state.info.has_index;
  }

  function failed(what, e) {
    showError(`${what}: ${e.message}`);
  }

  async function predict(generation) {
    const tenCrop = $("ten-crop").checked ? 1 : 0;
    const stop = busy("predict-busy", tenCrop ? "Predicting (10 patches)…" : "Predicting…");
    let data;
    try {
      data = await call("predict", `?topk=5&ten_crop=${tenCrop}`, generation);
    } catch (e) {
      if (!isAbort(e)) $("prediction").hidden = true;
      throw e;
    } finally {
      stop();
    }
    const info = state.info;
    $("input").src = data.input;
    magnify($("input"), 224);
    $("input-caption").textContent =
      `as the network sees it: ${info.input_size}×${info.input_size}, ${info.channels === 1 ? "grayscale" : "RGB"}`;
    const list = $("top5");
    list.replaceChildren();
    data.predictions.forEach((p, i) => {
      const fill = el("span", { class: "fill" });
      fill.style.width = `${Math.max(0, Math.min(1, p.probability)) * 100}%`;
      list.append(el("li", { class: i === 0 ? "first" : "" },
        el("span", { class: "name", text: p.name, title: `class ${p.class}` }),
        el("span", { class: "bar" }, fill),
        el("span", { class: "pct", text: percent(p.probability) })));
    });
    $("top5-title").textContent = `Top ${data.predictions.length}`;
    const how = data.patches === 10 ? "10 patches averaged (§4.1)" : "the centre patch";
    $("predict-meta").textContent = `${how} · ${seconds(data.seconds)}`;
    $("prediction").hidden = false;
    $("prediction").classList.remove("stale");
  }

  // ------------------------------------------------------------------ 2. activations

  // Where tile (r, c) lies in a tower's grid image: at c * (w + pad), r * (h + pad), `pad`
  // pixels between tiles and no border (the spec's layout). Without `pad`, it is inferred.
  function layout(tower, img) {
    const [h, w] = tower.tile;
    if (Number.isInteger(tower.pad)) return { h, w, pad: tower.pad, off: 0 };
    const extra = img.naturalWidth - tower.cols * w;
    if (extra <= 0) return { h, w, pad: 0, off: 0 };
    if (tower.cols > 1 && extra % (tower.cols - 1) === 0) return { h, w, pad: extra / (tower.cols - 1), off: 0 };
    const pad = extra / (tower.cols + 1); // a border too (torchvision's make_grid)
    return { h, w, pad, off: pad };
  }

  function tileAt(tower, img, event) {
    const g = layout(tower, img);
    const rect = img.getBoundingClientRect();
    const x = ((event.clientX - rect.left) * img.naturalWidth) / rect.width;
    const y = ((event.clientY - rect.top) * img.naturalHeight) / rect.height;
    const clamp = (v, n) => Math.max(0, Math.min(n - 1, v));
    const col = clamp(Math.floor((x - g.off) / (g.w + g.pad)), tower.cols);
    const row = clamp(Math.floor((y - g.off) / (g.h + g.pad)), tower.rows);
    const channel = tower.channels[0] + row * tower.cols + col;
    return channel < tower.channels[1] ? channel : null;
  }

  function enlarge(layer, towerIndex, channel, img, marker) {
    const tower = layer.towers[towerIndex];
    const g = layout(tower, img);
    const k = channel - tower.channels[0];
    const row = Math.floor(k / tower.cols);
    const col = k % tower.cols;
    const x = g.off + col * (g.w + g.pad);
    const y = g.off + row * (g.h + g.pad);
    const canvas = $("zoom-canvas");
    canvas.width = g.w;
    canvas.height = g.h;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(img, x, y, g.w, g.h, 0, 0, g.w, g.h);
    const [C, H, W] = layer.shape;
    const where = layer.towers.length > 1 ? ` · tower ${towerIndex + 1}` : "";
    $("zoom-caption").textContent = `${layer.name} · channel ${channel} of ${C}${where} · ${H}×${W}`;
    $("zoom").hidden = false;
    for (const m of document.querySelectorAll(".tile-marker")) m.hidden = true;
    marker.style.left = `${(100 * x) / img.naturalWidth}%`;
    marker.style.top = `${(100 * y) / img.naturalHeight}%`;
    marker.style.width = `${(100 * g.w) / img.naturalWidth}%`;
    marker.style.height = `${(100 * g.h) / img.naturalHeight}%`;
    marker.hidden = false;
    state.zoom = { layer: layer.name, tower: towerIndex, channel };
  }

  // Thin lines between the tiles (drawn over the grid, which has none or a pad of background),
  // so that channels of a few pixels stay apart when magnified.
  function tileLines(tower, img) {
    const g = layout(tower, img);
    const W = img.naturalWidth, H = img.naturalHeight;
    const lines = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", class: "tile-lines", "aria-hidden": "true" });
    for (let c = 1; c < tower.cols; c++) {
      const x = g.off + c * (g.w + g.pad) - g.pad / 2;
      lines.append(svg("line", { x1: x, x2: x, y1: 0, y2: H }));
    }
    for (let r = 1; r < tower.rows; r++) {
      const y = g.off + r * (g.h + g.pad) - g.pad / 2;
      lines.append(svg("line", { x1: 0, x2: W, y1: y, y2: y }));
    }
    return lines;
  }

  function renderTower(layer, tower, index, reenlarge) {
    const img = el("img", { src: tower.grid, class: "grid pixelated" });
    const n = tower.channels[1] - tower.channels[0];
    img.alt = `${layer.name}: channels ${tower.channels[0]} to ${tower.channels[1] - 1}`;
    img.title = "click a channel to enlarge it";
    const marker = el("div", { class: "tile-marker" });
    marker.hidden = true;
    const wrap = el("div", { class: "grid-wrap" }, img, marker);
    const label = layer.towers.length > 1
      ? `tower ${index + 1}: channels ${tower.channels[0]}–${tower.channels[1] - 1}`
      : `${n} channels`;
    img.addEventListener("click", (event) => {
      const channel = tileAt(tower, img, event);
      if (channel !== null) enlarge(layer, index, channel, img, marker);
    });
    img.decode().then(() => {
      magnify(img, 320, wrap);
      wrap.insertBefore(tileLines(tower, img), marker);
      if (reenlarge) enlarge(layer, index, reenlarge.channel, img, marker);
    }, () => {});
    return el("figure", { class: "tower" }, wrap, el("figcaption", { text: label }));
  }

  async function activations(generation) {
    $("activations-empty").hidden = true;
    const stop = busy("activations-busy", "Computing the activations…");
    let data;
    try {
      data = await call("activations", "", generation);
    } finally {
      stop();
    }
    const box = $("layers");
    box.replaceChildren();
    $("zoom").hidden = true;
    const keep = state.zoom;
    for (const layer of data.layers) {
      const head = el("h3", {}, el("span", { text: layer.name }), el("span", { class: "shape", text: shape(layer.shape) }));
      const block = el("div", { class: "layer" }, head);
      block.dataset.layer = layer.name;
      if (layer.towers) {
        const towers = el("div", { class: "towers" });
        layer.towers.forEach((t, i) => {
          const again = keep && keep.layer === layer.name && keep.tower === i &&
            keep.channel >= t.channels[0] && keep.channel < t.channels[1] ? keep : null;
          towers.append(renderTower(layer, t, i, again));
        });
        block.append(towers);
      } else if (layer.strip) {
        const img = el("img", { src: layer.strip, class: "strip pixelated", alt: `${layer.name}: ${layer.shape[0]} units` });
        img.decode().then(() => {
          if (img.naturalHeight / img.naturalWidth > 0.1) img.classList.add("strip-2d");
        }, () => {});
        const rows = layer.cols ? `, ${layer.cols} to a row` : "";
        block.append(img, el("p", { class: "muted small",
          text: `${layer.shape[0]} units${rows}, one pixel each, dark (lowest) to bright (highest)` }));
      }
      box.append(block);
    }
    $("activations-body").hidden = false;
    $("activations-body").classList.remove("stale");
  }

  // ------------------------------------------------------------------ 3. figures of the paper

  async function loadFilters() {
    const stop = busy("filters-busy", "Loading the kernels…");
    let data;
    try {
      data = await api("/api/filters");
    } finally {
      stop();
    }
    const box = $("filters");
    for (const t of data.towers) {
      const img = el("img", { src: t.grid, class: "filters pixelated", alt: `conv1 kernels, ${t.title}` });
      magnify(img, 400);
      box.append(el("figure", { class: "tower" }, img, el("figcaption", { text: t.title })));
    }
  }

  async function neighbors(generation) {
    if (!state.info.has_index) return;
    $("neighbors-empty").hidden = true;
    $("neighbors-meta").textContent = "";
    const stop = busy("neighbors-busy", "Finding the nearest training images (the first time, the fc7 index is built)…");
    let data;
    try {
      data = await call("neighbors", "?k=6", generation);
    } finally {
      stop();
    }
    const box = $("neighbors");
    box.replaceChildren();
    for (const n of data.neighbors) {
      const img = el("img", { src: n.image, class: "pixelated", alt: `training image ${n.index}: ${n.label}` });
      box.append(el("figure", { class: "neighbor" }, img,
        el("figcaption", {}, el("strong", { text: n.label }), el("span", { text: ` distance ${n.distance.toFixed(2)}` }))));
    }
    const built = data.index_seconds > 0 ? ` (the index was built in this request: ${seconds(data.index_seconds)})` : "";
    $("neighbors-meta").textContent =
      `${data.neighbors.length} nearest of ${data.train_images.toLocaleString("en")} training images · ` +
      `${seconds(data.seconds)}${built}`;
    box.classList.remove("stale");
  }

  // ------------------------------------------------------------------ 4. occlusion

  async function occlusion(generation) {
    $("occlusion-empty").hidden = true;
    const params = new URLSearchParams();
    for (const [key, id] of [["window", "occ-window"], ["stride", "occ-stride"]]) {
      const v = $(id).value.trim();
      if (v) params.set(key, v);
    }
    const query = params.toString() ? `?${params}` : "";
    $("occ-run").disabled = true;
    const stop = busy("occlusion-busy", "Occluding the image, one window at a time…");
    let data;
    try {
      data = await call("occlusion", query, generation);
    } finally {
      stop();
      if (generation === state.generation) $("occ-run").disabled = false;
    }
    $("occ-heatmap").src = data.heatmap;
    $("occ-overlay").src = data.overlay;
    magnify($("occ-heatmap"), 224);
    magnify($("occ-overlay"), 224);
    const size = state.info.input_size;
    const box = $("occ-window-svg");
    box.setAttribute("viewBox", `0 0 ${size} ${size}`);
    box.setAttribute("preserveAspectRatio", "none");
    box.replaceChildren(
      svg("rect", { x: 0.5, y: 0.5, width: data.window - 1, height: data.window - 1, class: "win" }),
      svg("rect", { x: data.stride + 0.5, y: 0.5, width: data.window - 1, height: data.window - 1, class: "win next" }));
    $("occ-window").placeholder = String(data.window);
    $("occ-stride").placeholder = String(data.stride);
    $("occ-meta").textContent =
      `For ${data.name} (p = ${percent(data.probability)} unoccluded): window ${data.window}×${data.window} pixels, ` +
      `stride ${data.stride}, ${data.positions} positions, ${seconds(data.seconds)}.`;
    const range = Array.isArray(data.range) ? data.range : null;
    $("occ-low").textContent = range ? `p = ${percent(range[1])}` : "little effect";
    $("occ-high").textContent = range ? `p = ${percent(range[0])}` : "the largest drop";
    $("occlusion-body").hidden = false;
    $("occlusion-body").classList.remove("stale");
  }

  async function recomputeOcclusion() {
    if (!state.source) return;
    const generation = state.generation;
    try {
      await occlusion(generation);
    } catch (e) {
      if (!isAbort(e)) failed("Occlusion", e);
    }
  }

  // ------------------------------------------------------------------ 5. the run

  // Round tick values over [lo, hi]: about n of them, at 1, 2 or 5 times a power of ten.
  function ticks(lo, hi, n = 5) {
    if (!(hi > lo)) {
      const d = lo === 0 ? 1 : Math.abs(lo) * 0.1;
      lo -= d;
      hi += d;
    }
    const raw = (hi - lo) / n;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    const start = Math.floor(lo / step) * step;
    const end = Math.ceil(hi / step) * step;
    const out = [];
    for (let v = start; v <= end + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  function chart(title, series, format) {
    const W = 360, H = 210, L = 52, R = 12, T = 10, B = 30;
    const points = series.flatMap((s) => s.points);
    const figure = el("figure", { class: "chart" });
    figure.append(el("figcaption", { class: "chart-title", text: title }));
    if (!points.length) {
      figure.append(el("p", { class: "muted", text: "not measured yet" }));
      return figure;
    }
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    let x0 = Math.min(...xs), x1 = Math.max(...xs);
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    const yt = ticks(Math.min(...ys), Math.max(...ys));
    const y0 = yt[0], y1 = yt[yt.length - 1];
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img", "aria-label": title });
    for (const v of yt) {
      root.append(svg("line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v), class: "gridline" }));
      root.append(svg("text", { x: L - 6, y: sy(v) + 4, class: "tick", "text-anchor": "end" }, format(v)));
    }
    const xstep = Math.max(1, Math.ceil((x1 - x0) / 8));
    for (let x = Math.ceil(x0); x <= x1; x += xstep) {
      root.append(svg("text", { x: sx(x), y: H - B + 16, class: "tick", "text-anchor": "middle" }, String(x)));
    }
    root.append(svg("text", { x: W - R, y: H - 2, class: "tick", "text-anchor": "end" }, "epoch"));
    root.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
    root.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
    const legend = el("p", { class: "legend" });
    for (const s of series) {
      if (!s.points.length) continue;
      const d = s.points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
      root.append(svg("path", { d, class: `series ${s.cls}` }));
      for (const p of s.points) {
        const dot = svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, class: `dot ${s.cls}` });
        dot.append(svg("title", {}, `${s.name}, epoch ${p[0]}: ${format(p[1], true)}`));
        root.append(dot);
      }
      legend.append(el("span", { class: `swatch ${s.cls}` }), el("span", { text: s.name }));
    }
    figure.append(root, legend);
    return figure;
  }

  function curve(rows, key) {
    return rows
      .filter((r) => typeof r[key] === "number" && Number.isFinite(r[key]) && typeof r.epoch === "number")
      .map((r) => [r.epoch, r[key]]);
  }

  const plain = (v, exact) => (exact ? String(Number(v.toPrecision(4))) : String(Number(v.toPrecision(3))));
  const pct = (v, exact) => (exact ? `${(100 * v).toFixed(2)}%` : `${Number((100 * v).toPrecision(3))}%`);

  // 288.17 -> "4 min 48 s"
  function duration(s) {
    if (s < 60) return seconds(s);
    const m = Math.floor(s / 60);
    return m < 60 ? `${m} min ${String(Math.round(s - 60 * m)).padStart(2, "0")} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  // Draws the run; returns whether to look again in 5 s (a run directory without summary.json:
  // a run going on; a bare checkpoint has no run directory, and nothing there will change).
  function renderRun(run) {
    const rows = Array.isArray(run.metrics) ? run.metrics : [];
    const summary = run.summary;
    const going = !summary && Boolean(run.config || state.info.has_run);
    if (rows.length) {
      $("run-unavailable").hidden = true;
      $("charts").replaceChildren(
        chart("Loss", [
          { name: "training", cls: "s-train", points: curve(rows, "train_loss") },
          { name: "validation", cls: "s-val", points: curve(rows, "val_loss") },
        ], plain),
        chart("Top-1 accuracy", [
          { name: "training (augmented batches)", cls: "s-train", points: curve(rows, "train_acc") },
          { name: "validation", cls: "s-val", points: curve(rows, "val_top1") },
        ], pct),
        chart("Learning rate", [{ name: "lr at the end of the epoch", cls: "s-lr", points: curve(rows, "lr") }], plain));
    } else if (!going) {
      unavailable("run-unavailable",
        "no run directory with a metrics.csv beside this checkpoint (`alexnet train` writes one after each epoch)");
    }
    const last = rows.length ? rows[rows.length - 1] : null;
    let text = "";
    if (summary) {
      const val = summary.val && typeof summary.val.top1 === "number" ? `, validation top-1 ${pct(summary.val.top1, true)}` : "";
      const took = typeof summary.seconds === "number" ? ` in ${duration(summary.seconds)}` : "";
      text = `The run ended: ${summary.status}${val}, ${summary.epochs_done ?? rows.length} epochs${took}.`;
    } else if (going) {
      text = last ? `A run is going on (or stopped without a summary): epoch ${last.epoch} done; refreshing every 5 s.`
        : "A run is going on: no epoch finished yet; refreshing every 5 s.";
    }
    $("run-status").textContent = text;
    $("run-status").hidden = !text;
    const config = run.config || (state.info && state.info.config);
    if (config) {
      $("config-title").textContent = run.config ? "The run's configuration (config.json)"
        : "The checkpoint's configuration (no config.json beside it)";
      $("config").textContent = JSON.stringify(config, null, 2);
      $("config-box").hidden = false;
    }
    return going;
  }

  async function loadRun() {
    state.runTimer = null;
    let going = false;
    try {
      going = renderRun(await api("/api/run"));
    } catch (e) {
      failed("The run", e);
      return; // no polling after an error: reload the page to try again
    }
    if (going) state.runTimer = setTimeout(loadRun, RUN_POLL_MS);
  }

  // ------------------------------------------------------------------ input: drop, choose, paste

  function upload(file) {
    if (!file) return;
    choose({ kind: "upload", blob: file, name: file.name || "pasted image", url: URL.createObjectURL(file) });
  }

  function wireInput() {
    const drop = $("drop");
    drop.addEventListener("dragenter", () => drop.classList.add("over"));
    drop.addEventListener("dragover", (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      upload(e.dataTransfer && e.dataTransfer.files[0]);
    });
    $("file").addEventListener("change", (e) => {
      upload(e.target.files[0]);
      e.target.value = ""; // the same file chosen again is a new choice
    });
    document.addEventListener("paste", (e) => {
      const file = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
      if (file) upload(file);
    });
    $("ten-crop").addEventListener("change", () => {
      if (!state.source) return;
      const generation = state.generation;
      $("prediction").classList.add("stale");
      predict(generation).catch((e) => {
        if (!isAbort(e)) failed("Predict", e);
      });
    });
    $("occ-run").addEventListener("click", recomputeOcclusion);
  }

  async function start() {
    $("message-close").addEventListener("click", clearError);
    // A file dropped anywhere else must not make the browser navigate away to it.
    for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());
    window.addEventListener("unhandledrejection", (e) => showError(`Unexpected: ${e.reason}`));
    try {
      await loadInfo();
    } catch (e) {
      failed("The model", e);
      $("model-line").textContent = "The server did not describe its model.";
      return;
    }
    wireInput(); // an image can be chosen once the model is known
    const parts = [
      loadSamples().catch((e) => failed("Samples", e)),
      loadFilters().catch((e) => failed("conv1's kernels", e)),
      loadRun(),
    ];
    await Promise.all(parts);
    document.body.dataset.ready = "1";
  }

  start();
})();
