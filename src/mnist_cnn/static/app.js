// The drawing page: strokes on a canvas, sent (debounced) to POST /v1/predict as a PNG.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen");
const seenCtx = seen.getContext("2d");
const bars = document.getElementById("bars");
const labelEl = document.getElementById("label");
const verdictEl = document.getElementById("verdict");
const confidenceEl = document.getElementById("confidence");
const errorEl = document.getElementById("error");
const hint = document.getElementById("hint");
const badge = document.getElementById("badge"); // the answer on the pad itself, for small screens

const INK_WIDTH = 0.075; // of the canvas side: about MNIST's stroke once the digit fills 20 of 28 pixels
const DEBOUNCE_MS = 120;
let classes = [];
let work = 0; // debounce timers, PNG encodings and requests not finished yet
let timerSet = false;
function busy(change) {
  work += change;
  document.body.dataset.busy = work; // lets tests wait for answers instead of guessing
}
let featureSequence = 0;
let hasFeatures = false;
const inside = document.getElementById("inside");
const stagesEl = document.getElementById("stages");
let strokes = []; // each a list of [x, y] in canvas pixels
let current = null;
let timer = null;
let sequence = 0; // answers to older requests are ignored

const DATASET_NAMES = { mnist: "MNIST", "fashion-mnist": "Fashion-MNIST", kmnist: "Kuzushiji-MNIST" };
const WHAT_TO_DRAW = { mnist: "a digit", "fashion-mnist": "a piece of clothing", kmnist: "a hiragana character" };

function setup(model) {
  classes = model.classes;
  hasFeatures = Boolean(model.features);
  const dataset = DATASET_NAMES[model.dataset] || model.dataset;
  const what = WHAT_TO_DRAW[model.dataset] || "something";
  document.querySelector("h1").firstChild.textContent = `Draw ${what} `;
  document.title = `mnist-cnn · draw ${what}`;
  if (model.dataset === "fashion-mnist") {
    document.getElementById("seen-how").textContent = "Your drawing after Fashion-MNIST's own " +
      "preprocessing: the item's longest edge scaled to 28 pixels, centred, white on black.";
  }
  verdictEl.textContent = `Draw ${what}`;
  // one column width for every class name, so the bars line up
  bars.style.setProperty("--name-width", `${Math.max(...classes.map((c) => c.length), 2) * 0.62 + 0.6}em`);
  const acc = model.test_accuracy == null ? "" : `, ${(100 * model.test_accuracy).toFixed(2)}% on its test set`;
  document.getElementById("model-line").textContent =
    `${model.architecture} trained on ${dataset}${acc} · ${model.parameters ? model.parameters.toLocaleString("en") + " parameters · " : ""}${model.runtime}`;
  bars.innerHTML = "";
  classes.forEach((name, i) => {
    const li = document.createElement("li");
    li.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="pct">–</span>';
    li.querySelector(".name").textContent = name;
    li.dataset.label = i;
    bars.appendChild(li);
  });
}

