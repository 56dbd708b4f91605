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
let strokes = []; // each a list of [x, y] in canvas pixels
let current = null;
let timer = null;
let sequence = 0; // answers to older requests are ignored

const DATASET_NAMES = { mnist: "MNIST", "fashion-mnist": "Fashion-MNIST", kmnist: "Kuzushiji-MNIST" };

function setup(model) {
  classes = model.classes;
  const dataset = DATASET_NAMES[model.dataset] || model.dataset;
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
  ctx.lineWidth = INK_WIDTH * pad.width;
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

pad.addEventListener("pointerdown", (e) => {
  if (e.button !== 0 && e.pointerType === "mouse") return;
  e.preventDefault();
  pad.setPointerCapture(e.pointerId);
  current = [point(e)];
  strokes.push(current);
  redraw();
  schedule();
});
pad.addEventListener("pointermove", (e) => {
  if (!current) return;
  e.preventDefault();
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
  for (const ev of events.length ? events : [e]) current.push(point(ev));
  redraw();
  schedule();
});
function endStroke() {
  if (!current) return;
  current = null;
  predictNow();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(predictNow, DEBOUNCE_MS);
}

function predictNow() {
  clearTimeout(timer);
  if (!strokes.length) return;
  pad.toBlob((blob) => send(blob, "drawing.png"), "image/png");
}

async function send(blob, name) {
  const id = ++sequence;
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const response = await fetch(`/v1/predict?image=true&top_k=${classes.length || 10}`, { method: "POST", body: form });
    const body = await response.json();
    if (id !== sequence) return;
    if (!response.ok) throw new Error(body.error || response.statusText);
    show(body);
  } catch (err) {
    if (id !== sequence) return;
    errorEl.textContent = String(err.message || err);
  }
}

function show(record) {
  errorEl.textContent = "";
  labelEl.textContent = record.class;
  labelEl.classList.toggle("long", record.class.length > 2);
  verdictEl.textContent = `It looks like ${/^\d$/.test(record.class) ? "a " : ""}${record.class}`;
  confidenceEl.textContent = `${(100 * record.probability).toFixed(1)}% sure`;
  badge.textContent = `${record.class} · ${(100 * record.probability).toFixed(0)}%`;
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
}

function reset() {
  sequence++;
  labelEl.textContent = "?";
  labelEl.classList.remove("long");
  verdictEl.textContent = "Draw a digit";
  confidenceEl.textContent = "";
  badge.textContent = "";
  errorEl.textContent = "";
  bars.querySelectorAll("li").forEach((li) => {
    li.classList.remove("top");
    li.querySelector(".fill").style.width = "0";
    li.querySelector(".pct").textContent = "–";
  });
  seenCtx.clearRect(0, 0, 28, 28);
  delete document.body.dataset.predicted;
}

function undo() {
  strokes.pop();
  redraw();
  if (strokes.length) predictNow(); else reset();
}

function clear() {
  strokes = [];
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
  const img = new Image();
  img.onload = () => { // show the photo on the pad, scaled to fit
    const s = Math.min(pad.width / img.width, pad.height / img.height);
    ctx.drawImage(img, (pad.width - img.width * s) / 2, (pad.height - img.height * s) / 2, img.width * s, img.height * s);
    URL.revokeObjectURL(img.src);
  };
  img.src = URL.createObjectURL(file);
  hint.classList.add("gone");
  send(file, file.name);
  e.target.value = "";
});
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { e.preventDefault(); undo(); }
  else if (e.key === "Escape") { clear(); }
});

redraw();
fetch("/v1/model").then((r) => r.json()).then(setup).catch((err) => {
  errorEl.textContent = `cannot reach the model (${err.message})`;
});
