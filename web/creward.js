// CREward: draw each image's scores as bars on the CREward Score / Score Latent / Select Best nodes.
//
// The nodes send {"ui": {"creward_scores": [payload]}} (Select Best: "creward_selection") with
// payload = {axes, ids, scores: [[g, m, t, o], ...], mean, title, chosen?, charts?}. onExecuted
// keeps the payload on the node (node.creward) and onDrawForeground draws one group of bars per
// image below the widgets, the chosen images of Select Best on a shaded background. With a
// reference set connected, the last chart is the percentiles (0-100), captioned "percentile ·
// vs reference ..."; otherwise the scores, captioned "score". Colours match
// creward/models/plots.py (AXIS_COLORS).
import { app } from "../../scripts/app.js";

const NODE_TYPES = new Set(["CREwardScore", "CREwardScoreLatent", "CREwardSelectBest"]);
const UI_KEYS = ["creward_scores", "creward_selection"];
const AXIS_COLORS = { geometry: "#4c78a8", material: "#f58518", texture: "#54a24b", overall: "#e45756" };
const EXTRA_COLORS = ["#72b7b2", "#b279a2", "#9d755d", "#bab0ac"];
const CHART_HEIGHT = 150;
const MARGIN = 8;

function colorOf(axis, index) {
  return AXIS_COLORS[axis] || EXTRA_COLORS[index % EXTRA_COLORS.length];
}

function payloadOf(message) {
  for (const key of UI_KEYS) {
    const value = message && message[key];
    if (Array.isArray(value) && value.length) return value[value.length - 1];
  }
  return null;
}

// What the bars show: the last of the payload's charts ({values, value_label, value_range, note},
// as ScoreTable.chart builds them: the percentiles against a reference come after the scores),
// else the scores.
function chartValues(data) {
  const charts = Array.isArray(data.charts) ? data.charts.filter((chart) => chart && Array.isArray(chart.values)) : [];
  const chart = charts[charts.length - 1];
  if (!chart) return { rows: data.scores || [], range: null, label: "score" };
  const range = Array.isArray(chart.value_range) && chart.value_range[1] > chart.value_range[0] ? chart.value_range : null;
  return { rows: chart.values, range, label: [chart.value_label || "score", chart.note].filter(Boolean).join(" \u00b7 ") };
}

function drawChart(ctx, node, data) {
  const width = node.size[0] - 2 * MARGIN;
  const top = node.size[1] - CHART_HEIGHT - MARGIN;
  const captionH = 14, legendH = 16, labelH = 14;  // caption: what the bars are; legend: the axes
  const legendTop = top + captionH;
  const plotTop = legendTop + legendH, plotH = CHART_HEIGHT - captionH - legendH - labelH;
  const view = chartValues(data);
  const rows = view.rows;
  const axes = data.axes || [];
  if (!rows.length || !axes.length || width < 40) return;
  let lo = 0, hi = 0;
  if (view.range) {
    [lo, hi] = view.range;
  } else {
    for (const row of rows) for (const v of row) if (v !== null && isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (hi - lo < 1e-9) hi = lo + 1;
    const pad = 0.06 * (hi - lo);
    hi += pad; if (lo < 0) lo -= pad;
  }
  const y = (v) => plotTop + ((hi - Math.min(hi, Math.max(lo, v))) / (hi - lo)) * plotH;

  ctx.save();
  ctx.fillStyle = "rgba(255,255,255,0.92)";
  ctx.fillRect(MARGIN, top, width, CHART_HEIGHT);
  const chosen = new Set(data.chosen || []);
  const groupW = width / rows.length;
  const inner = groupW * 0.8, barW = inner / axes.length;
  rows.forEach((row, r) => {
    const gx = MARGIN + r * groupW;
    if (chosen.has(r)) { ctx.fillStyle = "#fff4cc"; ctx.fillRect(gx, plotTop, groupW, plotH); }
    row.forEach((v, a) => {
      if (v === null || !isFinite(v)) return;
      const x = gx + (groupW - inner) / 2 + a * barW;
      const y0 = y(0), y1 = y(v);
      ctx.fillStyle = colorOf(axes[a], a);
      ctx.fillRect(x, Math.min(y0, y1), Math.max(1, barW - (barW > 3 ? 1 : 0)), Math.max(1, Math.abs(y1 - y0)));
    });
  });
  ctx.strokeStyle = "#444"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(MARGIN, y(0)); ctx.lineTo(MARGIN + width, y(0)); ctx.stroke();

  ctx.font = "10px sans-serif"; ctx.textBaseline = "middle"; ctx.textAlign = "left";
  let lx = MARGIN + 4;
  axes.forEach((axis, a) => {
    ctx.fillStyle = colorOf(axis, a); ctx.fillRect(lx, legendTop + 4, 8, 8);
    ctx.fillStyle = "#222"; ctx.fillText(axis, lx + 11, legendTop + 8);
    lx += 15 + ctx.measureText(axis).width + 6;
  });
  ctx.fillStyle = "#555";
  let label = view.label;  // shortened to the node's width
  while (label.length > 8 && ctx.measureText(label + "\u2026").width > width - 8) label = label.slice(0, -1);
  ctx.fillText(label === view.label ? label : label + "\u2026", MARGIN + 4, top + 8);
  ctx.textAlign = "right";
  const tick = (v) => (view.range ? String(v) : v.toFixed(2));
  ctx.fillText(tick(hi), MARGIN + width - 2, plotTop + 5);
  ctx.fillText(tick(lo), MARGIN + width - 2, plotTop + plotH - 5);
  ctx.textAlign = "center"; ctx.fillStyle = "#222";
  const every = Math.max(1, Math.ceil(24 / groupW));
  (data.ids || []).forEach((id, r) => {
    if (r % every === 0) ctx.fillText("#" + id, MARGIN + (r + 0.5) * groupW, plotTop + plotH + labelH / 2 + 1);
  });
  ctx.restore();
}

app.registerExtension({
  name: "CREward.ScoreBars",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted ? onExecuted.apply(this, arguments) : undefined;
      const data = payloadOf(message);
      if (data) {
        this.creward = { data, drawn: 0 };
        const base = this.computeSize ? this.computeSize()[1] : this.size[1];
        const need = base + CHART_HEIGHT + MARGIN;
        if (this.size[1] < need || this.size[0] < 260) this.setSize([Math.max(this.size[0], 260), Math.max(this.size[1], need)]);
        this.setDirtyCanvas(true, true);
      }
      return result;
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground ? onDrawForeground.apply(this, arguments) : undefined;
      if (this.creward && !(this.flags && this.flags.collapsed)) {
        drawChart(ctx, this, this.creward.data);
        this.creward.drawn += 1;
      }
      return result;
    };
  },
});
