"use strict";
(function () {
  var SVG_NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
                 "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var key in attrs || {}) node.setAttribute(key, attrs[key]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function svgEl(tag, attrs, text) {
    var node = document.createElementNS(SVG_NS, tag);
    for (var key in attrs || {}) node.setAttribute(key, attrs[key]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function fmtInt(n) { return Number(n).toLocaleString("en-US"); }
  function fmtCost(v) {
    if (v === null || v === undefined) return "-";
    var sign = v < 0 ? "-" : "", a = Math.abs(v);
    function grouped(digits) {
      return a.toLocaleString("en-US", {minimumFractionDigits: digits, maximumFractionDigits: digits});
    }
    if (a >= 100) return sign + "$" + grouped(2);
    if (a >= 1) return sign + "$" + grouped(4);
    return sign + "$" + a.toFixed(6);
  }
  function fmtSeconds(v) { return (v === null || v === undefined) ? "-" : v.toFixed(3) + " s"; }
  function fmtPct(v) { return (v * 100).toFixed(1) + "%"; }
  function empty(container, text) { container.appendChild(el("p", {"class": "empty"}, text)); }
  function legend(container, names, colorOf) {
    var box = el("div", {"class": "legend"});
    names.forEach(function (name) {
      box.appendChild(el("span", {"style": "--c:" + colorOf(name), "data-legend": name}, name));
    });
    container.appendChild(box);
  }

  // A chart is drawn at its card's inner width (so it fills the card) and redrawn when the
  // window is resized; below `least` pixels, or when the bars need more room, the card scrolls.
  function chartWidth(box, least) {
    var style = window.getComputedStyle(box);
    var inner = box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return Math.max(least, Math.floor(inner));
  }
  function clear(box) { while (box.firstChild) box.removeChild(box.firstChild); }

  function cards(totals) {
    var box = document.getElementById("cards");
    [["requests", "Requests", fmtInt], ["errors", "Errors", fmtInt],
     ["total_tokens", "Total tokens", fmtInt], ["prompt_tokens", "Prompt tokens", fmtInt],
     ["completion_tokens", "Completion tokens", fmtInt], ["cost", "Estimated cost", fmtCost],
     ["latency_p50", "Latency p50", fmtSeconds], ["latency_p95", "Latency p95", fmtSeconds],
     ["latency_p99", "Latency p99", fmtSeconds], ["ttft_p50", "First token p50", fmtSeconds]
    ].forEach(function (spec) {
      var card = el("div", {"class": "card", "data-metric": spec[0]});
      card.appendChild(el("div", {"class": "label"}, spec[1]));
      card.appendChild(el("div", {"class": "value", "data-card": spec[0]}, spec[2](totals[spec[0]])));
      box.appendChild(card);
    });
  }

  function tokensChart(series) {
    var box = document.getElementById("chart-tokens");
    clear(box);
    var points = series.points;
    if (!points.length) return empty(box, "No requests in this range.");
    var W = chartWidth(box, Math.max(320, points.length * 6 + 80)), H = 260, L = 70, B = 40, T = 16;
    var plotW = W - L - 10, plotH = H - B - T;
    var max = Math.max.apply(null, points.map(function (p) { return p.prompt + p.completion; })) || 1;
    var svg = svgEl("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, "data-chart": "tokens"});
    svg.appendChild(svgEl("line", {x1: L, y1: T + plotH, x2: L + plotW, y2: T + plotH, stroke: "#888"}));
    svg.appendChild(svgEl("text", {x: L - 6, y: T + 4, "text-anchor": "end", "data-axis": "max"}, fmtInt(max)));
    svg.appendChild(svgEl("text", {x: L - 6, y: T + plotH, "text-anchor": "end"}, "0"));
    var slot = plotW / points.length, barW = Math.max(2, slot * 0.8);
    var labelEvery = Math.ceil(points.length / Math.max(2, Math.floor(plotW / 90)));
    points.forEach(function (p, i) {
      var x = L + i * slot + (slot - barW) / 2;
      var total = p.prompt + p.completion;
      var g = svgEl("g", {"class": "bar", "data-t": p.t, "data-total": total, "data-requests": p.requests});
      var hp = plotH * p.prompt / max, hc = plotH * p.completion / max;
      var rp = svgEl("rect", {x: x, y: T + plotH - hp, width: barW, height: hp, fill: PALETTE[0],
                              "data-kind": "prompt", "data-value": p.prompt});
      rp.appendChild(svgEl("title", {}, p.label + ": " + fmtInt(p.prompt) + " prompt tokens"));
      var rc = svgEl("rect", {x: x, y: T + plotH - hp - hc, width: barW, height: hc, fill: PALETTE[1],
                              "data-kind": "completion", "data-value": p.completion});
      rc.appendChild(svgEl("title", {}, p.label + ": " + fmtInt(p.completion) + " completion tokens"));
      g.appendChild(rp); g.appendChild(rc);
      if (i % labelEvery === 0) {
        var text = series.bucket >= 86400 ? p.label.slice(0, 10)
                 : series.bucket < 60 ? p.label.slice(11, 19) : p.label.slice(11, 16);
        g.appendChild(svgEl("text", {x: x + barW / 2, y: H - B + 16, "text-anchor": "middle"}, text));
      }
      svg.appendChild(g);
    });
    box.appendChild(svg);
    legend(box, ["prompt", "completion"], function (n) { return n === "prompt" ? PALETTE[0] : PALETTE[1]; });
  }

  function latencyChart(rows) {
    var box = document.getElementById("chart-latency");
    clear(box);
    rows = rows.filter(function (r) { return r.latency_p99 !== null; });
    if (!rows.length) return empty(box, "No latencies recorded.");
    var pcts = ["latency_p50", "latency_p95", "latency_p99"];
    var W = chartWidth(box, rows.length * 150 + 80), H = 280, L = 60, B = 40, T = 24;
    var groupW = (W - L - 20) / rows.length;
    var plotH = H - B - T;
    var max = Math.max.apply(null, rows.map(function (r) { return r.latency_p99; })) || 1;
    var svg = svgEl("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, "data-chart": "latency"});
    svg.appendChild(svgEl("line", {x1: L, y1: T + plotH, x2: W - 10, y2: T + plotH, stroke: "#888"}));
    rows.forEach(function (r, i) {
      var x0 = L + i * groupW + (groupW - 114) / 2;  // three 34 px bars, 40 px apart
      pcts.forEach(function (pct, j) {
        var v = r[pct], h = plotH * v / max, x = x0 + j * 40;
        var rect = svgEl("rect", {x: x, y: T + plotH - h, width: 34, height: h, fill: PALETTE[j],
                                  "data-model": r.group, "data-pct": pct.slice(8), "data-value": v});
        rect.appendChild(svgEl("title", {}, r.group + " " + pct.slice(8) + ": " + fmtSeconds(v)));
        svg.appendChild(rect);
        svg.appendChild(svgEl("text", {x: x + 17, y: T + plotH - h - 4, "text-anchor": "middle",
                                       "data-label": r.group + ":" + pct.slice(8)}, v.toFixed(2)));
      });
      svg.appendChild(svgEl("text", {x: x0 + 57, y: H - B + 16, "text-anchor": "middle"}, r.group));
    });
    box.appendChild(svg);
    legend(box, ["p50", "p95", "p99"], function (n) { return PALETTE[["p50", "p95", "p99"].indexOf(n)]; });
  }

  function shareChart(share) {
    var box = document.getElementById("chart-share");
    clear(box);
    if (!share.sessions.length) return empty(box, "No sessions in this range.");
    var color = {};
    share.models.forEach(function (m, i) { color[m] = PALETTE[i % PALETTE.length]; });
    var rowH = 26, L = 160, W = chartWidth(box, 480), H = share.sessions.length * rowH + 10, plotW = W - L - 10;
    var svg = svgEl("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, "data-chart": "share"});
    share.sessions.forEach(function (session, i) {
      var tokens = share.tokens[session] || {};
      var total = 0;
      share.models.forEach(function (m) { total += tokens[m] || 0; });
      var y = 5 + i * rowH, x = L;
      var name = session.length > 22 ? session.slice(0, 21) + "\u2026" : session;
      svg.appendChild(svgEl("text", {x: L - 8, y: y + 15, "text-anchor": "end"}, name));
      share.models.forEach(function (m) {
        var n = tokens[m] || 0;
        if (!n || !total) return;
        var frac = n / total, w = plotW * frac;
        var rect = svgEl("rect", {x: x, y: y, width: w, height: rowH - 6, fill: color[m],
                                  "data-session": session, "data-model": m, "data-tokens": n,
                                  "data-share": frac.toFixed(4)});
        rect.appendChild(svgEl("title", {}, session + " / " + m + ": " + fmtInt(n) + " tokens (" + fmtPct(frac) + ")"));
        svg.appendChild(rect);
        if (w > 44) {
          svg.appendChild(svgEl("text", {x: x + w / 2, y: y + 14, "text-anchor": "middle", fill: "#fff",
                                         "data-share-label": session + ":" + m}, fmtPct(frac)));
        }
        x += w;
      });
    });
    box.appendChild(svg);
    legend(box, share.models, function (m) { return color[m]; });
  }

  var COLUMNS = [
    ["requests", "Requests", fmtInt], ["errors", "Errors", fmtInt],
    ["prompt_tokens", "Prompt", fmtInt], ["completion_tokens", "Completion", fmtInt],
    ["reasoning_tokens", "Reasoning", fmtInt], ["total_tokens", "Total tokens", fmtInt],
    ["cost", "Cost", fmtCost], ["latency_p50", "p50", fmtSeconds], ["latency_p95", "p95", fmtSeconds],
    ["latency_p99", "p99", fmtSeconds], ["ttft_p50", "TTFT p50", fmtSeconds]
  ];

  function table(id, first, rows, columns) {
    var box = document.getElementById(id);
    if (!rows.length) return empty(box, "Nothing recorded.");
    var kind = id.slice(6);
    var t = el("table", {"data-table": kind});
    var head = el("tr");
    head.appendChild(el("th", {}, first));
    columns.forEach(function (c) { head.appendChild(el("th", {}, c[1])); });
    t.appendChild(head);
    rows.forEach(function (r) {
      var name = r.group !== undefined ? r.group : r.tier;
      var tr = el("tr", {"data-table": kind, "data-group": name});
      tr.appendChild(el("td", {"data-col": "group"}, name));
      columns.forEach(function (c) {
        var attrs = {"data-table": kind, "data-group": name, "data-col": c[0]};
        tr.appendChild(el("td", attrs, c[2](r[c[0]])));
      });
      t.appendChild(tr);
    });
    box.appendChild(t);
  }

  function tiering(report) {
    var p = document.getElementById("tiering-summary");
    if (report.saved === null) {
      p.textContent = "No saving estimate: no priced requests on a strong tier.";
    } else {
      p.appendChild(document.createTextNode("Estimated saving against sending everything to tier \u201c" +
                                            report.strong_tier + "\u201d: "));
      p.appendChild(el("strong", {"data-metric": "tiering_saved"}, fmtCost(report.saved)));
      p.appendChild(document.createTextNode(" ("));
      p.appendChild(el("span", {"data-metric": "tiering_saved_fraction"}, fmtPct(report.saved_fraction)));
      p.appendChild(document.createTextNode(" of " + fmtCost(report.strong_cost) + ")"));
      var prices = report.strong_prices;
      p.appendChild(document.createTextNode(prices
        ? ", at its own prices of " + fmtCost(prices.prompt) + " per 1M prompt and " +
          fmtCost(prices.completion) + " per 1M completion tokens" +
          (report.strong_pricing === "fitted" ? " (recovered from its requests)." : ".")
        : ", at its blended rate of " + fmtCost(report.strong_rate_per_1m) + " per 1M tokens."));
    }
    table("table-tiering", "Tier", report.rows, [
      ["requests", "Requests", fmtInt], ["prompt_tokens", "Prompt", fmtInt],
      ["completion_tokens", "Completion", fmtInt], ["total_tokens", "Total tokens", fmtInt],
      ["cost", "Cost", fmtCost], ["strong_cost", "At strong prices", fmtCost], ["saved", "Saved", fmtCost]
    ]);
  }

  try {
    var data = JSON.parse(document.getElementById("usage-data").textContent);
    var r = data.range;
    document.getElementById("range").textContent =
      (r.first ? r.first + " \u2013 " + r.last : "no requests") + " (UTC), generated " + data.generated_at;
    cards(data.totals);
    var charts = function () {
      tokensChart(data.timeseries);
      latencyChart(data.by_model);
      shareChart(data.session_models);
    };
    charts();
    var pending = null;
    window.addEventListener("resize", function () {
      clearTimeout(pending);
      pending = setTimeout(charts, 150);
    });
    table("table-model", "Model", data.by_model, COLUMNS);
    table("table-session", "Session", data.by_session, COLUMNS);
    table("table-key", "Key", data.by_key, COLUMNS);
    table("table-endpoint", "Endpoint", data.by_endpoint, COLUMNS);
    tiering(data.tiering);
    document.body.setAttribute("data-rendered", "true");
  } catch (err) {
    var pre = document.getElementById("render-error");
    pre.hidden = false;
    pre.textContent = String(err && err.stack || err);
    document.body.setAttribute("data-rendered", "error");
  }
})();