function redraw() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = "#111";
  ctx.fillStyle = "#111";
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.lineWidth = INK_WIDTH * pad.height; // the pad's height: a digit's size in both modes
  for (const s of strokes) {
    if (s.length === 1) {
      ctx.beginPath();
      ctx.arc(s[0][0], s[0][1], ctx.lineWidth / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.beginPath();
    ctx.moveTo(s[0][0], s[0][1]);
    for (let i = 1; i < s.length - 1; i++) { // smooth: quadratic curves through midpoints
      const mx = (s[i][0] + s[i + 1][0]) / 2, my = (s[i][1] + s[i + 1][1]) / 2;
      ctx.quadraticCurveTo(s[i][0], s[i][1], mx, my);
    }
    const last = s[s.length - 1];
    ctx.lineTo(last[0], last[1]);
    ctx.stroke();
  }
  hint.classList.toggle("gone", strokes.length > 0);
}

function point(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}

let activePointer = null; // one finger or pen draws; a second touch is ignored
pad.addEventListener("pointerdown", (e) => {
  if (e.button !== 0 && e.pointerType === "mouse") return;
  if (activePointer !== null) return;
  activePointer = e.pointerId;
  e.preventDefault();
  pad.setPointerCapture(e.pointerId);
  current = [point(e)];
  strokes.push(current);
  redraw();
  schedule();
});
pad.addEventListener("pointermove", (e) => {
  if (!current || e.pointerId !== activePointer) return;
  e.preventDefault();
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
  for (const ev of events.length ? events : [e]) current.push(point(ev));
  redraw();
  schedule();
});
function endStroke(e) {
  if (!current || e.pointerId !== activePointer) return;
  current = null;
  activePointer = null;
  predictNow();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function schedule() {
  clearTimeout(timer);
  if (!timerSet) { timerSet = true; busy(1); }
  timer = setTimeout(predictNow, DEBOUNCE_MS);
}

function predictNow() {
  clearTimeout(timer);
  if (timerSet) { timerSet = false; busy(-1); }
  if (!strokes.length) return;
  // Numbered now, not when the PNG is ready: a Clear or Undo while it encodes must win.
  const id = ++sequence;
  const fid = ++featureSequence;
  busy(1);
  pad.toBlob((blob) => {
    if (id === sequence && mode === "number") {
      sendRead(blob, "drawing.png", id);
    } else if (id === sequence) {
      send(blob, "drawing.png", id);
      sendFeatures(blob, fid);
    }
    busy(-1);
  }, "image/png");
}

// A dark-to-bright colour ramp (black, purple, orange, pale yellow) for activations 0..255.
const RAMP = [[0, 0, 0], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]];
const LUT = Array.from({ length: 256 }, (_, v) => {
  const t = v / 255 * (RAMP.length - 1), i = Math.min(Math.floor(t), RAMP.length - 2), f = t - i;
  return RAMP[i].map((c, k) => Math.round(c + (RAMP[i + 1][k] - c) * f));
});

async function sendFeatures(blob, id = ++featureSequence) {
  if (!hasFeatures || id !== featureSequence) return;
  const form = new FormData();
  form.append("file", blob, "drawing.png");
  try {
    const response = await fetch(`/v1/features${asDrawn() ? "?as_drawn=true" : ""}`, { method: "POST", body: form });
    if (!response.ok || id !== featureSequence) return;
    showFeatures((await response.json()).stages);
  } catch (err) { /* the answer itself already reports errors */ }
}

function showFeatures(stages) {
  inside.hidden = false;
  stages.forEach((stage, s) => {
    let box = stagesEl.children[s];
    if (!box) {
      box = document.createElement("div");
      box.className = "stage";
      box.innerHTML = "<h3></h3><div class=maps></div>";
      stagesEl.appendChild(box);
    }
    const [total, h, w] = stage.shape;
    box.querySelector("h3").textContent =
      `${stage.name}: ${stage.channels.length === total ? "all " + total : stage.channels.length + " most active of " + total} maps, ${h}×${w}`;
    const grid = box.querySelector(".maps");
    stage.maps.forEach((map, m) => {
      let canvas = grid.children[m];
      if (!canvas) {
        canvas = document.createElement("canvas");
        grid.appendChild(canvas);
      }
      canvas.width = w; canvas.height = h;
      canvas.title = `channel ${stage.channels[m]}`;
      const g = canvas.getContext("2d");
      const data = g.createImageData(w, h);
      map.flat().forEach((v, i) => data.data.set([...LUT[v], 255], 4 * i));
      g.putImageData(data, 0, 0);
    });
  });
}

async function send(blob, name, id = ++sequence) {
  busy(1);
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const response = await fetch(`/v1/predict?image=true&top_k=${classes.length || 10}${asDrawn() ? "&as_drawn=true" : ""}`, { method: "POST", body: form });
    const body = await response.json();
    if (id !== sequence) return;
    if (!response.ok) throw new Error(body.error || response.statusText);
    show(body);
  } catch (err) {
    if (id !== sequence) return;
    reset(false); // no answer on screen that is not for what is on the pad
    errorEl.textContent = String(err.message || err);
  } finally {
    busy(-1);
  }
}

