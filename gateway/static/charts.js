// Small hand-drawn charts (DOM and inline SVG, no library): metric bars, a PRS/α gauge, a time line.

const SVG = "http://www.w3.org/2000/svg";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

const clamp01 = (x) => Math.min(1, Math.max(0, x));
export const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits));

/** Horizontal bars of values in [0, 1] with a mark at ½: right of it the edge is predicted better. */
export function drawMetricBars(container, perMetric) {
  container.replaceChildren();
  const list = el("div", "bars");
  list.setAttribute("role", "list");
  for (const [name, value] of Object.entries(perMetric)) {
    const row = el("div", "bar-row");
    row.setAttribute("role", "listitem");
    row.setAttribute("aria-label", `${name} ${fmt(value)}`);
    const track = el("div", "bar-track");
    const fill = el("div", `bar-fill ${value >= 0.5 ? "edge" : "cloud"}`);
    fill.style.width = `${clamp01(value) * 100}%`;
    track.append(fill, el("div", "bar-mid"));
    row.append(el("span", "bar-label", name), track, el("span", "bar-value", fmt(value)));
    list.append(row);
  }
  container.append(list);
}

/** A 0–1 track with the predicted PRS as a dot and α as a tick; the part below α is the cloud zone. */
export function drawGauge(container, prs, alpha) {
  container.replaceChildren();
  if (prs === null || prs === undefined) {
    container.append(el("p", "muted", "not scored: the route was forced or private"));
    return;
  }
  const track = el("div", "gauge-track");
  if (alpha !== null && alpha !== undefined) {
    const zone = el("div", "gauge-cloud-zone");
    zone.style.width = `${clamp01(alpha) * 100}%`;
    const tick = el("div", "gauge-alpha");
    tick.style.left = `${clamp01(alpha) * 100}%`;
    tick.append(el("span", "gauge-tag", `α ${fmt(alpha)}`));
    track.append(zone, tick);
  }
  const dot = el("div", "gauge-prs");
  dot.style.left = `${clamp01(prs) * 100}%`;
  dot.append(el("span", "gauge-tag", `PRS ${fmt(prs)}`));
  track.append(dot);
  const scale = el("div", "gauge-scale");
  scale.append(el("span", "", "0 · cloud better"), el("span", "", "½"), el("span", "", "edge better · 1"));
  container.append(track, scale);
}

/** "now", "−30 s" or "−5 min": seconds while the whole window is under two minutes. */
export function agoLabel(ago, windowS) {
  if (ago === 0) return "now";
  return windowS < 120 ? `−${Math.round(ago)} s` : `−${Math.round(ago / 60)} min`;
}

/**
 * A line over the last `windowS` seconds: `points` are {t (s), y, ref}; y is drawn solid, ref (ρ) dashed.
 * Values are fractions in [0, 1].
 */
export function drawTimeLine(container, points, nowS, windowS) {
  // Drawn at the container's own width so the axis text stays readable on a phone.
  const W = Math.max(280, Math.round(container.clientWidth || 600)), H = 170, L = 38, R = 10, T = 10, B = 24;
  const x = (t) => L + ((t - (nowS - windowS)) / windowS) * (W - L - R);
  const y = (v) => T + (1 - clamp01(v)) * (H - T - B);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "cloud fraction over time" });
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    root.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, `${v * 100}%`));
  }
  for (const ago of [windowS, windowS / 2, 0]) {
    const anchor = ago === windowS ? "start" : ago === 0 ? "end" : "middle";
    root.append(svg("text", { x: x(nowS - ago), y: H - 6, "text-anchor": anchor, class: "axis" }, agoLabel(ago, windowS)));
  }
  const visible = points.filter((p) => p.t >= nowS - windowS);
  const path = (key, step) =>
    visible
      .filter((p) => p[key] !== null && p[key] !== undefined)
      .map((p, i, arr) => {
        const head = i === 0 ? "M" : "L";
        const stepPart = step && i > 0 ? `L${x(p.t).toFixed(1)},${y(arr[i - 1][key]).toFixed(1)} ` : "";
        return `${stepPart}${head}${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`;
      })
      .join(" ");
  const refPath = path("ref", true);
  if (refPath) root.append(svg("path", { d: refPath, class: "ref" }));
  const linePath = path("y", false);
  if (linePath) root.append(svg("path", { d: linePath, class: "line" }));
  const last = visible.at(-1);
  if (last && last.y !== null && last.y !== undefined) {
    root.append(svg("circle", { cx: x(last.t), cy: y(last.y), r: 3.5, class: "dot" }));
  }
  if (!visible.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "waiting for data…"));
  }
  container.replaceChildren(root);
}
