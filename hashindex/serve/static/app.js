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

// An item's thumbnail (lazy); "no image" in its place when the server has none to give.
function thumb(item, size) {
  const img = el("img");
  img.loading = "lazy";
  img.alt = item.name;
  img.src = "/items/" + item.id + "/image?size=" + size;
  img.onerror = () => img.replaceWith(el("div", "noimg", "no image"));
  return img;
}

function card(hit, rank) {
  const c = el("div", "hit");
  c.dataset.id = hit.id;
  c.title = hit.name;
  const img = thumb(hit, 160);
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

// Near-duplicates: the groups of the index, each item with its distance to the item kept; with
// writes enabled (and the token), "keep" removes the others of its group.
let writes = false;

function member(item, group) {
  const m = el("div", "member" + (item.keep ? " kept" : ""));
  m.dataset.id = item.id;
  m.title = item.name;
  const img = thumb(item, 128);
  const text = item.keep ? "kept" : "hamming " + item.hamming + (item.cosine === null ? "" : " · cos " + item.cosine.toFixed(3)) +
    (item.pixels === null ? "" : " · pixels " + item.pixels.toFixed(3));
  m.append(img, el("div", "name", "id " + item.id + " · " + item.name), el("div", null, text));
  if (writes) {
    const b = el("button", null, "keep");
    b.onclick = () => keep(item.id, group.items.map((i) => i.id).filter((i) => i !== item.id));
    m.append(b);
  }
  return m;
}

async function keep(id, others) {
  const r = await fetch("/duplicates/keep", {
    method: "POST",
    headers: { "Content-Type": "application/json", "Authorization": "Bearer " + $("token").value },
    body: JSON.stringify({ keep: id, remove: others }),
  });
  const data = await r.json();
  if (!r.ok) { setStatus("error: " + data.error, true); return; }
  setStatus("kept item " + id + ", removed " + data.removed.length, false);
  loadGroups();
}

async function loadGroups() {
  $("dups-info").textContent = "finding near-duplicates …";
  const r = await fetch("/duplicates");
  const data = await r.json();
  if (!r.ok) { $("dups-info").textContent = "error: " + data.error; return; }
  $("dups-info").textContent = data.groups.length + " groups of near-duplicates (Hamming radius " + data.radius_bits +
    ", cosine >= " + data.min_cosine + (data.min_pixels === null ? "" : " or pixels >= " + data.min_pixels) + ")";
  $("groups").replaceChildren(...data.groups.map((g) => {
    const box = el("div", "group");
    box.dataset.group = g.group;
    box.append(...g.items.map((item) => member(item, g)));
    return box;
  }));
}

function view(which) {
  const dups = which === "dups";
  $("dups").hidden = !dups;
  for (const id of ["drop", "grid", "status"]) $(id).hidden = dups;
  if (dups) loadGroups();
}

$("show-dups").onclick = (e) => { e.preventDefault(); view("dups"); };
$("show-search").onclick = (e) => { e.preventDefault(); view("search"); };

fetch("/stats").then((r) => r.json()).then((s) => {
  writes = s.writes;
  $("writes").hidden = !s.writes;
  $("stats").textContent = s.ntotal.toLocaleString() + " items · " + s.bits + "-bit " + s.kind + " index · " + (s.backbone || "") +
    (s.image_search ? "" : " · image search off");
}).catch(() => { $("stats").textContent = ""; });