function show(record) {
  errorEl.textContent = "";
  labelEl.textContent = record.class;
  labelEl.classList.toggle("long", record.class.length > 2);
  const article = /^\d$/.test(record.class) ? "a " : "";
  const second = record.top_k[1];
  // the model is unsure (calibrated on real handwriting): say so, and name the runner-up
  verdictEl.textContent = record.unsure
    ? `Not sure: perhaps ${article}${record.class}${second ? ` or ${second.class}` : ""}`
    : `It looks like ${article}${record.class}`;
  confidenceEl.textContent = `${(100 * record.probability).toFixed(1)}% ${record.unsure ? "(unsure)" : "sure"}`;
  verdictEl.classList.toggle("unsure", Boolean(record.unsure));
  badge.textContent = `${record.class}${record.unsure ? "?" : ""} · ${(100 * record.probability).toFixed(0)}%`;
  const probs = new Array(classes.length).fill(0);
  for (const t of record.top_k) probs[t.label] = t.probability;
  bars.querySelectorAll("li").forEach((li, i) => {
    li.classList.toggle("top", i === record.label);
    li.querySelector(".fill").style.width = `${(100 * probs[i]).toFixed(1)}%`;
    li.querySelector(".pct").textContent = `${(100 * probs[i]).toFixed(1)}%`;
  });
  if (record.image) {
    const data = seenCtx.createImageData(28, 28);
    record.image.flat().forEach((v, i) => {
      data.data.set([v, v, v, 255], 4 * i);
    });
    seenCtx.putImageData(data, 0, 0);
  }
  document.body.dataset.predicted = record.class; // for tests and screen readers' sake
  document.body.dataset.unsure = String(Boolean(record.unsure));
}

function reset(cancel = true) {
  if (cancel) sequence++;
  labelEl.textContent = "?";
  labelEl.classList.remove("long");
  verdictEl.textContent = document.querySelector("h1").firstChild.textContent.trim();
  confidenceEl.textContent = "";
  verdictEl.classList.remove("unsure");
  badge.textContent = "";
  errorEl.textContent = "";
  bars.querySelectorAll("li").forEach((li) => {
    li.classList.remove("top");
    li.querySelector(".fill").style.width = "0";
    li.querySelector(".pct").textContent = "–";
  });
  seenCtx.clearRect(0, 0, 28, 28);
  boxesCtx.clearRect(0, 0, boxes.width, boxes.height);
  featureSequence++;
  stagesEl.querySelectorAll("canvas").forEach((c) => c.getContext("2d").clearRect(0, 0, c.width, c.height));
  delete document.body.dataset.predicted;
  delete document.body.dataset.unsure;
  delete document.body.dataset.boxes;
}

function undo() {
  strokes.pop();
  redraw();
  if (strokes.length) predictNow(); else reset();
}

function clear() {
  strokes = [];
  moved = [0, 0];
  showMoved();
  redraw();
  reset();
}

document.getElementById("undo").addEventListener("click", undo);
document.getElementById("clear").addEventListener("click", clear);
document.getElementById("upload").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (!file) return;
  strokes = [];
  redraw();
  view = { s: 0, dx: 0, dy: 0 }; // boxes wait for the preview's scale
  const img = new Image();
  img.onload = () => { // show the photo on the pad, scaled to fit
    const s = Math.min(pad.width / img.width, pad.height / img.height);
    view = { s, dx: (pad.width - img.width * s) / 2, dy: (pad.height - img.height * s) / 2 };
    ctx.drawImage(img, view.dx, view.dy, img.width * s, img.height * s);
    URL.revokeObjectURL(img.src);
  };
  img.onerror = () => { // the browser cannot show it (TIFF...): the server may still read it
    URL.revokeObjectURL(img.src);
    ctx.fillStyle = "#888";
    ctx.font = "16px system-ui, sans-serif";
    ctx.fillText(`${file.name}: no preview`, 12, 28);
  };
  img.src = URL.createObjectURL(file);
  hint.classList.add("gone");
  if (mode === "number") {
    sendRead(file, file.name);
    return;
  }
  send(file, file.name);
  sendFeatures(file);
  e.target.value = "";
});
// "As drawn": the model gets the whole pad shrunk to 28x28 (?as_drawn=true), not the digit boxed
// and centred, so a learner can move a digit and watch the answer and the feature maps follow
// it (equivariance) or fail (the limits of invariance).
const asDrawnBox = document.getElementById("as-drawn");
const moveTools = document.getElementById("move");
const guide = document.getElementById("guide");
const seenHow = document.getElementById("seen-how");
const STEP = pad.width / 28; // one pixel of the model's input, in canvas pixels
const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
let moved = [0, 0];
let seenHowCentred = null;
function asDrawn() { return asDrawnBox.checked; }
function showMoved() {
  const [dx, dy] = moved;
  const say = (v, plus, minus) => (v ? `${Math.abs(v)} ${v > 0 ? plus : minus}` : "");
  const parts = [say(dx, "right", "left"), say(dy, "down", "up")].filter(Boolean);
  document.getElementById("offset").textContent = parts.length ? `moved ${parts.join(", ")}` : "";
}
function moveDrawing(dx, dy) {
  if (!strokes.length) return;
  for (const s of strokes) for (const p of s) { p[0] += dx * STEP; p[1] += dy * STEP; }
  moved = [moved[0] + dx, moved[1] + dy];
  showMoved();
  redraw();
  predictNow();
}
asDrawnBox.addEventListener("change", () => {
  moveTools.hidden = guide.hidden = !asDrawn();
  if (seenHowCentred === null) seenHowCentred = seenHow.textContent;
  seenHow.textContent = asDrawn() ? "Your drawing as drawn: the whole pad shrunk to 28×28, " +
    "white on black, nothing moved or scaled." : seenHowCentred;
  if (strokes.length) predictNow();
});
moveTools.querySelectorAll("button[data-move]").forEach((b) => b.addEventListener("click", () => {
  const [dx, dy] = b.dataset.move.split(",").map(Number);
  moveDrawing(dx, dy);
}));
document.addEventListener("keydown", (e) => {
  if (asDrawn() && ARROWS[e.key] && strokes.length && !e.altKey && !e.ctrlKey && !e.metaKey) {
    e.preventDefault(); // the page does not scroll: the digit moves
    moveDrawing(...ARROWS[e.key]);
  }
});
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { e.preventDefault(); undo(); }
  else if (e.key === "Escape") { clear(); }
});

