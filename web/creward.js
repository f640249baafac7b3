// CREward: show each image's scores as bars on the CREward Score / Score Latent / Select Best
// nodes, and what CREward Loader loaded (backbone, device, precision) on the loader.
//
// Both node renderers show it: the bars are an SVG inside a DOM widget ("creward_chart"), which
// the classic LiteGraph canvas lays over the node and Nodes 2.0 (Comfy.VueNodes.Enabled) mounts
// inside it. (A canvas onDrawForeground hook is never called by Nodes 2.0.)
//
// What is drawn comes from the node's UI output, {"ui": {"creward_scores": [payload]}} (Select
// Best: "creward_selection"; the loader: "creward_loaded": [{"text"}]). payload.charts is a list
// of charts, drawn one under the other (with a reference set: the scores, then the percentiles
// on a fixed 0-100 scale, whose middle is dashed); each chart is
//   {title, series: [names], labels: [row labels], values: [[v per series] per row] (null =
//    missing), value_label: what the numbers are ("score", "percentile", ...), value_range:
//    [lo, hi] or null (fit the data, always including 0), highlight: [row indices], note}
// (creward/models/score_table.py ScoreTable.chart builds one). A payload without charts is drawn
// from its {axes, ids, scores, chosen, title}. Series colours match creward/models/plots.py.
import { app } from "../../scripts/app.js";

const SCORE_NODE_TYPES = new Set(["CREwardScore", "CREwardScoreLatent", "CREwardSelectBest"]);
const LOADER_NODE_TYPE = "CREwardLoader";
const UI_KEYS = ["creward_scores", "creward_selection"];
const LOADED_KEY = "creward_loaded";
const CHART_WIDGET = "creward_chart";
const INFO_WIDGET = "creward_info";
const AXIS_COLORS = { geometry: "#4c78a8", material: "#f58518", texture: "#54a24b", overall: "#e45756" };
const EXTRA_COLORS = ["#72b7b2", "#b279a2", "#9d755d", "#bab0ac"];
const LEGEND_HEIGHT = 18;
const PLOT_HEIGHT = 112;
const LABEL_HEIGHT = 16;
const CHART_HEIGHT = LEGEND_HEIGHT + PLOT_HEIGHT + LABEL_HEIGHT;
const CHART_GAP = 6;
const INFO_HEIGHT = 34;
const MIN_WIDTH = 260;
const BARS_WIDTH = 90; // percent of the width; the value-axis labels sit in the rest
const SVG_NS = "http://www.w3.org/2000/svg";

function colorOf(name, index) {
  return AXIS_COLORS[name] || EXTRA_COLORS[index % EXTRA_COLORS.length];
}

function isNumber(value) {
  return typeof value === "number" && isFinite(value);
}

function lastOf(message, key) {
  const value = message && message[key];
  return Array.isArray(value) && value.length ? value[value.length - 1] : null;
}

function payloadOf(message) {
  for (const key of UI_KEYS) {
    const value = lastOf(message, key);
    if (value) return value;
  }
  return null;
}

// The charts a payload asks for (see the header for the shape).
export function chartsOf(payload) {
  if (Array.isArray(payload.charts)) return payload.charts.filter((chart) => chart && Array.isArray(chart.values));
  return [{
    title: payload.title || "CREward",
    series: payload.axes || [],
    labels: (payload.ids || []).map((id) => "#" + id),
    values: payload.scores || [],
    value_label: "score",
    value_range: null,
    highlight: payload.chosen || [],
  }];
}

function fixedRange(chart) {
  const fixed = chart.value_range;
  return Array.isArray(fixed) && isNumber(fixed[0]) && isNumber(fixed[1]) && fixed[1] > fixed[0] ? [fixed[0], fixed[1]] : null;
}

