// fedtune status page: polls /api/status and redraws; no external code, plots are inline SVG.
"use strict";
const Q = new URLSearchParams(location.search);
const TOKEN = Q.get("token");
let RUN = Q.get("run") || "";
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...kids) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
function fmt(x) {
  if (x === undefined || x === null || x === "") return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return x.toLocaleString("en");
  return Math.abs(x) >= 100 ? x.toFixed(0) : x.toPrecision(4);
}
function secs(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)}h ${Math.round(s % 3600 / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${s}s`;
}
function mb(b) { return (b / 1e6).toFixed(b >= 1e7 ? 0 : 2); }
function table(id, header, rows, attrs) {
  const t = document.getElementById(id);
  t.replaceChildren(el("tr", {}, ...header.map(h => el("th", {}, h))));
  rows.forEach((r, i) => t.append(el("tr", (attrs && attrs(i)) || {}, ...r.map(c => c instanceof Node ? el("td", {}, c) : el("td", {}, fmt(c))))));
  if (!rows.length) t.append(el("tr", {}, el("td", {colspan: header.length}, "none")));
}

// a line chart: series = [{name, color, pts: [[x, y]], dash}], hlines = [{y, color, name}]
function chart(title, series, opts) {
  opts = opts || {};
  const W = 540, H = 210, L = 46, R = 110, T = 10, B = 26;
  const pts = series.flatMap(s => s.pts);
  const box = el("div", {class: "plot"}, el("h3", {}, title));
  const svg = el("svg:svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title});
  box.append(svg);
  if (!pts.length) { svg.append(el("svg:text", {x: L, y: H / 2, fill: "#8a94a3"}, "no data yet")); return box; }
  const ys = pts.map(p => p[1] + (p[2] || 0)).concat((opts.hlines || []).map(h => h.y));
  let x0 = Math.min(...pts.map(p => p[0])), x1 = Math.max(...pts.map(p => p[0]), x0 + 1);
  if (opts.bars) { x0 -= 0.5; x1 += 0.5; }
  let y0 = opts.zero ? 0 : Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-9) { y1 += 0.5; y0 -= opts.zero ? 0 : 0.5; }
  const pad = (y1 - y0) * 0.08; y1 += pad; if (!opts.zero) y0 -= pad;
  const X = x => L + (x - x0) / (x1 - x0) * (W - L - R), Y = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = y0 + (y1 - y0) * i / 4;
    svg.append(el("svg:line", {x1: L, x2: W - R, y1: Y(v), y2: Y(v), stroke: "#e3e8ef"}),
      el("svg:text", {x: L - 4, y: Y(v) + 4, "text-anchor": "end", "font-size": 10, fill: "#5b6675"}, String(+v.toPrecision(3))));
  }
  const step = Math.max(1, Math.ceil((x1 - x0) / 10));
  for (let x = Math.ceil(x0); x <= x1; x += step)
    svg.append(el("svg:text", {x: X(x), y: H - 8, "text-anchor": "middle", "font-size": 10, fill: "#5b6675"}, x));
  let ly = T + 8;
  const legend = (name, color, dash) => {
    svg.append(el("svg:line", {x1: W - R + 8, x2: W - R + 26, y1: ly - 4, y2: ly - 4, stroke: color, "stroke-width": 2, "stroke-dasharray": dash || ""}),
      el("svg:text", {x: W - R + 30, y: ly, "font-size": 11}, name.length > 13 ? name.slice(0, 12) + "…" : name));
    ly += 15;
  };
  for (const h of opts.hlines || []) {
    svg.append(el("svg:line", {x1: L, x2: W - R, y1: Y(h.y), y2: Y(h.y), stroke: h.color, "stroke-dasharray": "2 3"}));
    legend(h.name, h.color, "2 3");
  }
  for (const s of series) {
    if (!s.pts.length) continue;
    if (opts.bars) {
      const w = Math.max(3, Math.min(40, (W - L - R) / (x1 - x0) * 0.7));
      s.pts.forEach(p => svg.append(el("svg:rect", {x: X(p[0]) - w / 2, y: Y(p[2] + p[1]), width: w, height: Math.max(0, Y(p[2]) - Y(p[2] + p[1])), fill: s.color})));
    } else {
      svg.append(el("svg:polyline", {points: s.pts.map(p => `${X(p[0])},${Y(p[1])}`).join(" "), fill: "none", stroke: s.color, "stroke-width": s.width || 1.6, "stroke-dasharray": s.dash || ""}));
      s.pts.forEach(p => svg.append(el("svg:circle", {cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: s.color})));
    }
    legend(s.name, s.color, s.dash);
  }
  return box;
}

function render(st) {
  document.getElementById("run").textContent = st.run;
  const state = document.getElementById("state");
  state.textContent = st.state; state.className = "state " + st.state;
  document.getElementById("sub").textContent = [st.task, st.strategy, st.dp ? "DP-SGD at every site" : "no DP",
    `round ${st.round} of ${st.total_rounds}`, st.state === "running" ? `ETA ${secs(st.eta_s)}` : ""].filter(Boolean).join(" · ");
  const pick = document.getElementById("runs");
  if (st.runs.length > 1) {
    document.getElementById("pick").hidden = false;
    pick.replaceChildren(...st.runs.map(r => { const o = el("option", {value: r}, r); if (r === st.id) o.selected = true; return o; }));
  }
  const sites = Object.keys(st.sites).sort(), color = s => COLORS[sites.indexOf(s) % COLORS.length];
  const head = st.metrics[0], last = st.rounds.filter(r => Object.keys(r.evaluate).length).pop();
  const bytes = st.rounds.reduce((a, r) => a + (r.upload_bytes || 0), 0);
  const cards = [[`${st.round} / ${st.total_rounds}`, "round"], [st.state === "running" ? secs(st.eta_s) : "–", "ETA"],
    [secs(st.elapsed_s), "elapsed"], [sites.length, "sites"], [mb(bytes), "MB received"], [st.events.length, "failures / refusals / rejections"]];
  if (last && head) cards.splice(2, 0, [fmt(last.evaluate[head]), `test ${head} (round ${last.round})`]);
  document.getElementById("cards").replaceChildren(...cards.map(([v, k]) => el("div", {class: "card"}, el("b", {}, v), el("span", {}, k))));

  const ev = st.rounds.filter(r => Object.keys(r.evaluate).length), plots = [];
  if (head) plots.push(chart(`test ${head} per round`, [{name: "weighted", color: "#1d2530", width: 2.6, pts: ev.map(r => [r.round, r.evaluate[head]])},
    ...sites.map(s => ({name: s, color: color(s), dash: "4 3", pts: ev.filter(r => r.per_site[s] && head in r.per_site[s].evaluate).map(r => [r.round, r.per_site[s].evaluate[head]])}))]));
  plots.push(chart("loss per round", [{name: "train loss", color: "#d62728", pts: st.rounds.filter(r => "train_loss" in r.train).map(r => [r.round, r.train.train_loss])},
    {name: "test loss", color: "#1f77b4", pts: ev.filter(r => "loss" in r.evaluate).map(r => [r.round, r.evaluate.loss])}]));
  const dpSites = sites.filter(s => "epsilon" in st.sites[s]);
  if (dpSites.length) plots.push(chart("ε spent per site (dotted: budget)", dpSites.map(s => ({name: s, color: color(s),
    pts: st.rounds.filter(r => r.per_site[s] && "epsilon" in r.per_site[s].train).map(r => [r.round, r.per_site[s].train.epsilon])})),
    {zero: true, hlines: dpSites.filter(s => st.sites[s].epsilon_budget).map(s => ({y: st.sites[s].epsilon_budget, color: color(s), name: `${s} budget`}))}));
  const base = {};
  plots.push(chart("MB received per round", sites.map(s => ({name: s, color: color(s), pts: st.rounds.map(r => {
    const v = ((r.per_site[s] || {}).upload_bytes || 0) / 1e6, b = base[r.round] || 0; base[r.round] = b + v; return [r.round, v, b]; })})), {zero: true, bars: true}));
  document.getElementById("plots").replaceChildren(...plots);

  table("rounds", ["round", "sites", "train loss", ...st.metrics.map(m => `test ${m}`), "round s", "MB", "failed", "rejected"],
    st.rounds.map(r => [r.round, r.sites_trained.length, r.train.train_loss, ...st.metrics.map(m => r.evaluate[m]), r.round_s, mb(r.upload_bytes || 0), r.failures, r.rejected]),
    i => ({"data-round": st.rounds[i].round}));
  table("sites", ["site", "rounds trained", head ? `test ${head}` : "test", "ε spent", "ε budget", "budget used", "MB sent", "train s", "eval s", "failed", "refused", "rejected"],
    sites.map(s => {
      const x = st.sites[s], used = x.epsilon_budget ? x.epsilon / x.epsilon_budget : null;
      const bar = used === null ? "–" : el("span", {}, el("span", {class: "bar"}, el("i", {class: used > 1 ? "over" : "", style: `width:${Math.min(100, used * 100)}%`})), ` ${Math.round(used * 100)} %`);
      return [s, x.rounds, head ? x.evaluate[head] : undefined, x.epsilon, x.epsilon_budget, bar, mb(x.upload_bytes), x.train_seconds, x.eval_seconds, x.failed || 0, x.refused || 0, x.rejected || 0];
    }), i => ({"data-site": sites[i]}));
  const t = document.getElementById("events");
  table("events", ["round", "site", "what", "reason"], st.events.map(e => [e.round, e.site, e.kind, e.reason]));
  t.querySelectorAll("tr td:last-child").forEach(td => td.classList.add("reason"));
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  document.body.dataset.round = st.round; document.body.dataset.state = st.state;
}

let timer = null;
async function poll() {
  clearTimeout(timer);
  let wait = 2000;
  try {
    const url = new URL("api/status", location.href);
    if (RUN) url.searchParams.set("run", RUN);
    const res = await fetch(url, {headers: TOKEN ? {Authorization: "Bearer " + TOKEN} : {}, cache: "no-store"});
    if (res.ok) { const st = await res.json(); render(st); if (st.state === "finished") wait = 10000; }
    else document.getElementById("state").textContent = res.status === 404 ? "no run yet" : `error ${res.status}`;
  } catch (e) { document.getElementById("updated").textContent = "cannot reach the server: " + e; }
  timer = setTimeout(poll, wait);
}
document.getElementById("runs").addEventListener("change", e => { RUN = e.target.value; poll(); });
poll();
