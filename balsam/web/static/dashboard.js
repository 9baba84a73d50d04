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

function drawChart(canvas, points, color) {
  var ctx = canvas.getContext("2d");
  var w = canvas.width, h = canvas.height, left = 56, right = 10, top = 10, bottom = 28;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#66707d";
  if (!points.length) {
    ctx.fillText("Nothing recorded yet.", left, h / 2);
    return;
  }
  var t0 = Date.parse(points[0][0]), t1 = Date.parse(points[points.length - 1][0]);
  var ymax = niceMax(Math.max.apply(null, points.map(function (p) { return p[1]; })));
  var span = Math.max(t1 - t0, 1);
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
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.beginPath();
  points.forEach(function (p, i) {
    var px = x(Date.parse(p[0])), py = y(p[1]);
    if (i === 0) { ctx.moveTo(px, py); } else { ctx.lineTo(px, py); }
  });
  ctx.stroke();
}

var chartCanvases = document.querySelectorAll("canvas[data-series]");
if (chartCanvases.length) {
  fetch("/api/charts/", { credentials: "same-origin" })
    .then(function (r) { return r.json(); })
    .then(function (data) {
      chartCanvases.forEach(function (c) {
        drawChart(c, data[c.dataset.series] || [], c.id === "throughput" ? "#3c9a55" : "#3271c2");
        c.dataset.drawn = String((data[c.dataset.series] || []).length);
      });
    });
}
