// Balsam dashboard: state bars, confirmations and two small canvas line charts (no libraries).
"use strict";

document.querySelectorAll(".fill[data-pct]").forEach(function (el) {
  el.style.width = Math.min(100, parseFloat(el.dataset.pct) || 0) + "%";
});

document.querySelectorAll("form.confirm").forEach(function (form) {
  form.addEventListener("submit", function (ev) {
    if (!window.confirm(form.dataset.confirm || "Are you sure?")) { ev.preventDefault(); }
  });
});

function niceMax(v) {
  if (v <= 0) { return 1; }
  var p = Math.pow(10, Math.floor(Math.log10(v)));
  var steps = [1, 2, 5, 10];
  for (var i = 0; i < steps.length; i++) { if (steps[i] * p >= v) { return steps[i] * p; } }
  return 10 * p;
}

var COLORS = ["#3c9a55", "#3271c2", "#c98a1d", "#c23b3b"];

function drawChart(canvas, chart) {
  var ctx = canvas.getContext("2d");
  var w = canvas.width, h = canvas.height, left = 56, right = 10, top = 22, bottom = 28;
  var times = (chart && chart.times) || [], series = (chart && chart.series) || [];
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#66707d";
  if (!times.length) {
    ctx.fillText("Nothing recorded yet.", left, h / 2);
    return 0;
  }
  var ts = times.map(function (t) { return Date.parse(t); });
  var t0 = ts[0], t1 = ts[ts.length - 1], span = Math.max(t1 - t0, 1);
  var top_value = 0;
  series.forEach(function (s) { s.values.forEach(function (v) { top_value = Math.max(top_value, v); }); });
  var ymax = niceMax(top_value);
  function x(t) { return left + (w - left - right) * (t - t0) / span; }
  function y(v) { return top + (h - top - bottom) * (1 - v / ymax); }
  ctx.strokeStyle = "#e3e6ea";
  ctx.textAlign = "right";
  for (var k = 0; k <= 4; k++) {
    var v = ymax * k / 4;
    ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(w - right, y(v)); ctx.stroke();
    ctx.fillText(String(Math.round(v * 100) / 100), left - 4, y(v) + 4);
  }
  ctx.textAlign = "center";
  [t0, (t0 + t1) / 2, t1].forEach(function (t) {
    var d = new Date(t);
    var label = span > 36e5 * 24 ? d.toISOString().slice(5, 16).replace("T", " ")
                                 : d.toISOString().slice(11, 19);
    ctx.fillText(label, Math.min(Math.max(x(t), left + 30), w - right - 30), h - 8);
  });
  ctx.textAlign = "left";
  var lx = left;
  series.forEach(function (s, n) {
    var color = COLORS[n % COLORS.length];
    ctx.fillStyle = color;
    ctx.fillRect(lx, 6, 10, 10);
    ctx.fillStyle = "#1d2430";
    ctx.fillText(s.label, lx + 14, 15);
    lx += 24 + ctx.measureText(s.label).width;
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.values.forEach(function (v, i) {
      if (i === 0) { ctx.moveTo(x(ts[i]), y(v)); } else { ctx.lineTo(x(ts[i]), y(v)); }
    });
    ctx.stroke();
    ctx.lineWidth = 1;
  });
  return times.length;
}

var chartCanvases = document.querySelectorAll("canvas[data-series]");
if (chartCanvases.length) {
  fetch("/api/charts/", { credentials: "same-origin" })
    .then(function (r) { return r.json(); })
    .then(function (data) {
      chartCanvases.forEach(function (c) {
        c.dataset.drawn = String(drawChart(c, data[c.dataset.series]));
      });
    });
}
