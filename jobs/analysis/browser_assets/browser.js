// The feature browser's pages (jobs/analysis/browser.py writes the data). No network, no server: data
// files are scripts that call BROWSER.put(key, value), loaded with <script> tags, because a
// browser refuses fetch() on file:// URLs.
"use strict";
const BROWSER = (() => {
  const store = {}, waiting = {};
  const put = (key, value) => { store[key] = value; (waiting[key] || []).forEach(f => f(value)); };
  const load = (key, file) => store[key] !== undefined ? Promise.resolve(store[key]) :
    new Promise((resolve, reject) => {
      (waiting[key] = waiting[key] || []).push(resolve);
      const s = document.createElement("script");
      s.src = "data/" + file + ".js";
      s.onerror = () => reject(new Error("missing data file " + s.src));
      s.onload = () => { if (store[key] === undefined) reject(new Error(s.src + " holds no " + key)); };
      document.head.appendChild(s);
    });
  return { put, load };
})();

const $ = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v; else if (k.startsWith("on")) e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};
const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs = {}) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};
const params = () => Object.fromEntries(location.hash.slice(1).split("&").filter(Boolean)
  .map(p => p.split("=").map(decodeURIComponent)));
const fmt = x => x === null || x === undefined ? "–" : (Math.abs(x) >= 1e4 || (x !== 0 &&
  Math.abs(x) < 1e-3) ? x.toExponential(2) : +x.toPrecision(4)).toString();
const show = t => t.replace(/\n/g, "↵").replace(/\r/g, "␍").replace(/\t/g, "⇥")
  .replace(/ /g, "·");  // whitespace made visible
const link = (page, args) => "index.html#" + [["page", page], ...Object.entries(args)]
  .map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");
const featureLink = (cell, f) => link("feature", { cell, f });
const main = () => document.getElementById("main");

// A bar chart of `counts`, equal bins over [lo, hi], as inline SVG.
function bars(counts, lo, hi, label) {
  const W = 520, H = 140, P = 30, n = counts.length, v = counts, top = Math.max(1e-9, ...v);
  const g = svg("svg", { width: W, height: H + 20, class: "chart", role: "img" });
  v.forEach((c, i) => {
    const h = (H - 10) * c / top;
    const r = svg("rect", { x: P + i * (W - P) / n, y: H - h, width: Math.max(1, (W - P) / n - 1),
      height: h, class: "bar" });
    const t = svg("title");
    t.textContent = `${fmt(lo + (hi - lo) * i / n)} – ${fmt(lo + (hi - lo) * (i + 1) / n)}: ${counts[i]}`;
    r.append(t); g.append(r);
  });
  for (const [x, s, a] of [[P, fmt(lo), "start"], [W, fmt(hi), "end"]]) {
    const t = svg("text", { x, y: H + 14, "text-anchor": a, class: "axis" });
    t.textContent = s; g.append(t);
  }
  const t = svg("text", { x: (P + W) / 2, y: H + 14, "text-anchor": "middle", class: "axis" });
  t.textContent = label; g.append(t);
  return g;
}

// The auto-interp step's scores (jobs/report/autointerp.py): per dictionary, and per feature
// of a scored dictionary; {} and null where it has not run.
const aiSummary = () => BROWSER.load("autointerp", "autointerp");
const aiFeatures = async cell => (await aiSummary())[cell] ?
  BROWSER.load(`autointerp/${cell}`, `autointerp-${cell}`) : null;
// The evaluation step's columns (jobs/report/evals.py): cell -> {column: value}; {} before it.
const evSummary = () => BROWSER.load("evals", "evals").catch(() => ({}));
const aiFirst = scores => { const k = Object.keys(scores || {})[0]; return k ? scores[k][0] : null; };
const aiText = scores => Object.entries(scores || {}).map(([k, [m, lo, hi]]) =>
  `${k} ${fmt(m)} [${fmt(lo)}, ${fmt(hi)}]`).join(" · ");

