// The cdx page: paint a CelebAMask-HQ label map (class ids, not colours), then POST /v1/generate.
// The painting is a Uint8Array of class ids; the canvas only shows it in the palette's colours, and the
// mask sent is that exact colouring (a PNG the server maps back to ids), so no stroke is ever blurred.
"use strict";
const SIDE = 256;
const state = { ids: new Uint8Array(SIDE * SIDE), undo: [], cls: 1, palette: [], model: null, examples: [],
                caption: null };  // caption: the last one the page wrote itself (replaced by an example's)
window.cdxPage = state;  // for people poking at the page from the console, and for the browser test
const $ = (id) => document.getElementById(id);
const canvas = $("canvas"), ctx = canvas.getContext("2d");

function draw() {
  const img = ctx.createImageData(SIDE, SIDE);
  for (let i = 0; i < state.ids.length; i++) {
    const c = state.palette[state.ids[i]] || [0, 0, 0];
    img.data[4 * i] = c[0]; img.data[4 * i + 1] = c[1]; img.data[4 * i + 2] = c[2]; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function remember() {
  state.undo.push(state.ids.slice());
  if (state.undo.length > 50) state.undo.shift();
}

function setIds(ids) { remember(); state.ids = ids; draw(); }

function showError(message) {
  const e = $("error");
  e.textContent = message || "";
  e.hidden = !message;
  if (message) e.scrollIntoView({ block: "nearest" });
}

// the server's warnings about a request (a caption word the model never saw, ...): what `cdx run` prints
function showWarnings(lines) {
  const box = $("warnings");
  box.replaceChildren(...(lines || []).map((w) => {
    const p = document.createElement("p"); p.textContent = `warning: ${w}`; return p;
  }));
  box.hidden = !box.children.length;
}

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  let res;
  try {
    res = await fetch(path, opts);
  } catch (err) {
    throw new Error(`the server did not answer (${err.message})`);
  }
  let data = null;
  try { data = await res.json(); } catch (err) { data = null; }
  if (!res.ok) throw new Error((data && data.error) || `HTTP ${res.status}`);
  return data;
}

function decodeIds(b64) {
  const raw = atob(b64), ids = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) ids[i] = raw.charCodeAt(i);
  return ids;
}

// -- painting: a brush stamps discs along the pointer's path, fill replaces one 4-connected region
function canvasPoint(ev) {  // the cell under the pointer (the canvas is shown at any size, inside its border)
  const r = canvas.getBoundingClientRect();
  const x = (ev.clientX - r.left - canvas.clientLeft) * SIDE / canvas.clientWidth;
  const y = (ev.clientY - r.top - canvas.clientTop) * SIDE / canvas.clientHeight;
  return [Math.min(SIDE - 1, Math.max(0, Math.floor(x))), Math.min(SIDE - 1, Math.max(0, Math.floor(y)))];
}

function stamp(x, y) {
  const rad = Number($("brush").value) / 2, r2 = rad * rad;
  for (let yy = Math.max(0, Math.floor(y - rad)); yy <= Math.min(SIDE - 1, Math.ceil(y + rad)); yy++)
    for (let xx = Math.max(0, Math.floor(x - rad)); xx <= Math.min(SIDE - 1, Math.ceil(x + rad)); xx++)
      if ((xx - x) * (xx - x) + (yy - y) * (yy - y) <= r2) state.ids[yy * SIDE + xx] = state.cls;
}

function line(a, b) {
  const n = Math.max(1, Math.ceil(Math.hypot(b[0] - a[0], b[1] - a[1])));
  for (let i = 0; i <= n; i++) stamp(a[0] + (b[0] - a[0]) * i / n, a[1] + (b[1] - a[1]) * i / n);
}

function fill(x, y) {
  const from = state.ids[y * SIDE + x], to = state.cls;
  if (from === to) return;
  const stack = [y * SIDE + x];
  while (stack.length) {
    const p = stack.pop();
    if (state.ids[p] !== from) continue;
    state.ids[p] = to;
    const px = p % SIDE;
    if (px > 0) stack.push(p - 1);
    if (px < SIDE - 1) stack.push(p + 1);
    if (p >= SIDE) stack.push(p - SIDE);
    if (p < SIDE * (SIDE - 1)) stack.push(p + SIDE);
  }
}

let last = null;
canvas.addEventListener("pointerdown", (ev) => {
  const p = canvasPoint(ev);
  remember();
  if (document.querySelector("input[name=tool]:checked").value === "fill") { fill(p[0], p[1]); draw(); return; }
  canvas.setPointerCapture(ev.pointerId);
  last = p; stamp(p[0], p[1]); draw();
});
canvas.addEventListener("pointermove", (ev) => {
  if (!last) return;
  const p = canvasPoint(ev);
  line(last, p); last = p; draw();
});
for (const t of ["pointerup", "pointercancel"]) canvas.addEventListener(t, () => { last = null; });

$("brush").addEventListener("input", () => { $("brush-size").textContent = $("brush").value; });
$("undo").addEventListener("click", () => { if (state.undo.length) { state.ids = state.undo.pop(); draw(); } });
$("clear").addEventListener("click", () => setIds(new Uint8Array(SIDE * SIDE)));

