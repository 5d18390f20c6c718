"use strict";
// The search page: an image (dropped or chosen) or a clicked result is the query; results show
// as thumbnails with their rank, Hamming distance, label and name (full name on hover).
const $ = (id) => document.getElementById(id);

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function call(body, label) {
  setStatus("searching " + label + " …", false);
  const opts = { method: "POST", body };
  if (!(body instanceof FormData)) opts.headers = { "Content-Type": "application/json" };
  try {
    const r = await fetch("/search", opts);
    const data = await r.json();
    if (!r.ok) { setStatus("error: " + data.error, true); return; }
    show(data, label);
  } catch (e) {
    setStatus("error: " + e, true);
  }
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function card(hit, rank) {
  const c = el("div", "hit");
  c.dataset.id = hit.id;
  c.title = hit.name;
  const img = el("img");
  img.loading = "lazy";
  img.alt = hit.name;
  img.src = "/items/" + hit.id + "/image?size=160";
  img.onerror = () => img.replaceWith(el("div", "noimg", "no image"));
  const meta = el("div", "meta");
  const head = [el("b", null, "#" + rank), document.createTextNode(" · distance " + hit.distance)];
  if (hit.label) head.push(document.createTextNode(" · " + hit.label));
  meta.append(...head);
  meta.append(el("div", "name", "id " + hit.id + " · " + hit.name));
  const full = el("a", "full", "full image");
  full.href = "/items/" + hit.id + "/image";
  full.target = "_blank";
  full.rel = "noopener";
  full.onclick = (e) => e.stopPropagation();
  meta.append(full);
  c.append(img, meta);
  c.onclick = () => searchId(hit.id);
  return c;
}

function show(data, label) {
  const grid = $("grid");
  grid.replaceChildren(...data.results.map((hit, i) => card(hit, i + 1)));
  setStatus(data.results.length + " results for " + label + " in " + data.took_ms.toFixed(1) + " ms", false);
}

function searchFile(file) {
  if (!file) return;
  $("query").src = URL.createObjectURL(file);
  const fd = new FormData();
  fd.append("image", file);
  fd.append("k", $("k").value);
  call(fd, file.name);
}

function searchId(id) {
  $("file").value = "";  // the query is the clicked item now, not the file chosen before
  $("query").src = "/items/" + id + "/image?size=160";
  call(JSON.stringify({ id: id, k: Number($("k").value) }), "item " + id);
}

$("file").onchange = (e) => searchFile(e.target.files[0]);
const drop = $("drop");
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over"); searchFile(e.dataTransfer.files[0]); };

fetch("/stats").then((r) => r.json()).then((s) => {
  $("stats").textContent = s.ntotal.toLocaleString() + " items · " + s.bits + "-bit " + s.kind + " index · " + (s.backbone || "") +
    (s.image_search ? "" : " · image search off");
}).catch(() => { $("stats").textContent = ""; });