async function indexPage() {
  const d = await BROWSER.load("index", "index");
  const [ai, ev] = [await aiSummary(), await evSummary()];
  document.title = `${d.grid}: feature browser`;
  const m = main();
  m.append($("h1", { text: `Grid ${d.grid}` }));
  if (d.headline) m.append($("pre", { class: "headline", text: d.headline }));
  const plots = $("div", { class: "plots" });
  for (const p of d.plots) plots.append($("a", { href: p }, $("img", { src: p, alt: p })));
  m.append($("h2", { text: "Plots" }), plots, $("h2", { text: "Dictionaries" }));
  m.append(table(d.cells, [
    ["cell", c => $("a", { href: link("dictionary", { cell: c.id }), text: c.id }), c => c.id],
    ["setting", c => c.setting], ["layer", c => c.layer], ["λ", c => c.lam], ["seed", c => c.seed],
    ["L0", c => c.l0], ["CE loss increase", c => c.ce_loss_increase], ["alive", c => c.alive],
    ["elements", c => c.n_dict], ["feature pages", c => c.pages],
    ["auto-interp", c => ai[c.id] ? aiFirst(ai[c.id].scores) : null],
    ["SAEBench CE score", c => (ev[c.id] || {}).saebench_ce_loss_score],
    ["probing top-1", c => (ev[c.id] || {}).probing_sae_top_1_acc],
    ["absorption", c => (ev[c.id] || {}).absorption_fraction],
    ["clusters", c => clusterLinks(c), c => (c.clusters || []).length]], 1000));
}

function clusterLinks(c) {
  const s = $("span");
  for (const k of c.clusters || [])
    s.append($("a", { href: link("cluster", { cell: c.id, c: k }), text: k }), " ");
  return s;
}

const cellText = v => v instanceof Node ? v : typeof v === "number" ? fmt(v) : String(v ?? "–");

// A table of `rows` with columns [name, cell(row) -> text or node, sort key(row)]: a click on
// a header sorts (again: reverses); `perPage` rows at a time.
function table(rows, cols, perPage, filter = () => true) {
  const wrap = $("div", { class: "table" });
  let order = rows.slice(), page = 0, by = -1, dir = 1;
  const body = $("tbody"), info = $("span", { class: "info" });
  const head = $("tr");
  cols.forEach(([name], i) => head.append($("th", { text: name, "data-col": i, onclick: () => {
    dir = by === i ? -dir : (i === 0 ? 1 : -1); by = i; render(); } })));
  const key = (c, r) => { const v = (c[2] || c[1])(r); return v === null || v === undefined ? -Infinity : v; };
  const render = () => {
    order = rows.filter(filter);
    if (by >= 0) order.sort((a, b) => { const x = key(cols[by], a), y = key(cols[by], b);
      return (x < y ? -1 : x > y ? 1 : 0) * dir; });
    page = Math.min(page, Math.max(0, Math.ceil(order.length / perPage) - 1));
    body.replaceChildren(...order.slice(page * perPage, (page + 1) * perPage).map(r =>
      $("tr", {}, ...cols.map(c => $("td", {}, cellText(c[1](r)))))));
    info.textContent = `${order.length} rows` + (order.length > perPage ?
      `, ${page * perPage + 1}–${Math.min(order.length, (page + 1) * perPage)}` : "");
    head.querySelectorAll("th").forEach((th, i) => th.className = i === by ? (dir > 0 ? "up" : "down") : "");
  };
  const nav = $("div", { class: "nav" },
    $("button", { text: "◀", onclick: () => { page = Math.max(0, page - 1); render(); } }),
    $("button", { text: "▶", onclick: () => { page += 1; render(); } }), info);
  wrap.append(nav, $("table", {}, $("thead", {}, head), body));
  wrap.render = render;
  render();
  return wrap;
}