function valueRange(chart) {
  const fixed = fixedRange(chart);
  if (fixed) return fixed;
  let lo = 0, hi = 0;
  for (const row of chart.values) for (const v of row || []) if (isNumber(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (hi - lo < 1e-9) hi = lo + 1;
  const pad = 0.06 * (hi - lo);
  return [lo < 0 ? lo - pad : lo, hi > 0 ? hi + pad : hi];
}

function svg(tag, attributes, parent) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (parent) parent.appendChild(element);
  return element;
}

function html(tag, style, text, parent) {
  const element = document.createElement(tag);
  Object.assign(element.style, style);
  if (text !== undefined) element.textContent = text;
  if (parent) parent.appendChild(element);
  return element;
}

function formatValue(value) {
  const size = Math.abs(value);
  return size >= 100 ? value.toFixed(0) : size >= 10 ? value.toFixed(1) : value.toFixed(2);
}

// One chart: legend (HTML), bars (SVG, x in percent so it follows the widget's width), row labels.
function renderChart(chart, parent) {
  const series = chart.series || [];
  const rows = chart.values || [];
  const box = html("div", { position: "relative", height: CHART_HEIGHT + "px", background: "rgba(255,255,255,0.94)",
    borderRadius: "4px", overflow: "hidden", color: "#222", font: "10px sans-serif" }, undefined, parent);
  box.className = "creward-chart";
  box.dataset.rows = String(rows.length);
  box.dataset.series = series.join(",");
  box.dataset.valueLabel = chart.value_label || "score";

  const legend = html("div", { display: "flex", gap: "8px", alignItems: "center", height: LEGEND_HEIGHT + "px",
    padding: "0 4px", whiteSpace: "nowrap", overflow: "hidden" }, undefined, box);
  series.forEach((name, index) => {
    const item = html("span", { display: "inline-flex", alignItems: "center", gap: "3px" }, undefined, legend);
    html("span", { display: "inline-block", width: "8px", height: "8px", background: colorOf(name, index) }, undefined, item);
    html("span", {}, name, item);
  });
  const caption = [chart.value_label || "score", chart.note].filter(Boolean).join(" · ");
  html("span", { marginLeft: "auto", color: "#555" }, caption, legend).className = "creward-value-label";

  const plot = svg("svg", { width: "100%", height: PLOT_HEIGHT, role: "img", "aria-label": chart.title || "CREward scores" }, box);
  Object.assign(plot.style, { display: "block", overflow: "visible" });
  if (!rows.length || !series.length) return box;
  const [lo, hi] = valueRange(chart);
  const y = (v) => ((hi - Math.min(hi, Math.max(lo, v))) / (hi - lo)) * PLOT_HEIGHT;
  const highlight = new Set(chart.highlight || []);
  const groupW = BARS_WIDTH / rows.length, inner = groupW * 0.8, barW = inner / series.length;
  const gap = rows.length * series.length > 60 ? 0 : barW * 0.12;
  rows.forEach((row, r) => {
    const gx = r * groupW;
    if (highlight.has(r)) svg("rect", { x: gx + "%", y: 0, width: groupW + "%", height: PLOT_HEIGHT, fill: "#fff4cc", class: "creward-highlight" }, plot);
    (row || []).forEach((v, a) => {
      if (!isNumber(v)) return;
      const y0 = y(Math.max(lo, Math.min(hi, 0))), y1 = y(v);
      const bar = svg("rect", {
        x: gx + (groupW - inner) / 2 + a * barW + "%", width: Math.max(barW - gap, 0.05) + "%",
        y: Math.min(y0, y1), height: Math.max(1, Math.abs(y1 - y0)), fill: colorOf(series[a], a), class: "creward-bar",
      }, plot);
      svg("title", {}, bar).textContent = `${(chart.labels || [])[r] ?? "#" + r} ${series[a]}: ${v.toFixed(4)}`;
    });
  });
  const zero = y(Math.max(lo, Math.min(hi, 0)));
  svg("line", { x1: "0%", x2: BARS_WIDTH + "%", y1: zero, y2: zero, stroke: "#444", "stroke-width": 1 }, plot);
  if (fixedRange(chart)) {  // a fixed scale (percentiles 0-100, win probabilities 0-1): its middle, dashed
    const middle = y((lo + hi) / 2);
    svg("line", { x1: "0%", x2: BARS_WIDTH + "%", y1: middle, y2: middle, stroke: "#888", "stroke-width": 1, "stroke-dasharray": "4 3", class: "creward-midline" }, plot);
  }
  svg("text", { x: "99.5%", y: 9, "text-anchor": "end", fill: "#555", "font-size": 10 }, plot).textContent = formatValue(hi);
  svg("text", { x: "99.5%", y: PLOT_HEIGHT - 3, "text-anchor": "end", fill: "#555", "font-size": 10 }, plot).textContent = formatValue(lo);

  const labels = svg("svg", { width: "100%", height: LABEL_HEIGHT }, box);
  labels.style.display = "block";
  const every = Math.max(1, Math.ceil(rows.length / 16));
  (chart.labels || []).forEach((label, r) => {
    if (r % every === 0) svg("text", { x: (r + 0.5) * groupW + "%", y: 11, "text-anchor": "middle", fill: "#222", "font-size": 10 }, labels).textContent = label;
  });
  return box;
}

function widgetOf(node, name) {
  return (node.widgets || []).find((widget) => widget.name === name);
}

// A DOM widget showing `element`, added once; its height follows `height()`.
function domWidget(node, name, height) {
  let widget = widgetOf(node, name);
  if (widget) return widget;
  const element = document.createElement("div");
  element.className = `creward-widget ${name}`;
  // The display only shows: clicks and drags reach the node underneath.
  Object.assign(element.style, { pointerEvents: "none", width: "100%", boxSizing: "border-box", overflow: "hidden" });
  widget = node.addDOMWidget(name, name, element, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: height,
    getMaxHeight: height,
    getHeight: height,
  });
  widget.serialize = false;
  return widget;
}

