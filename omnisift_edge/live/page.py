"""The `--view` page: one HTML document, no external assets (it must work offline on a robot).

It listens to `/events` (server-sent events) and draws each chunk's 4 frames on canvases with the
video tokens OmniSIFT dropped dimmed and the kept ones outlined (grid step g = frames 2g, 2g+1;
token g*rows*cols + r*cols + c covers the 28x28 pixels at row r, column c), the audio tokens kept,
lag and drop counters, and the answers as they stream; the form posts a question to `/ask`.
Each canvas records what it drew (`data-chunk`, `data-kept`, `data-dimmed`) for tests and apps.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>omnisift-edge watch</title>
<style>
body{font-family:system-ui,sans-serif;margin:1em;background:#111;color:#eee}
#frames canvas{margin-right:6px;border:1px solid #333;image-rendering:pixelated}
#audio span{display:inline-block;width:8px;height:14px;margin-right:1px;background:#333}
#audio span.kept{background:#3c3}
.stat{margin-right:1.5em}.answer{margin:.4em 0;padding:.4em;background:#222}
.answer .q{color:#9cf}input{width:60%}
</style></head><body>
<h3>omnisift-edge watch <small id="source"></small></h3>
<div><span class="stat">chunk <b id="chunk">-</b></span><span class="stat">processed <b id="processed">0</b></span>
<span class="stat">dropped <b id="dropped">0</b></span><span class="stat">lag <b id="lag">-</b> ms</span>
<span class="stat">kept video <b id="keptv">-</b></span><span class="stat">kept audio <b id="kepta">-</b></span></div>
<div id="frames"></div>
<div>audio tokens: <span id="audio"></span></div>
<form id="ask"><input id="question" autocomplete="off" placeholder="Ask about the stream">
<button id="send" type="submit">Ask</button></form>
<div id="notices"></div><div id="answers"></div>
<script>
let grid = [1, 1], resolution = [28, 28];
const $ = (id) => document.getElementById(id);
function canvases(n) {
  const box = $("frames");
  while (box.children.length < n) box.appendChild(document.createElement("canvas"));
  return Array.from(box.children);
}
function drawChunk(ev) {
  const [rows, cols] = grid, per = rows * cols, cell = 28;
  const scale = Math.max(1, Math.floor(240 / resolution[1]));
  const kept = new Set(ev.kept_video_index);
  (ev.frames || []).forEach((url, f) => {
    const canvas = canvases(ev.frames.length)[f], g = Math.floor(f / 2), img = new Image();
    img.onload = () => {
      canvas.width = resolution[1] * scale; canvas.height = resolution[0] * scale;
      const ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
      let k = 0, d = 0;
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
        const x = c * cell * scale, y = r * cell * scale, s = cell * scale;
        if (kept.has(g * per + r * cols + c)) { ctx.strokeStyle = "#3f3"; ctx.strokeRect(x + .5, y + .5, s - 1, s - 1); k++; }
        else { ctx.fillStyle = "rgba(0,0,0,0.65)"; ctx.fillRect(x, y, s, s); d++; }
      }
      canvas.dataset.chunk = ev.index; canvas.dataset.kept = k; canvas.dataset.dimmed = d;
    };
    img.src = url;
  });
  const audio = $("audio"); audio.innerHTML = "";
  const ka = new Set(ev.kept_audio_index);
  for (let i = 0; i < ev.audio_tokens; i++) {
    const s = document.createElement("span"); if (ka.has(i)) s.className = "kept"; audio.appendChild(s);
  }
  $("chunk").textContent = ev.index; $("processed").textContent = ev.processed;
  $("dropped").textContent = ev.dropped; $("lag").textContent = Math.round(ev.lag_ms);
  $("keptv").textContent = ev.kept_video + "/" + ev.video_tokens;
  $("kepta").textContent = ev.kept_audio + "/" + ev.audio_tokens;
}
let current = null;
function answerBox(question) {
  const box = document.createElement("div"); box.className = "answer";
  box.innerHTML = '<div class="q"></div><div class="a"></div>';
  box.querySelector(".q").textContent = "Q: " + question;
  $("answers").prepend(box); return box;
}
const source = new EventSource("/events");
source.onmessage = (msg) => {
  const ev = JSON.parse(msg.data);
  if (ev.event === "start") { grid = ev.grid; resolution = ev.resolution; $("source").textContent = ev.source; }
  else if (ev.event === "chunk") drawChunk(ev);
  else if (ev.event === "drop") $("dropped").textContent = ev.dropped;
  else if (ev.event === "asking") current = answerBox(ev.question);
  else if (ev.event === "piece" && current) current.querySelector(".a").textContent += ev.text;
  else if (ev.event === "answer") {
    const box = current || answerBox(ev.question);
    box.querySelector(".a").textContent = ev.text || "(no text)";
    box.dataset.done = "1"; box.dataset.question = ev.question;
    box.dataset.ttft = ev.ttft_ms; current = null;
  } else if (ev.event === "notice" || ev.event === "gap" || ev.event === "end") {
    const n = document.createElement("div"); n.textContent = ev.event + ": " + (ev.text || JSON.stringify(ev));
    $("notices").prepend(n);
  }
};
$("ask").onsubmit = (e) => {
  e.preventDefault();
  const q = $("question").value.trim(); if (!q) return;
  fetch("/ask", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({question: q})});
  $("question").value = "";
};
</script></body></html>
"""