async function dictionaryPage() {
  const { cell } = params();
  const d = await BROWSER.load(`cell/${cell}`, `cell-${cell}`);
  const vocab = await BROWSER.load(`vocab/${d.group}`, `vocab-${d.group}`);
  const toks = await BROWSER.load(`tokens/${d.group}`, `tokens-${d.group}`);
  const ai = (await aiSummary())[cell], aif = await aiFeatures(cell);
  document.title = `${cell}: features`;
  const m = main();
  m.append($("p", {}, $("a", { href: "index.html#", text: "← grid" })),
    $("h1", { text: cell }),
    $("p", { text: `${d.setting}, layer ${d.layer}, λ ${d.lam}, seed ${d.seed}: L0 ${fmt(d.l0)}, ` +
      `CE loss increase ${fmt(d.ce_loss_increase)}, ${d.firing} of ${d.n_dict} elements fire on ` +
      `${d.n_tokens} held-out tokens; ${d.pages} feature pages` }));
  if ((d.clusters || []).length) m.append($("p", {}, "multi-dimensional clusters: ", clusterLinks(d)));
  if (ai) m.append($("p", { class: "autointerp", text: `auto-interp (${Object.keys(aif).length} ` +
    `features; explainer ${ai.explainer}, scorer ${ai.scorer}): ${aiText(ai.scores)}` }));
  const logd = d.density.filter(x => x > 0).map(Math.log10);
  const lo = Math.min(...logd, -6), hi = Math.max(...logd, 0), counts = new Array(40).fill(0);
  logd.forEach(x => counts[Math.min(39, Math.floor((x - lo) / (hi - lo) * 40))]++);
  m.append($("h2", { text: "Activation density of every element" }),
    bars(counts, lo, hi, `log10 density (${d.n_dict - logd.length} never fire)`));
  const rows = d.density.map((x, f) => ({ f, density: x, max: d.max[f], mean: d.mean[f],
    alive: d.alive ? d.alive[f] : null, shard: d.shard[f],
    score: aif && aif[f] ? aif[f][Object.keys(ai.scores)[0]] : null,
    token: d.top_pos[f] >= 0 ? vocab[toks.ids[d.top_pos[f]]] : "" }));
  const q = { min: -Infinity, max: Infinity, text: "" };
  const filter = r => r.density >= q.min && r.density <= q.max &&
    (!q.text || r.token.toLowerCase().includes(q.text));
  const t = table(rows, [
    ["feature", r => r.shard >= 0 ? $("a", { href: featureLink(cell, r.f), text: r.f }) : $("span", { text: r.f }), r => r.f],
    ["density", r => r.density], ["max activation", r => r.max], ["mean activation", r => r.mean],
    ["alive (training)", r => r.alive === null ? "–" : r.alive ? "yes" : "no", r => r.alive],
    ["top token", r => $("code", { text: show(r.token) }), r => r.token],
    ["auto-interp", r => r.score]], 100, filter);
  const num = (ph, k) => $("input", { type: "number", step: "any", placeholder: ph, "data-filter": k,
    oninput: e => { q[k] = e.target.value === "" ? (k === "min" ? -Infinity : Infinity) : +e.target.value; t.render(); } });
  m.append($("h2", { text: "Features" }), $("div", { class: "filters" },
    "density ≥ ", num("min", "min"), " ≤ ", num("max", "max"), " top token contains ",
    $("input", { type: "search", placeholder: "token", "data-filter": "text",
      oninput: e => { q.text = e.target.value.toLowerCase(); t.render(); } })), t);
}

// One context: tokens of the row around `pos`, each shaded by its level (a char of `levels`).
function context(toks, vocab, pos, levels, value) {
  const half = (levels.length - 1) / 2, row0 = Math.floor(pos / toks.ctx) * toks.ctx;
  const div = $("div", { class: "ctx", "data-pos": pos });
  for (let i = 0; i < levels.length; i++) {
    const p = pos - half + i;
    if (levels[i] === " " || p < row0 || p >= row0 + toks.ctx) continue;
    const lv = parseInt(levels[i], 36) / 35;
    const s = $("span", { class: "tok" + (p === pos ? " max" : ""), text: show(vocab[toks.ids[p]]),
      title: p === pos ? `activation ${fmt(value)}` : `≈ ${Math.round(lv * 100)}% of the max` });
    s.style.background = `rgba(255, 94, 0, ${lv.toFixed(3)})`;
    div.append(s);
  }
  return div;
}