function fitNode(node) {
  const size = node.computeSize ? node.computeSize() : node.size;
  node.setSize([Math.max(node.size[0], size[0], MIN_WIDTH), Math.max(node.size[1], size[1])]);
  node.setDirtyCanvas(true, true);
}

function showCharts(node, payload) {
  const charts = chartsOf(payload);
  node.creward = { data: payload, charts };
  const height = () => charts.length * CHART_HEIGHT + Math.max(0, charts.length - 1) * CHART_GAP + 4;
  const widget = domWidget(node, CHART_WIDGET, height);
  widget.options.getMinHeight = widget.options.getMaxHeight = widget.options.getHeight = height;
  const element = widget.element;
  element.replaceChildren();
  element.style.height = height() + "px";
  element.style.display = "flex";
  element.style.flexDirection = "column";
  element.style.gap = CHART_GAP + "px";
  for (const chart of charts) renderChart(chart, element);
  fitNode(node);
}

function showInfo(node, info) {
  const widget = domWidget(node, INFO_WIDGET, () => INFO_HEIGHT);
  const element = widget.element;
  element.replaceChildren();
  Object.assign(element.style, { height: INFO_HEIGHT + "px", font: "11px sans-serif", lineHeight: "15px",
    color: "var(--input-text, #ddd)", whiteSpace: "normal", padding: "1px 4px" });
  element.textContent = info.text || "";
  element.title = info.text || "";
  fitNode(node);
}

function chainOnExecuted(nodeType, handle) {
  const onExecuted = nodeType.prototype.onExecuted;
  nodeType.prototype.onExecuted = function (message) {
    const result = onExecuted ? onExecuted.apply(this, arguments) : undefined;
    try {
      handle(this, message);
    } catch (error) {
      console.error("CREward: could not show the node's result", error);
    }
    return result;
  };
}

app.registerExtension({
  name: "CREward.ScoreBars",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (SCORE_NODE_TYPES.has(nodeData.name)) {
      chainOnExecuted(nodeType, (node, message) => {
        const payload = payloadOf(message);
        if (payload) showCharts(node, payload);
      });
    } else if (nodeData.name === LOADER_NODE_TYPE) {
      chainOnExecuted(nodeType, (node, message) => {
        const info = lastOf(message, LOADED_KEY);
        if (info) showInfo(node, info);
      });
    }
  },
});