// Number mode: a wide pad, POST /v1/read, the digits' boxes drawn over the pad.
const boxes = document.getElementById("boxes");
const boxesCtx = boxes.getContext("2d");
const PAD_SIDE = 280;
let mode = "digit";
let view = { s: 1, dx: 0, dy: 0 }; // image pixels -> pad pixels (an upload is scaled to fit)

function setMode(next) {
  mode = next;
  document.body.classList.toggle("number-mode", mode === "number");
  for (const m of ["digit", "number"]) {
    document.getElementById(`mode-${m}`).setAttribute("aria-pressed", String(m === mode));
  }
  pad.width = boxes.width = mode === "number" ? 3 * PAD_SIDE : PAD_SIDE;
  pad.height = boxes.height = PAD_SIDE;
  hint.textContent = mode === "number" ? "write a number here" : "draw here";
  clear();
}

async function sendRead(blob, name, id = ++sequence) {
  busy(1);
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const response = await fetch("/v1/read", { method: "POST", body: form });
    const body = await response.json();
    if (id !== sequence) return;
    if (!response.ok) throw new Error(body.error || response.statusText);
    showNumber(body);
  } catch (err) {
    if (id !== sequence) return;
    reset(false);
    errorEl.textContent = String(err.message || err);
  } finally {
    busy(-1);
  }
}

function showNumber(record) {
  errorEl.textContent = "";
  labelEl.textContent = record.number;
  labelEl.classList.toggle("long", record.number.length > 2);
  verdictEl.textContent = `It reads ${record.number}`;
  const each = record.digits.map((d) => `${d.label} ${(100 * d.probability).toFixed(0)}%`).join(" · ");
  confidenceEl.textContent = `${(100 * record.probability).toFixed(1)}% sure (${each})`;
  badge.textContent = record.number;
  boxesCtx.clearRect(0, 0, boxes.width, boxes.height);
  boxesCtx.lineWidth = 2;
  boxesCtx.strokeStyle = boxesCtx.fillStyle = "#3d5afe";
  boxesCtx.font = "bold 16px system-ui, sans-serif";
  for (const d of record.digits) {
    const [x0, y0, x1, y1] = d.box.map((v, i) => v * view.s + (i % 2 ? view.dy : view.dx));
    boxesCtx.strokeRect(x0 - 3, y0 - 3, x1 - x0 + 6, y1 - y0 + 6);
    boxesCtx.fillText(String(d.label), x0 - 3, Math.max(14, y0 - 7));
  }
  document.body.dataset.boxes = record.digits.length;
  document.body.dataset.predicted = record.number;
}

document.getElementById("mode-digit").addEventListener("click", () => setMode("digit"));
document.getElementById("mode-number").addEventListener("click", () => setMode("number"));
pad.addEventListener("pointerdown", () => { view = { s: 1, dx: 0, dy: 0 }; }, true);

redraw();
busy(0);
fetch("/v1/model").then((r) => r.json()).then(setup).catch((err) => {
  errorEl.textContent = `cannot reach the model (${err.message})`;
});