async function featurePage() {
  const { cell, f } = params(), fi = /^\d+$/.test(f || "") ? +f : NaN;
  const d = await BROWSER.load(`cell/${cell}`, `cell-${cell}`);
  const m = main();
  m.append($("p", {}, $("a", { href: "index.html#", text: "← grid" }), " · ",
    $("a", { href: link("dictionary", { cell }), text: cell })),
    $("h1", { text: `${cell}, feature ${Number.isNaN(fi) ? f : fi}` }));
  document.title = `${cell} #${Number.isNaN(fi) ? f : fi}`;
  if (!(d.shard[fi] >= 0)) {
    m.append($("p", { class: "note", text: fi >= 0 && fi < d.n_dict ? `No page for this feature: ` +
      `density ${fmt(d.density[fi])} on ${d.n_tokens} tokens (dead, or outside the sample of ` +
      `this dictionary).` : `No feature ${f} in this dictionary of ${d.n_dict}.` }));
    return;
  }
  const [part, vocab, toks] = await Promise.all([
    BROWSER.load(`feat/${cell}/${d.shard[fi]}`, `feat-${cell}-${d.shard[fi]}`),
    BROWSER.load(`vocab/${d.group}`, `vocab-${d.group}`),
    BROWSER.load(`tokens/${d.group}`, `tokens-${d.group}`)]);
  const r = part[fi], aif = await aiFeatures(cell);
  if (aif && aif[fi]) {
    const x = aif[fi], scores = Object.keys(x).filter(k => !k.endsWith("_failed") && k !== "explanation");
    m.append($("div", { class: "autointerp" }, $("b", { text: "Auto-interp explanation: " }),
      $("span", { class: "explanation", text: x.explanation || "–" }),
      $("div", { text: scores.map(k => `${k} ${fmt(x[k])}`).join(" · ") })));
  }
  m.append($("p", { class: "stats", text: `density ${fmt(d.density[fi])} (${r.count} of ${d.n_tokens} ` +
    `tokens) · mean ${fmt(r.mean)} · max ${fmt(r.max)}` }));
  const left = $("div", { class: "col" }), right = $("div", { class: "col" });
  m.append($("div", { class: "cols" }, left, right));
  left.append($("h2", { text: "Non-zero activations" }), bars(r.hist, r.lo, r.hi, "activation"));
  left.append($("h2", { text: `Top ${r.top.length} activating contexts` }));
  if (!r.top.length) left.append($("p", { class: "note", text: "It did not fire on the scanned " +
    "tokens; it is alive by its cell's alive mask (it fired in training's alive window)." }));
  const top = $("div", { id: "top" });
  r.top.forEach(([pos, v, lv]) => top.append(context(toks, vocab, pos, lv, v)));
  left.append(top, $("h2", { text: "Samples by activation interval" }));
  const n = d.intervals;
  for (let j = n - 1; j >= 0; j--) {
    const got = r.intervals.filter(x => x[0] === j);
    if (!got.length) continue;
    left.append($("h3", { text: `(${fmt(r.max * j / n)}, ${fmt(r.max * (j + 1) / n)}]` }));
    got.forEach(([, pos, lv]) => left.append(context(toks, vocab, pos, lv, null)));
  }
  const logits = (title, list) => right.append($("h2", { text: title }), $("table", { class: "logits" },
    ...list.map(([t, v]) => $("tr", {}, $("td", {}, $("code", { text: show(vocab[t]) })), $("td", { text: fmt(v) })))));
  logits("Promoted tokens", r.up);
  logits("Suppressed tokens", r.down);
  right.append($("p", { class: "note", text: "d · W_U: the unit-norm direction through the " +
    "unembedding, whose final layer norm's scale is folded in (fold_ln); the layer norm's " +
    "division by the residual's norm and the later blocks are left out." }));
  right.append($("h2", { text: "Nearest directions in other dictionaries (same layer, seed)" }));
  right.append($("table", { class: "near" }, $("tr", {}, $("th", { text: "dictionary" }),
    $("th", { text: "feature" }), $("th", { text: "cosine" })),
    ...r.near.map(([c, g, v, page]) => $("tr", {}, $("td", { text: c }),
      $("td", {}, page ? $("a", { href: featureLink(c, g), text: g }) : $("span", { text: g })),
      $("td", { text: fmt(v) })))));
}

