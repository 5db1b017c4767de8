// fracfl review: keyboard and mouse for the worklist and the case view. Plain JavaScript, no build step.
// The server owns the state: every verdict is POSTed with the version the reviewer saw, and the page re-renders
// from the answer (409: someone else changed the box first; their version is shown instead of being overwritten).
"use strict";

function typing(e) {
  const t = e.target;
  return t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA");
}

function worklistPage() {
  const rows = [...document.querySelectorAll("#worklist tbody tr[data-href]")];
  const form = document.getElementById("filters");
  let at = rows.length ? 0 : -1;
  const mark = () => rows.forEach((r, i) => r.classList.toggle("selected", i === at));
  mark();
  rows.forEach((r, i) => r.addEventListener("click", () => { location.href = r.dataset.href; }));
  form.querySelectorAll("input, select").forEach(el => el.addEventListener("change", () => form.submit()));
  document.addEventListener("keydown", e => {
    if (typing(e) || e.ctrlKey || e.metaKey) return;
    if (e.key === "j" && at < rows.length - 1) { at++; mark(); }
    else if (e.key === "k" && at > 0) { at--; mark(); }
    else if (e.key === "Enter" && at >= 0) { location.href = rows[at].dataset.href; }
    else if (e.key === "u" || e.key === "g") {
      const box = form.querySelector(e.key === "u" ? "[name=unreviewed]" : "[name=disagreements]");
      box.checked = !box.checked; form.submit();
    } else return;
    e.preventDefault();
  });
}