function buildPalette(classes) {
  const box = $("palette");
  state.palette = classes.map((c) => c.color);
  for (const c of classes) {
    const b = document.createElement("button");
    b.type = "button"; b.dataset.cls = c.id; b.setAttribute("role", "radio");
    b.setAttribute("aria-checked", String(c.id === state.cls));
    b.title = `${c.name}: CelebAMask-HQ class ${c.id}`;  // the official code, as in the masks and the API
    const swatch = document.createElement("span");
    swatch.className = "swatch"; swatch.style.background = `rgb(${c.color.join(",")})`;
    b.append(swatch, c.label || c.name);
    b.addEventListener("click", () => {
      state.cls = c.id;
      for (const o of box.children) o.setAttribute("aria-checked", String(o === b));
    });
    box.appendChild(b);
  }
}

// -- loading a mask: the server reads it (the same reader as /v1/generate) and returns its class ids
function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result).split(",")[1] || "");
    r.onerror = () => reject(new Error(`cannot read ${file.name}`));
    r.readAsDataURL(file);
  });
}

$("file").addEventListener("change", async () => {
  const file = $("file").files[0];
  if (!file) return;
  try {
    const out = await api("/v1/label-map", { mask: await fileBase64(file), side: SIDE });
    setIds(decodeIds(out.ids)); showError("");
  } catch (err) { showError(`${file.name}: ${err.message}`); }
});

// an example brings its caption, unless the caption is the user's own
function useExample(ex, first) {
  if (first) state.ids = decodeIds(ex.ids); else setIds(decodeIds(ex.ids));
  $("examples").value = ex.name;
  const text = $("text");
  if (ex.caption && text.value === state.caption) { text.value = ex.caption; state.caption = ex.caption; }
}

$("examples").addEventListener("change", () => {
  const ex = state.examples.find((e) => e.name === $("examples").value);
  if (ex) useExample(ex, false);
});

// -- generating
// the faces, and the status and warnings under them, into view (in one column they are below the palette)
function reveal() {
  const out = $("output");
  if (out.getBoundingClientRect().height <= document.documentElement.clientHeight) out.scrollIntoView({ block: "nearest" });
  else $("results").scrollIntoView({ block: "start" });
}

function maskPng() {
  draw();  // the canvas holds exactly the palette colours of state.ids
  return canvas.toDataURL("image/png").split(",")[1];
}

function number(id) { const v = $(id).value.trim(); return v === "" || isNaN(Number(v)) ? v : Number(v); }

$("generate").addEventListener("click", async () => {
  const body = { seed: number("seed"), steps: number("steps"), batch: number("batch"), fast: $("fast").checked,
                 return_influence: $("influence").checked };
  if ($("use-text").checked) body.text = $("text").value;
  if ($("use-mask").checked) body.mask = maskPng();
  showError(""); showWarnings([]); $("generate").disabled = true; $("status").textContent = "generating...";
  const t0 = performance.now();
  try {
    const out = await api("/v1/generate", body);
    const results = $("results");
    results.replaceChildren();
    out.images.forEach((png, i) => {
      const img = document.createElement("img");
      img.src = `data:image/png;base64,${png}`; img.alt = `face, seed ${out.seeds[i]}`; img.title = `seed ${out.seeds[i]}`;
      results.appendChild(img);
    });
    showWarnings(out.warnings);
    const fig = $("influence-figure");
    fig.hidden = !out.influence;
    if (out.influence) { $("influence-img").src = `data:image/png;base64,${out.influence}`; zoom(false); }
    const t = out.timings;
    $("status").textContent = `${out.images.length} image(s), seeds ${out.seeds.join(", ")}, ${out.modalities.join(" + ")}; ` +
      `${Math.round(performance.now() - t0)} ms (queue ${Math.round(t.queue_ms)}, denoise ${Math.round(t.loop_ms)}, ` +
      `batched with ${out.call_images - out.images.length} other image(s))`;
    reveal();
  } catch (err) {
    $("status").textContent = ""; showError(err.message);
  } finally { $("generate").disabled = false; }
});

// the influence grid at its own size (its t labels readable; it scrolls sideways), or twice that
function zoom(on) {
  const img = $("influence-img");
  img.classList.toggle("zoomed", on);
  img.style.width = on && img.naturalWidth ? `${2 * img.naturalWidth}px` : "";
  $("zoom").setAttribute("aria-pressed", String(on)); $("zoom").textContent = on ? "zoom out" : "zoom in";
}
$("zoom").addEventListener("click", () => zoom(!$("influence-img").classList.contains("zoomed")));
$("influence-img").addEventListener("click", () => zoom(!$("influence-img").classList.contains("zoomed")));

async function start() {
  try {
    const model = await api("/v1/model");
    state.model = model;
    buildPalette(model.classes);
    $("backend").textContent = model.backend_label || "";  // never the server's folders
    $("steps").value = Math.min(model.defaults.steps, model.limits.max_steps);
    state.examples = await api("/v1/examples");
    for (const ex of state.examples) {
      const o = document.createElement("option"); o.value = ex.name; o.textContent = ex.name; $("examples").appendChild(o);
    }
    state.caption = $("text").value;  // the page's own until the user types
    const first = state.examples.find((e) => e.default) || state.examples[0];
    if (first) useExample(first, true);
    draw();
    document.body.dataset.ready = "1";
  } catch (err) { showError(`the server is not ready: ${err.message}`); }
}
start();