async function clusterPage() {
  const { cell, c } = params();
  const all = await BROWSER.load(`clusters/${cell}`, `clusters-${cell}`);
  const k = all.find(x => String(x.cluster) === c);
  const m = main();
  m.append($("p", {}, $("a", { href: "index.html#", text: "← grid" }), " · ",
    $("a", { href: link("dictionary", { cell }), text: cell })),
    $("h1", { text: `${cell}, cluster ${c}` }));
  if (!k) { m.append($("p", { class: "note", text: "no such cluster" })); return; }
  m.append($("p", { text: `mixture M ${fmt(k.mixture)} · separability S ${fmt(k.separability)} ` +
    `bits · (1−M)·S ${fmt(k.score)} · ${k.members.length} features · ${k.points.length} points shown` }));
  const mem = $("p", {}, "features: ");
  k.members.forEach(f => mem.append($("a", { href: featureLink(cell, f), text: f }), " "));
  m.append(mem);
  const freq = {};
  k.token.forEach(t => freq[t] = (freq[t] || 0) + 1);
  const common = Object.entries(freq).sort((a, b) => b[1] - a[1]).slice(0, 8).map(x => x[0]);
  const colors = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
  const legend = $("p", { class: "legend" });
  common.forEach((t, i) => { const s = $("span", { text: show(t) + " " }); s.style.color = colors[i]; legend.append(s); });
  m.append(legend);
  const planes = $("div", { class: "plots" });
  for (let a = 0; a + 1 < k.pcs; a++) {
    const xs = k.points.map(p => p[a]), ys = k.points.map(p => p[a + 1]);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const S = 300, g = svg("svg", { width: S + 40, height: S + 40, class: "chart plane" });
    k.points.forEach((p, i) => {
      const ci = common.indexOf(k.token[i]);
      const dot = svg("circle", { cx: 20 + S * (xs[i] - x0) / (x1 - x0 || 1), r: 3,
        cy: 20 + S * (1 - (ys[i] - y0) / (y1 - y0 || 1)), fill: ci >= 0 ? colors[ci] : "#bbb" });
      const t = svg("title"); t.textContent = k.hover[i]; dot.append(t); g.append(dot);
    });
    const lab = svg("text", { x: 20, y: 14, class: "axis" });
    lab.textContent = `PC ${a + 1} → / PC ${a + 2} ↑`; g.append(lab);
    planes.append(g);
  }
  m.append(planes);
}

// One page, four views: index.html#page=dictionary|feature|cluster&cell=…, else the grid.
// A cell from the URL must be one of the index's own dictionaries (an allow-list) before any
// file named after it loads: `cell=x/../../evil` would otherwise run ../evil.js (CWE-22).
async function route() {
  const pages = { dictionary: dictionaryPage, feature: featurePage, cluster: clusterPage };
  const { page, cell } = params();
  if (!Object.hasOwn(pages, page || "")) return indexPage();  // not `__proto__`, `constructor`
  const known = (await BROWSER.load("index", "index")).cells.some(r => r.id === cell);
  if (!known) {
    main().append($("p", {}, $("a", { href: "index.html#", text: "← grid" })),
      $("p", { class: "note", text: `no such dictionary: ${cell}` }));
    return;
  }
  return pages[page]();
}
window.addEventListener("hashchange", () => location.reload());