function casePage() {
  const settings = JSON.parse(document.getElementById("case-settings").textContent);
  let state = JSON.parse(document.getElementById("case-state").textContent);
  const svg = document.getElementById("overlay");
  const img = document.getElementById("radiograph");
  const heat = document.getElementById("heatmap");
  const list = document.getElementById("boxes");
  const message = document.getElementById("message");
  const NS = "http://www.w3.org/2000/svg";
  let selected = -1;      // index into state.boxes
  let pending = null;     // {index, box: [x1, y1, x2, y2]}: moved locally, not saved yet
  let drawing = false;    // draw mode: the next drag on the image adds a box
  let drag = null;        // {mode: move|resize|draw, index, corner, start, orig}
  let advance = null;     // timer of the next case opening by itself
  let queue = Promise.resolve();

  const query = settings.query ? "?" + settings.query : "";
  const caseUrl = id => "/case/" + id + query;
  const say = (text, kind) => { message.textContent = text; message.className = "message " + (kind || ""); };

  function coords(b) { return [b.x1, b.y1, b.x2, b.y2]; }
  function shown(i) { return pending && pending.index === i ? pending.box : coords(state.boxes[i]); }

  function render() {
    svg.setAttribute("viewBox", `0 0 ${img.naturalWidth || 1} ${img.naturalHeight || 1}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.classList.toggle("drawing", drawing);
    svg.replaceChildren();
    const scale = (img.naturalWidth || 1) / Math.max(img.clientWidth, 1);
    state.boxes.forEach((b, i) => {
      const [x1, y1, x2, y2] = shown(i);
      const r = document.createElementNS(NS, "rect");
      Object.entries({x: x1, y: y1, width: x2 - x1, height: y2 - y1}).forEach(([k, v]) => r.setAttribute(k, v));
      r.setAttribute("class", `box ${b.status}${i === selected ? " selected" : ""}${pending && pending.index === i ? " pending" : ""}`);
      r.setAttribute("stroke-width", 2 * scale);
      r.dataset.index = i;
      svg.appendChild(r);
      const label = document.createElementNS(NS, "text");
      label.setAttribute("x", x1); label.setAttribute("y", Math.max(y1 - 4 * scale, 10 * scale));
      label.setAttribute("font-size", 13 * scale);
      label.setAttribute("class", "label " + b.status);
      label.textContent = `${i + 1} ${state.class_names[b.cls] || b.cls}${b.score != null ? " " + b.score.toFixed(2) : ""}`;
      svg.appendChild(label);
      if (i === selected) {
        [[x1, y1], [x2, y1], [x1, y2], [x2, y2]].forEach(([cx, cy], corner) => {
          const h = document.createElementNS(NS, "rect");
          const s = 8 * scale;
          Object.entries({x: cx - s / 2, y: cy - s / 2, width: s, height: s}).forEach(([k, v]) => h.setAttribute(k, v));
          h.setAttribute("class", "handle"); h.dataset.index = i; h.dataset.corner = corner;
          svg.appendChild(h);
        });
      }
    });
    list.replaceChildren(...state.boxes.map((b, i) => {
      const li = document.createElement("li");
      li.className = `${b.status}${i === selected ? " selected" : ""}`;
      li.dataset.index = i;
      const what = document.createElement("span");
      what.textContent = `${state.class_names[b.cls] || b.cls} ${b.score != null ? b.score.toFixed(2) : "(drawn)"} · ${b.status}`;
      li.append(what, button("confirm", "c", () => verdict("confirm", i)), button("reject", "x", () => verdict("reject", i)));
      li.addEventListener("click", e => { if (e.target === li || e.target === what) select(i); });
      return li;
    }));
    if (!state.boxes.length) {
      const li = document.createElement("li"); li.textContent = "no findings shown by the model"; list.append(li);
    }
    document.getElementById("no-fracture").classList.toggle("active", state.no_fracture);
    document.getElementById("next").disabled = state.next == null;
    document.getElementById("prev").disabled = state.previous == null;
  }

  function button(text, key, action) {
    const b = document.createElement("button");
    b.type = "button"; b.className = text;
    b.append(text + " ");
    const k = document.createElement("kbd"); k.textContent = key; b.append(k);
    b.addEventListener("click", e => { e.stopPropagation(); action(); });
    return b;
  }

  function select(i) {
    if (pending && pending.index !== i) pending = null;
    selected = state.boxes.length ? (i + state.boxes.length) % state.boxes.length : -1;
    render();
  }

  function verdict(kind, index, extra) {
    const body = Object.assign({kind}, extra || {});
    if (index != null) {
      const b = state.boxes[index];
      body.box_id = b.id; body.expected_version = b.version;
    } else if (kind !== "note") {
      body.expected_version = state.version;
    }
    queue = queue.then(() => send(body)).catch(err => say(String(err), "error"));
    return queue;
  }

  async function send(body) {
    const r = await fetch(`/api/case/${state.id}/verdict${query}`, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": settings.csrf},
      body: JSON.stringify(body),
    });
    if (r.status === 401) { location.href = "/login"; return; }
    const answer = await r.json();
    pending = null;
    if (r.status === 409) {
      state = answer.case; render();
      say(answer.detail, "conflict");
      return;
    }
    if (!r.ok) { say(answer.detail || `error ${r.status}`, "error"); return; }
    state = answer;
    say(`saved: ${body.kind}`, "ok");
    render();
    const open = state.boxes.filter(b => b.status === "proposed").length;
    if (body.kind === "no_fracture" || (open === 0 && body.kind !== "note" && body.kind !== "set_class")) nextSoon();
    else if (open) select(state.boxes.findIndex(b => b.status === "proposed"));
  }

  function nextSoon() {
    if (state.next == null) { say("All findings decided. That was the last case of this worklist.", "ok"); return; }
    const seconds = settings.advance_seconds;
    say(`All findings decided: the next case opens in ${seconds} s (any key or click stays here).`, "ok");
    advance = setTimeout(() => { location.href = caseUrl(state.next); }, seconds * 1000);
  }

  function stay() {
    if (advance) { clearTimeout(advance); advance = null; say("Staying on this case.", ""); }
  }

  function point(e) {
    const p = svg.createSVGPoint();
    p.x = e.clientX; p.y = e.clientY;
    const q = p.matrixTransform(svg.getScreenCTM().inverse());
    return [Math.max(0, Math.min(img.naturalWidth, q.x)), Math.max(0, Math.min(img.naturalHeight, q.y))];
  }

  function ordered([x1, y1, x2, y2]) {
    return [Math.min(x1, x2), Math.min(y1, y2), Math.max(x1, x2), Math.max(y1, y2)].map(v => Math.round(v * 10) / 10);
  }

  svg.addEventListener("mousedown", e => {
    stay();
    const t = e.target, at = point(e);
    if (drawing) {
      drag = {mode: "draw", start: at, box: [...at, ...at]};
    } else if (t.dataset.corner != null) {
      const i = +t.dataset.index;
      drag = {mode: "resize", index: i, corner: +t.dataset.corner, start: at, orig: shown(i)};
    } else if (t.dataset.index != null) {
      const i = +t.dataset.index;
      select(i);
      drag = {mode: "move", index: i, start: at, orig: shown(i)};
    } else return;
    e.preventDefault();
  });

  window.addEventListener("mousemove", e => {
    if (!drag) return;
    const [x, y] = point(e), [dx, dy] = [x - drag.start[0], y - drag.start[1]];
    if (drag.mode === "draw") { drag.box = [drag.start[0], drag.start[1], x, y]; drawPreview(drag.box); return; }
    const b = [...drag.orig];
    if (drag.mode === "move") { b[0] += dx; b[2] += dx; b[1] += dy; b[3] += dy; }
    else { b[drag.corner % 2 ? 2 : 0] += dx; b[drag.corner < 2 ? 1 : 3] += dy; }
    pending = {index: drag.index, box: b};
    render();
  });

  window.addEventListener("mouseup", () => {
    if (!drag) return;
    const d = drag; drag = null;
    if (d.mode === "draw") {
      drawing = false;
      const b = ordered(d.box);
      if (b[2] - b[0] >= 3 && b[3] - b[1] >= 3) verdict("add", null, {box: b, cls: 0});
      else render();
      return;
    }
    if (pending && pending.index === d.index && pending.box.some((v, k) => Math.abs(v - d.orig[k]) >= 1)) {
      saveMove();
    } else { pending = null; render(); }
  });

  function drawPreview(box) {
    render();
    const [x1, y1, x2, y2] = ordered(box);
    const r = document.createElementNS(NS, "rect");
    Object.entries({x: x1, y: y1, width: x2 - x1, height: y2 - y1}).forEach(([k, v]) => r.setAttribute(k, v));
    r.setAttribute("class", "box added pending");
    r.setAttribute("stroke-width", 2 * (img.naturalWidth || 1) / Math.max(img.clientWidth, 1));
    svg.appendChild(r);
  }

  function saveMove() {
    if (!pending) return;
    const b = ordered(pending.box);
    if (b[2] - b[0] < 1 || b[3] - b[1] < 1) { say("a box needs a width and a height", "error"); pending = null; render(); return; }
    verdict("move", pending.index, {box: b, cls: state.boxes[pending.index].cls});
  }

  function nudge(dx, dy, resize) {
    if (selected < 0) return;
    const b = [...shown(selected)];
    if (resize) { b[2] += dx; b[3] += dy; } else { b[0] += dx; b[2] += dx; b[1] += dy; b[3] += dy; }
    pending = {index: selected, box: b};
    say("moved: Enter saves, Esc undoes", "");
    render();
  }

  function setClass() {
    if (selected < 0) return;
    if (state.class_names.length < 2) { say("only one fracture type is configured", ""); return; }
    const next = (state.boxes[selected].cls + 1) % state.class_names.length;
    verdict("set_class", selected, {class_name: state.class_names[next]});
  }

  function note() {
    const text = prompt("Note on this image (no patient names or ids):");
    if (text && text.trim()) verdict("note", null, {note: text.trim()});
  }

  function toggleHeatmap() { if (heat) heat.classList.toggle("hidden"); }
  function go(id) { if (id != null) location.href = caseUrl(id); }

  document.getElementById("draw").addEventListener("click", () => { stay(); drawing = true; render(); say("drag on the image to draw the missed fracture", ""); });
  document.getElementById("no-fracture").addEventListener("click", () => { stay(); verdict("no_fracture", null); });
  document.getElementById("note").addEventListener("click", () => { stay(); note(); });
  document.getElementById("prev").addEventListener("click", () => go(state.previous));
  document.getElementById("next").addEventListener("click", () => go(state.next));
  const toggle = document.getElementById("toggle-heatmap");
  if (toggle) toggle.addEventListener("click", toggleHeatmap);
  document.addEventListener("mousedown", e => { if (!svg.contains(e.target)) stay(); });

  document.addEventListener("keydown", e => {
    if (typing(e) || e.ctrlKey || e.metaKey) return;
    stay();
    const step = e.shiftKey ? 10 : 2;
    const arrows = {ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step]};
    if (arrows[e.key]) nudge(...arrows[e.key], e.altKey);
    else if (e.key === "Tab" || e.key === "j") select(selected + (e.shiftKey ? -1 : 1));
    else if (e.key === "k") select(selected - 1);
    else if (/^[1-9]$/.test(e.key) && +e.key <= state.boxes.length) select(+e.key - 1);
    else if (e.key === "c" && selected >= 0) verdict("confirm", selected);
    else if (e.key === "x" && selected >= 0) verdict("reject", selected);
    else if (e.key === "Enter" && pending) saveMove();
    else if (e.key === "Escape") { pending = null; drawing = false; render(); }
    else if (e.key === "t") setClass();
    else if (e.key === "d") { drawing = true; render(); say("drag on the image to draw the missed fracture", ""); }
    else if (e.key === "N") verdict("no_fracture", null);
    else if (e.key === "o") note();
    else if (e.key === "h") toggleHeatmap();
    else if (e.key === "n") go(state.next);
    else if (e.key === "p") go(state.previous);
    else return;
    e.preventDefault();
  });

  const start = () => { select(Math.max(0, state.boxes.findIndex(b => b.status === "proposed"))); };
  if (img.complete && img.naturalWidth) start(); else img.addEventListener("load", start);
  window.addEventListener("resize", render);
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "worklist") worklistPage();
  if (page === "case") casePage();
});
