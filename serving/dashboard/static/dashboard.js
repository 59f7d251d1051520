/* streamrec live dashboard.
 *
 * Reads GET /dashboard/history once (to draw the last minute at once), then follows
 * GET /dashboard/events (Server-Sent Events, `event: snapshot`), keeping the last
 * MAX_SNAPSHOTS snapshots in a ring buffer for the time charts. "Try a user" calls
 * GET /feed/{user}?debug=true and GET /dashboard/user/{user}. Nothing else is fetched:
 * no libraries, no fonts, no CDN. Every chart is hand-drawn SVG.
 *
 * Any snapshot field may be missing or empty (early on, or from an older server): every
 * read goes through num/obj/arr and every chart says "No data yet" instead of failing.
 */
(function () {
  "use strict";

  var MAX_SNAPSHOTS = 120; // about a minute at one snapshot per 0.5 s
  var HOLD_MS = 5000; // a rank move stays marked this long
  var STALE_MS = 3000; // no snapshot for this long: say so
  var SVG_NS = "http://www.w3.org/2000/svg";
  var STAGES = ["user_state", "retrieval", "filtering", "scoring", "ordering"];
  // Distinct hues, each at least 3:1 against white (WCAG non-text contrast).
  var PALETTE = [
    "#0b5cad", "#c4420b", "#00795c", "#a4417f", "#8a6d00",
    "#5b3fa8", "#006b80", "#b0002a", "#5f6b7a", "#2e7d32",
  ];
  var TOTAL_COLOR = "#1b1f24";

  // ------------------------------------------------------------------ small helpers

  function num(v) {
    return typeof v === "number" && isFinite(v) ? v : null;
  }
  function obj(v) {
    return v !== null && typeof v === "object" && !Array.isArray(v) ? v : {};
  }
  function arr(v) {
    return Array.isArray(v) ? v : [];
  }
  function byId(id) {
    return document.getElementById(id);
  }

  function fmt(v) {
    v = num(v);
    if (v === null) return "–";
    var a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (a >= 100 || Number.isInteger(v)) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    if (a >= 1) return v.toFixed(2);
    if (a === 0) return "0";
    return v.toFixed(3);
  }
  function fmtMs(v) {
    return num(v) === null ? "–" : fmt(v) + " ms";
  }
  function pct(v) {
    v = num(v);
    return v === null ? "–" : (v * 100).toFixed(v < 0.1 ? 2 : 1) + "%";
  }

  /** An HTML element: attrs may hold text, class, and any attribute. */
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    (children || []).forEach(function (c) {
      if (c !== null && c !== undefined) node.append(c);
    });
    return node;
  }
  function svg(tag, attrs, children) {
    var node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    (children || []).forEach(function (c) {
      if (c) node.append(c);
    });
    return node;
  }
  function setAttrs(node, attrs) {
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") node.textContent = String(v);
      else node.setAttribute(k, String(v));
    });
  }
  function srOnly(text) {
    return el("span", { class: "sr-only", text: text });
  }

  var colors = new Map([["total", TOTAL_COLOR]]);
  /** One colour per series name across the whole page (a source keeps its colour). */
  function colorOf(name) {
    if (!colors.has(name)) colors.set(name, PALETTE[(colors.size - 1) % PALETTE.length]);
    return colors.get(name);
  }

  /** Keys found in any snapshot of the buffer under pick(snapshot). */
  function keysOver(snaps, pick) {
    var seen = new Set();
    snaps.forEach(function (s) {
      Object.keys(obj(pick(s))).forEach(function (k) {
        seen.add(k);
      });
    });
    return Array.from(seen).sort();
  }

  // ------------------------------------------------------------------ the ring buffer

  var buffer = []; // snapshots, oldest first, unique ts
  var received = 0;
  var lastReceivedAt = 0;

  /** Insert a snapshot in time order (history and the live stream may overlap). */
  function addSnapshot(s, fromHistory) {
    if (s === null || typeof s !== "object" || Array.isArray(s)) return false;
    var ts = num(s.ts);
    if (ts === null) {
      // A history snapshot without a time cannot be placed; a live one is the newest.
      if (fromHistory) return false;
      ts = Math.max(Date.now(), buffer.length ? buffer[buffer.length - 1].ts + 1 : 0);
    }
    s.ts = ts;
    var i = buffer.length;
    while (i > 0 && buffer[i - 1].ts > ts) i--;
    if (i > 0 && buffer[i - 1].ts === ts) return false;
    buffer.splice(i, 0, s);
    if (buffer.length > MAX_SNAPSHOTS) buffer.splice(0, buffer.length - MAX_SNAPSHOTS);
    return true;
  }

  function latest() {
    return buffer.length ? buffer[buffer.length - 1] : null;
  }

  // ------------------------------------------------------------------ SVG charts

  var W = 420; // every chart's viewBox width; the SVG scales to its panel

  /** The caption, plot, "no data" note and legend of a <figure class="chart">, made once. */
  function frame(fig) {
    if (!fig._frame) {
      var cap = el("figcaption", { id: fig.id + "-cap", text: fig.dataset.title || "" });
      var plot = el("div", {
        class: "plot",
        tabindex: "0",
        role: "img",
        "aria-label": (fig.dataset.title || "") + ": no data yet",
      });
      var nodata = el("p", { class: "nodata", text: "No data yet" });
      var legend = el("ul", { class: "legend", "aria-hidden": "true" });
      fig.replaceChildren(cap, plot, nodata, legend);
      fig._frame = { cap: cap, plot: plot, nodata: nodata, legend: legend };
    }
    return fig._frame;
  }

  function showNoData(fig, why) {
    var f = frame(fig);
    f.plot.replaceChildren();
    f.legend.replaceChildren();
    f.nodata.hidden = false;
    f.nodata.textContent = why || "No data yet";
    f.plot.setAttribute("aria-label", (fig.dataset.title || "") + ": " + (why || "no data yet"));
    fig.dataset.drawn = "false";
  }

  function niceCeil(x) {
    if (!(x > 0)) return 1;
    var e = Math.pow(10, Math.floor(Math.log10(x)));
    var f = x / e;
    var n = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
    return n * e;
  }

  /** Ticks from 0 (or below) up to a round number above max. */
  function yScale(min, max, fixedMax) {
    min = Math.min(0, min);
    if (fixedMax !== undefined) max = Math.max(max, fixedMax);
    if (!(max > min)) max = min + 1;
    var step = niceCeil((max - min) / 4);
    var lo = Math.floor(min / step) * step;
    var hi = fixedMax !== undefined && max <= fixedMax ? fixedMax : Math.ceil(max / step) * step;
    var ticks = [];
    for (var v = lo; v <= hi + step * 1e-9; v += step) ticks.push(v);
    return { lo: lo, hi: hi, ticks: ticks };
  }

  function xTicks(spanS) {
    var steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600];
    var step = steps[steps.length - 1];
    for (var i = 0; i < steps.length; i++) {
      if (spanS / steps[i] <= 6) {
        step = steps[i];
        break;
      }
    }
    var ticks = [];
    for (var s = 0; s <= spanS + 1e-9; s += step) ticks.push(s);
    return ticks;
  }
  function agoLabel(s) {
    if (s === 0) return "now";
    return s >= 120 ? "−" + Math.round(s / 60) + " min" : "−" + s + " s";
  }

  /** Axes and grid of a time chart; returns the scales. */
  function timeAxes(g, tMin, tMax, ys, H, m, yFmt) {
    var x = function (t) {
      return m.l + ((t - tMin) / (tMax - tMin)) * (W - m.l - m.r);
    };
    var y = function (v) {
      return H - m.b - ((v - ys.lo) / (ys.hi - ys.lo)) * (H - m.t - m.b);
    };
    ys.ticks.forEach(function (v) {
      var yy = y(v).toFixed(1);
      g.append(svg("line", { class: "gridline", x1: m.l, x2: W - m.r, y1: yy, y2: yy }));
      g.append(
        svg("text", { x: m.l - 5, y: yy, "text-anchor": "end", "dominant-baseline": "middle", text: yFmt(v) })
      );
    });
    var spanS = Math.round((tMax - tMin) / 1000);
    xTicks(spanS).forEach(function (s) {
      var xx = x(tMax - s * 1000).toFixed(1);
      g.append(svg("line", { class: "axis", x1: xx, x2: xx, y1: H - m.b, y2: H - m.b + 4 }));
      g.append(
        svg("text", { x: xx, y: H - m.b + 15, "text-anchor": s === spanS && s > 0 ? "start" : "middle", text: agoLabel(s) })
      );
    });
    g.append(svg("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
    g.append(svg("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
    return { x: x, y: y };
  }

  function legendItem(name, color, value, dashed) {
    return el("li", {}, [
      el("span", { class: "swatch" + (dashed ? " dashed" : ""), style: "background-color:" + color }),
      el("span", { text: name }),
      value !== undefined ? el("span", { class: "val", text: value }) : null,
    ]);
  }

  /**
   * A line chart over time.
   * spec.series: [{name, points: [{t, v|null}], dashed?, bold?}]; spec.format(v) for labels;
   * spec.yMax: a fixed top (e.g. 1 for rates) that the data may exceed.
   */
  function lineChart(fig, spec) {
    var f = frame(fig);
    var fmtV = spec.format || fmt;
    var series = spec.series.filter(function (s) {
      return s.points.some(function (p) {
        return p.v !== null;
      });
    });
    if (!series.length) return showNoData(fig, spec.noData);
    var H = spec.height || 150;
    var m = { l: 46, r: 12, t: 8, b: 22 };
    var tMin = Infinity, tMax = -Infinity, vMin = Infinity, vMax = -Infinity;
    series.forEach(function (s) {
      s.points.forEach(function (p) {
        tMin = Math.min(tMin, p.t);
        tMax = Math.max(tMax, p.t);
        if (p.v !== null) {
          vMin = Math.min(vMin, p.v);
          vMax = Math.max(vMax, p.v);
        }
      });
    });
    if (tMax - tMin < 1000) tMin = tMax - 1000;
    var ys = yScale(vMin, vMax, spec.yMax);
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, "aria-hidden": "true", focusable: "false" });
    var sc = timeAxes(root, tMin, tMax, ys, H, m, spec.axisFormat || fmt);
    var summary = [];
    f.legend.replaceChildren();
    series.forEach(function (s) {
      var d = "";
      var n = 0;
      var pen = false;
      s.points.forEach(function (p) {
        if (p.v === null) {
          pen = false;
          return;
        }
        var cmd = pen ? "L" : "M";
        d += cmd + sc.x(p.t).toFixed(1) + " " + sc.y(p.v).toFixed(1) + " ";
        if (!pen) d += "l0.01 0 "; // a lone point still shows, as a dot
        pen = true;
        n++;
      });
      var color = s.name === "total" ? TOTAL_COLOR : colorOf(s.name);
      root.append(
        svg("path", {
          class: "mark line" + (s.dashed ? " dashed" : ""),
          d: d.trim(),
          stroke: color,
          "stroke-width": s.bold ? 2.6 : 1.8,
          "data-series": s.name,
          "data-n": n,
        })
      );
      var last = null;
      for (var i = s.points.length - 1; i >= 0; i--) {
        if (s.points[i].v !== null) {
          last = s.points[i].v;
          break;
        }
      }
      f.legend.append(legendItem(s.name, color, fmtV(last), s.dashed));
      summary.push(s.name + " " + fmtV(last));
    });
    if (spec.hiddenNote) f.legend.append(el("li", { class: "muted", text: spec.hiddenNote }));
    f.plot.replaceChildren(root);
    f.nodata.hidden = true;
    f.plot.setAttribute("aria-label", (fig.dataset.title || "") + ", latest: " + summary.join(", "));
    fig.dataset.drawn = "true";
  }

  /**
   * Stacked areas over time. spec.times: [t]; spec.layers: [{name, values: [v|null]}] (null
   * counts as 0); the top is at least spec.yMax.
   */
  function stackedChart(fig, spec) {
    var f = frame(fig);
    var fmtV = spec.format || fmt;
    if (spec.times.length < 1 || !spec.layers.length) return showNoData(fig);
    var H = spec.height || 150;
    var m = { l: 46, r: 12, t: 8, b: 22 };
    var times = spec.times.slice();
    var tMax = times[times.length - 1];
    var tMin = times[0];
    if (tMax - tMin < 1000) tMin = tMax - 1000;
    var n = times.length;
    var base = new Array(n).fill(0);
    var tops = spec.layers.map(function (layer) {
      var top = layer.values.map(function (v, i) {
        return base[i] + (num(v) || 0);
      });
      var bottom = base.slice();
      base = top;
      return { layer: layer, top: top, bottom: bottom };
    });
    var ys = yScale(0, Math.max.apply(null, base), spec.yMax);
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, "aria-hidden": "true", focusable: "false" });
    var sc = timeAxes(root, tMin, tMax, ys, H, m, spec.axisFormat || fmt);
    // With one snapshot only, stretch it over the first second so the area shows.
    var xs = n === 1 ? [sc.x(tMin)] : times.map(sc.x);
    var xEnd = n === 1 ? [sc.x(tMax)] : null;
    f.legend.replaceChildren();
    var summary = [];
    tops.forEach(function (band) {
      var pts = [];
      var i;
      for (i = 0; i < n; i++) pts.push([xs[i], sc.y(band.top[i])]);
      if (xEnd) pts.push([xEnd[0], sc.y(band.top[0])]);
      var back = [];
      for (i = n - 1; i >= 0; i--) back.push([xs[i], sc.y(band.bottom[i])]);
      if (xEnd) back.unshift([xEnd[0], sc.y(band.bottom[0])]);
      var d =
        pts.concat(back).map(function (p, j) {
          return (j ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1);
        }).join(" ") + " Z";
      var color = colorOf(band.layer.name);
      root.append(
        svg("path", {
          class: "mark area",
          d: d,
          fill: color,
          "fill-opacity": 0.85,
          "data-series": band.layer.name,
          "data-n": n,
        })
      );
      var last = band.layer.values[n - 1];
      f.legend.append(legendItem(band.layer.name, color, fmtV(last)));
      summary.push(band.layer.name + " " + fmtV(last));
    });
    f.plot.replaceChildren(root);
    f.nodata.hidden = true;
    f.plot.setAttribute("aria-label", (fig.dataset.title || "") + ", latest: " + summary.join(", "));
    fig.dataset.drawn = "true";
  }

  /**
   * Horizontal bars, one row per category, one bar per group within it.
   * spec.categories: [label]; spec.groups: [{name, values: [v|null], dashed?}].
   */
  function barChart(fig, spec) {
    var f = frame(fig);
    var fmtV = spec.format || fmt;
    var cats = spec.categories;
    var groups = spec.groups;
    var any = groups.some(function (g) {
      return g.values.some(function (v) {
        return num(v) !== null;
      });
    });
    if (!cats.length || !any) return showNoData(fig);
    var barH = groups.length > 1 ? 12 : 14;
    var rowH = barH * groups.length + 7;
    var m = { l: 112, r: 56, t: 4, b: 4 };
    var H = m.t + m.b + rowH * cats.length;
    var max = 0;
    groups.forEach(function (g) {
      g.values.forEach(function (v) {
        if (num(v) !== null) max = Math.max(max, v);
      });
    });
    var top = max > 0 ? niceCeil(max) : 1;
    var width = W - m.l - m.r;
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, "aria-hidden": "true", focusable: "false" });
    root.append(svg("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
    var summary = [];
    cats.forEach(function (cat, ci) {
      var y0 = m.t + ci * rowH + 3;
      var label = cat.length > 16 ? cat.slice(0, 15) + "…" : cat;
      root.append(
        svg("text", { x: m.l - 6, y: (y0 + (barH * groups.length) / 2).toFixed(1), "text-anchor": "end", "dominant-baseline": "middle", text: label })
      );
      var parts = [];
      groups.forEach(function (g, gi) {
        var v = num(g.values[ci]);
        var w = v === null ? 0 : Math.max(0, (v / top) * width);
        var y = y0 + gi * barH;
        var color = groups.length > 1 ? colorOf(g.name) : spec.color || colorOf(cat);
        root.append(
          svg("path", {
            class: "mark bar",
            d: "M" + m.l + " " + y.toFixed(1) + " h" + w.toFixed(1) + " v" + (barH - 1) + " h" + (-w).toFixed(1) + " Z",
            fill: color,
            "fill-opacity": g.dashed ? 0.55 : 1,
            "data-series": g.name,
            "data-category": cat,
            "data-n": 1,
          })
        );
        root.append(
          svg("text", { class: "value", x: (m.l + w + 4).toFixed(1), y: (y + barH / 2).toFixed(1), "dominant-baseline": "middle", text: fmtV(v) })
        );
        parts.push((groups.length > 1 ? g.name + " " : "") + fmtV(v));
      });
      summary.push(cat + " " + parts.join(" / "));
    });
    f.legend.replaceChildren();
    if (groups.length > 1) {
      groups.forEach(function (g) {
        f.legend.append(legendItem(g.name, colorOf(g.name)));
      });
    }
    f.plot.replaceChildren(root);
    f.nodata.hidden = true;
    f.plot.setAttribute("aria-label", (fig.dataset.title || "") + ": " + summary.join(", "));
    fig.dataset.drawn = "true";
  }

  /** A small inline line of the last scores. */
  function sparkline(values) {
    var vs = arr(values).map(num).filter(function (v) {
      return v !== null;
    });
    var w = 96, h = 24, pad = 2;
    var root = svg("svg", { class: "spark", viewBox: "0 0 " + w + " " + h, "data-testid": "sparkline", "aria-hidden": "true", focusable: "false" });
    if (!vs.length) return root;
    if (vs.length === 1) vs = [vs[0], vs[0]];
    var lo = Math.min.apply(null, vs), hi = Math.max.apply(null, vs);
    if (hi - lo < 1e-12) {
      lo -= 1;
      hi += 1;
    }
    var pts = vs.map(function (v, i) {
      return [pad + (i / (vs.length - 1)) * (w - 2 * pad), h - pad - ((v - lo) / (hi - lo)) * (h - 2 * pad)];
    });
    root.append(
      svg("path", {
        class: "mark",
        d: pts.map(function (p, i) {
          return (i ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1);
        }).join(" "),
        "data-n": vs.length,
      })
    );
    var last = pts[pts.length - 1];
    root.append(svg("circle", { cx: last[0].toFixed(1), cy: last[1].toFixed(1), r: 2 }));
    return root;
  }

  // ------------------------------------------------------------------ select helpers

  /** Set a <select>'s options, rebuilding only when they changed (not to disturb a user
   * who has it focused); keeps the chosen value when it is still offered. */
  function syncOptions(select, options) {
    var sig = JSON.stringify(options);
    if (select._sig === sig) return;
    var keep = select.value;
    select.replaceChildren.apply(
      select,
      options.map(function (o) {
        return el("option", { value: o[0], text: o[1] });
      })
    );
    select._sig = sig;
    var values = options.map(function (o) {
      return o[0];
    });
    if (values.indexOf(keep) >= 0) select.value = keep;
  }

  // ------------------------------------------------------------------ 1. trending

  var trend = {
    listKey: null, // half-life|scope shown last
    lastTs: null, // snapshot ts whose moves were recorded for listKey
    moves: new Map(), // listKey|item -> {dir, delta, at}
    lastRanks: new Map(), // item -> rank, when the server sends no previous_rank
  };

  function renderTrending(snap) {
    var t = obj(snap && snap.trending);
    var lists = obj(t.lists);
    var halfLives = arr(t.half_lives)
      .filter(function (h) {
        return h && h.key !== undefined && h.key !== null;
      })
      .map(function (h) {
        return [String(h.key), String(h.label !== undefined ? h.label : h.key)];
      });
    if (!halfLives.length) {
      halfLives = Object.keys(lists).map(function (k) {
        return [k, k + " s"];
      });
    }
    var hlSelect = byId("trend-half-life");
    syncOptions(hlSelect, halfLives);
    var hl = hlSelect.value;
    var byScope = obj(lists[hl]);

    var catSelect = byId("trend-category");
    var cats = arr(t.categories).map(String);
    Object.keys(byScope).forEach(function (k) {
      if (k !== "global" && cats.indexOf(k) < 0) cats.push(k);
    });
    var chosen = catSelect.value || "global";
    var options = [["global", "All categories"]].concat(
      cats.map(function (c) {
        return [c, c];
      })
    );
    if (chosen !== "global" && cats.indexOf(chosen) < 0) {
      options.push([chosen, chosen + " (not in the latest top)"]);
    }
    syncOptions(catSelect, options);
    var scope = catSelect.value || "global";

    var rows = arr(byScope[scope]).filter(function (r) {
      return r && r.item_id !== undefined && r.item_id !== null;
    });
    rows.sort(function (a, b) {
      return (num(a.rank) || 0) - (num(b.rank) || 0);
    });
    var hlLabel = (halfLives.find(function (h) {
      return h[0] === hl;
    }) || [hl, hl])[1];
    byId("trending-caption").textContent =
      "Top items, " + hlLabel + " half-life, " + (scope === "global" ? "all categories" : scope);

    var empty = byId("trending-empty");
    if (!rows.length) {
      empty.hidden = false;
      empty.textContent = !snap
        ? "Waiting for the first snapshot…"
        : scope === "global"
          ? "No trending items yet."
          : "No items in “" + scope + "” in the latest snapshot.";
    } else {
      empty.hidden = true;
    }
    renderTrendingRows(rows, hl + "|" + scope, snap ? snap.ts : null);
  }

  function moveCell(td, move) {
    td.className = "move";
    td.replaceChildren();
    if (!move) {
      td.classList.add("same");
      td.append(el("span", { "aria-hidden": "true", text: "–" }), srOnly("no change"));
      td.title = "No change in the last " + HOLD_MS / 1000 + " s";
    } else if (move.dir === "new") {
      td.classList.add("new");
      td.append(el("span", { "aria-hidden": "true", text: "● " }), "new");
      td.title = "New in this list";
    } else {
      var up = move.dir === "up";
      td.classList.add(up ? "up" : "down");
      td.append(
        el("span", { "aria-hidden": "true", text: up ? "▲ " : "▼ " }),
        srOnly(up ? "up " : "down "),
        String(move.delta)
      );
      td.title = (up ? "Up " : "Down ") + move.delta + " place" + (move.delta === 1 ? "" : "s");
    }
    td.dataset.move = move ? move.dir : "same";
  }

  function flash(tr, dir) {
    tr.classList.remove("flash-up", "flash-down", "flash-new");
    void tr.offsetWidth; // restart the animation
    tr.classList.add("flash-" + dir);
  }

  function renderTrendingRows(rows, listKey, ts) {
    var body = byId("trending-body");
    var sameList = listKey === trend.listKey;
    if (!sameList) {
      body.replaceChildren();
      trend.lastRanks = new Map();
    }
    var fresh = !sameList || ts !== trend.lastTs; // a snapshot not yet seen for this list
    trend.listKey = listKey;
    trend.lastTs = ts;

    // FLIP: where each row is now, before the reorder.
    var before = new Map();
    var existing = new Map();
    Array.prototype.forEach.call(body.children, function (tr) {
      before.set(tr.dataset.item, tr.getBoundingClientRect().top);
      existing.set(tr.dataset.item, tr);
    });

    var now = Date.now();
    var flashes = [];
    var ranks = new Map();
    rows.forEach(function (row) {
      var id = String(row.item_id);
      var rank = num(row.rank);
      ranks.set(id, rank);
      var prev = row.previous_rank;
      if (prev === undefined) prev = trend.lastRanks.has(id) ? trend.lastRanks.get(id) : null;
      prev = num(prev);
      var key = listKey + "|" + id;
      if (fresh && rank !== null) {
        var move = null;
        if (prev === null) move = { dir: "new", delta: 0 };
        else if (prev > rank) move = { dir: "up", delta: prev - rank };
        else if (prev < rank) move = { dir: "down", delta: rank - prev };
        if (move) {
          move.at = now;
          trend.moves.set(key, move);
          if (sameList) flashes.push([id, move.dir]);
        }
      }
      var held = trend.moves.get(key);
      if (held && now - held.at >= HOLD_MS) {
        trend.moves.delete(key);
        held = null;
      }

      var tr = existing.get(id);
      if (!tr) {
        tr = el("tr", { "data-testid": "trending-row", "data-item": id }, [
          el("td", { class: "num", "data-testid": "trending-rank" }),
          el("td", { "data-testid": "trending-move" }),
          el("td", { class: "id", "data-testid": "trending-item" }),
          el("td", { class: "num", "data-testid": "trending-score" }),
          el("td", { "data-testid": "trending-spark" }),
        ]);
      }
      existing.delete(id);
      var cells = tr.children;
      cells[0].textContent = rank === null ? "–" : String(rank);
      moveCell(cells[1], held);
      cells[2].replaceChildren(id);
      if (row.rising === true) cells[2].append(el("span", { class: "badge rising", "data-testid": "rising", text: "rising" }));
      cells[3].textContent = fmt(num(row.score));
      cells[4].replaceChildren(sparkline(row.spark));
      tr.dataset.rank = rank === null ? "" : String(rank);
      body.append(tr); // appending an existing row moves it: the new order
    });
    existing.forEach(function (tr) {
      tr.remove();
    });
    trend.lastRanks = ranks;
    // Forget moves of items that left every list a while ago.
    trend.moves.forEach(function (m, k) {
      if (now - m.at >= HOLD_MS) trend.moves.delete(k);
    });

    // FLIP: slide each moved row from where it was to where it is.
    var reduce = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    if (sameList && !reduce) {
      var moved = [];
      Array.prototype.forEach.call(body.children, function (tr) {
        var old = before.get(tr.dataset.item);
        if (old === undefined) return;
        var dy = old - tr.getBoundingClientRect().top;
        if (Math.abs(dy) < 1) return;
        tr.style.transition = "none";
        tr.style.transform = "translateY(" + dy.toFixed(1) + "px)";
        moved.push(tr);
      });
      if (moved.length) {
        void body.offsetHeight;
        moved.forEach(function (tr) {
          tr.style.transition = "transform 450ms ease-out";
          tr.style.transform = "";
        });
      }
    }
    flashes.forEach(function (f) {
      var tr = body.querySelector('tr[data-item="' + cssEscape(f[0]) + '"]');
      if (tr) flash(tr, f[1]);
    });
  }

  function cssEscape(s) {
    return window.CSS && CSS.escape ? CSS.escape(s) : s.replace(/["\\]/g, "\\$&");
  }

  // ------------------------------------------------------------------ KPIs

  function kpis(dl, items) {
    dl.replaceChildren.apply(
      dl,
      items.map(function (it) {
        return el("div", { "data-testid": "kpi-" + it[2] }, [el("dt", { text: it[0] }), el("dd", { text: it[1] })]);
      })
    );
  }

  function points(pick) {
    return buffer.map(function (s) {
      return { t: s.ts, v: num(pick(s)) };
    });
  }

  // ------------------------------------------------------------------ 2. stream health

  function stream(s) {
    return obj(s.stream);
  }

  function renderStream() {
    var last = latest();
    var st = last ? stream(last) : {};
    var fresh = obj(st.freshness_ms);
    var rows = [
      ["Events in /s", fmt(totalEvents(st)), "events"],
      ["Lag", fmt(totalLag(st)), "lag"],
      ["Dead-lettered", fmt(num(st.dead_lettered)), "dead-letter"],
      ["Freshness p50", fmtMs(fresh.p50), "freshness-p50"],
      ["Freshness p99", fmtMs(fresh.p99), "freshness-p99"],
      ["Workers", fmt(num(st.workers)), "workers"],
    ];
    // Only with a read replica: how far the API's reads trail the primary, and which it reads.
    if (st.replica) {
      var replica = obj(st.replica);
      rows.push(["Replica lag p99", fmtMs(replica.p99_ms), "replica-lag"]);
      rows.push(["Reads from", String(replica.reading || "-"), "replica-reading"]);
    }
    kpis(byId("stream-kpis"), rows);

    var types = keysOver(buffer, function (s) {
      return stream(s).events_per_s;
    });
    lineChart(byId("chart-events"), {
      series: [{ name: "total", bold: true, points: points(function (s) { return totalEvents(stream(s)); }) }].concat(
        types.map(function (type) {
          return { name: type, points: points(function (s) { return obj(stream(s).events_per_s)[type]; }) };
        })
      ),
    });

    var parts = keysOver(buffer, function (s) {
      return stream(s).lag;
    });
    var hidden = "";
    var MAX_PARTS = 8;
    if (parts.length > MAX_PARTS) {
      // The partitions that lagged most in the window; the total still counts them all.
      var peak = function (p) {
        return Math.max.apply(null, buffer.map(function (s) { return num(obj(stream(s).lag)[p]) || 0; }));
      };
      hidden = "+" + (parts.length - MAX_PARTS) + " quieter partitions";
      parts = parts
        .map(function (p) { return [p, peak(p)]; })
        .sort(function (a, b) { return b[1] - a[1] || (a[0] < b[0] ? -1 : 1); })
        .slice(0, MAX_PARTS)
        .map(function (x) { return x[0]; })
        .sort();
    }
    lineChart(byId("chart-lag"), {
      series: [{ name: "total", bold: true, points: points(function (s) { return totalLag(stream(s)); }) }].concat(
        parts.map(function (p) {
          return { name: p, points: points(function (s) { return obj(stream(s).lag)[p]; }) };
        })
      ),
      hiddenNote: hidden,
    });

    lineChart(byId("chart-dead-letter"), {
      series: [{ name: "dead-lettered", points: points(function (s) { return stream(s).dead_lettered; }) }],
    });

    lineChart(byId("chart-freshness"), {
      series: [
        { name: "p50", points: points(function (s) { return obj(stream(s).freshness_ms).p50; }) },
        { name: "p99", dashed: true, points: points(function (s) { return obj(stream(s).freshness_ms).p99; }) },
      ].concat(
        st.replica
          ? [{ name: "replica lag", points: points(function (s) { return obj(stream(s).replica).last_ms; }) }]
          : []
      ),
      format: fmtMs,
    });
  }

  function sumValues(o) {
    var total = null;
    Object.keys(o).forEach(function (k) {
      var v = num(o[k]);
      if (v !== null) total = (total || 0) + v;
    });
    return total;
  }
  function totalEvents(st) {
    var v = num(st.events_per_s_total);
    return v !== null ? v : sumValues(obj(st.events_per_s));
  }
  function totalLag(st) {
    var v = num(st.lag_total);
    return v !== null ? v : sumValues(obj(st.lag));
  }

  // ------------------------------------------------------------------ 3. funnel

  function funnel(s) {
    return obj(s.funnel);
  }

  function stageOrder(names) {
    var known = STAGES.filter(function (n) {
      return names.indexOf(n) >= 0;
    });
    return known.concat(
      names.filter(function (n) {
        return STAGES.indexOf(n) < 0 && n !== "total";
      }).sort()
    );
  }

  /** The newest snapshot in which pick(snapshot) is a non-empty object. */
  function newestWith(pick) {
    for (var i = buffer.length - 1; i >= 0; i--) {
      var o = obj(pick(buffer[i]));
      if (Object.keys(o).length) return o;
    }
    return {};
  }

  function renderFunnel() {
    var last = latest();
    var fu = last ? funnel(last) : {};
    var lat = obj(fu.latency_ms);
    kpis(byId("funnel-kpis"), [
      ["Feeds /s", fmt(num(fu.requests_per_s)), "requests"],
      ["Latency p50", fmtMs(lat.p50), "latency-p50"],
      ["Latency p99", fmtMs(lat.p99), "latency-p99"],
    ]);
    lineChart(byId("chart-requests"), {
      series: [{ name: "feeds/s", points: points(function (s) { return funnel(s).requests_per_s; }) }],
      height: 120,
    });
    lineChart(byId("chart-latency"), {
      series: [
        { name: "p50", points: points(function (s) { return obj(funnel(s).latency_ms).p50; }) },
        { name: "p99", dashed: true, points: points(function (s) { return obj(funnel(s).latency_ms).p99; }) },
      ],
      format: fmtMs,
      height: 120,
    });

    var stages = newestWith(function (s) { return funnel(s).stage_ms; });
    var names = stageOrder(Object.keys(stages));
    barChart(byId("chart-stages"), {
      categories: names,
      groups: [
        { name: "p50", values: names.map(function (n) { return obj(stages[n]).p50; }) },
        { name: "p99", dashed: true, values: names.map(function (n) { return obj(stages[n]).p99; }) },
      ],
      format: fmtMs,
    });

    var cands = newestWith(function (s) { return funnel(s).candidates; });
    var sources = Object.keys(cands).sort();
    barChart(byId("chart-candidates"), {
      categories: sources,
      groups: [{ name: "candidates", values: sources.map(function (k) { return cands[k]; }) }],
    });

    var removed = newestWith(function (s) { return funnel(s).removed; });
    var filters = Object.keys(removed).sort();
    barChart(byId("chart-removed"), {
      categories: filters,
      groups: [{ name: "removed", values: filters.map(function (k) { return removed[k]; }) }],
      color: "#5f6b7a",
    });
  }

  // ------------------------------------------------------------------ 4. bandit

  var banditChosenByUser = false;

  function segmentsOf(s) {
    return obj(obj(s.bandit).segments);
  }

  function renderBandit() {
    var segs = keysOver(buffer, segmentsOf);
    var select = byId("bandit-segment");
    syncOptions(
      select,
      segs.map(function (k) {
        return [k, k];
      })
    );
    if (!banditChosenByUser && segs.length) {
      // Default: the busiest segment now (most decayed impressions).
      var now = latest() ? segmentsOf(latest()) : {};
      var busiest = segs.slice().sort(function (a, b) {
        return shown(now[b]) - shown(now[a]) || (a < b ? -1 : 1);
      })[0];
      select.value = busiest;
    }
    var seg = select.value;
    var snaps = buffer.filter(function (s) {
      return Object.keys(obj(segmentsOf(s)[seg])).length > 0;
    });
    var sources = keysOver(snaps, function (s) {
      return segmentsOf(s)[seg];
    });
    var at = function (s, source, field) {
      return num(obj(obj(segmentsOf(s)[seg])[source])[field]);
    };
    if (!seg || !snaps.length) {
      showNoData(byId("chart-bandit-shares"));
      showNoData(byId("chart-bandit-ctr"));
    } else {
      stackedChart(byId("chart-bandit-shares"), {
        times: snaps.map(function (s) { return s.ts; }),
        layers: sources.map(function (src) {
          return { name: src, values: snaps.map(function (s) { return at(s, src, "share"); }) };
        }),
        yMax: 1,
        format: pct,
        axisFormat: function (v) { return Math.round(v * 100) + "%"; },
      });
      lineChart(byId("chart-bandit-ctr"), {
        noData: "No click-rate yet: clicks count once their attribution window has closed",
        series: sources.map(function (src) {
          return {
            name: src,
            points: snaps.map(function (s) { return { t: s.ts, v: at(s, src, "ctr") }; }),
          };
        }),
        format: pct,
        axisFormat: function (v) { return (v * 100).toFixed(v && v < 0.1 ? 1 : 0) + "%"; },
      });
    }
    var body = byId("bandit-body");
    var lastSnap = snaps.length ? snaps[snaps.length - 1] : null;
    body.replaceChildren.apply(
      body,
      sources.map(function (src) {
        return el("tr", { "data-testid": "bandit-row" }, [
          el("td", {}, [
            el("span", { class: "swatch-inline", "aria-hidden": "true", style: "color:" + colorOf(src), text: "■ " }),
            src,
          ]),
          el("td", { class: "num", text: pct(lastSnap && at(lastSnap, src, "share")) }),
          el("td", { class: "num", text: pct(lastSnap && at(lastSnap, src, "ctr")) }),
          el("td", { class: "num", text: fmt(lastSnap && at(lastSnap, src, "shown")) }),
        ]);
      })
    );
  }

  function shown(segment) {
    var total = 0;
    Object.keys(obj(segment)).forEach(function (src) {
      total += num(obj(segment[src]).shown) || 0;
    });
    return total;
  }

  // ------------------------------------------------------------------ rendering

  var renderPending = false;
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    setTimeout(function () {
      renderPending = false;
      render();
    }, 0);
  }

  function hasTrending(s) {
    return Object.keys(obj(obj(s.trending).lists)).length > 0;
  }

  function render() {
    var snap = latest();
    // While the store is unreachable the server sends bare snapshots: keep showing the
    // last trending lists, and say why nothing moves.
    var trendSnap = snap;
    for (var i = buffer.length - 1; i >= 0 && trendSnap && !hasTrending(trendSnap); i--) {
      if (hasTrending(buffer[i])) trendSnap = buffer[i];
    }
    var degraded = snap && snap.degraded ? String(snap.degraded) : "";
    var banner = byId("degraded-banner");
    banner.hidden = !degraded;
    var bannerText = degraded ? "Store unavailable: " + degraded : "";
    if (banner.textContent !== bannerText) banner.textContent = bannerText;
    var asOf = byId("trending-as-of");
    asOf.hidden = !(trendSnap && snap && trendSnap !== snap);
    if (!asOf.hidden) {
      asOf.textContent = "Showing the list of " + new Date(trendSnap.ts).toLocaleTimeString() + ".";
    }
    // One failing panel must not stop the others.
    [
      function () { renderTrending(trendSnap); },
      renderStream,
      renderFunnel,
      renderBandit,
    ].forEach(function (draw) {
      try {
        draw();
      } catch (err) {
        console.error("dashboard: a panel failed to draw", err);
      }
    });
    document.body.dataset.snapshots = String(received);
    if (snap) document.body.dataset.lastTs = String(snap.ts);
  }

  // ------------------------------------------------------------------ connection

  var source = null;
  var connState = "connecting";

  function setStatus(state, text) {
    connState = state;
    document.querySelector(".status .dot").dataset.state = state;
    var node = byId("status-text");
    if (node.textContent !== text) node.textContent = text;
    document.body.dataset.connection = state;
  }

  function receive(data) {
    var s;
    try {
      s = JSON.parse(data);
    } catch (err) {
      console.warn("streamrec dashboard: ignored a snapshot that is not JSON");
      return;
    }
    if (addSnapshot(s)) {
      received++;
      lastReceivedAt = Date.now();
      if (connState !== "live") setStatus("live", "Live");
      scheduleRender();
    }
  }

  function connect() {
    if (!window.EventSource) {
      setStatus("down", "This browser cannot follow the live stream");
      return;
    }
    source = new EventSource("/dashboard/events");
    source.addEventListener("open", function () {
      setStatus("live", "Live");
    });
    source.addEventListener("snapshot", function (ev) {
      receive(ev.data);
    });
    source.addEventListener("message", function (ev) {
      receive(ev.data); // a server that sends unnamed events
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        // EventSource gives up on an HTTP error: try again ourselves, later.
        setStatus("down", "Disconnected, retrying…");
        source.close();
        setTimeout(connect, 5000);
      } else {
        setStatus("connecting", "Reconnecting…");
      }
    });
  }

  function loadHistory() {
    return fetch("/dashboard/history", { headers: { Accept: "application/json" } })
      .then(function (r) {
        return r.ok ? r.json() : { snapshots: [] };
      })
      .then(function (body) {
        arr(obj(body).snapshots).forEach(function (s) {
          addSnapshot(s, true);
        });
        scheduleRender();
      })
      .catch(function () {
        /* the live stream fills the charts anyway */
      });
  }

  function tickAge() {
    var node = byId("status-age");
    if (!lastReceivedAt) {
      node.textContent = "";
      return;
    }
    var age = Date.now() - lastReceivedAt;
    node.textContent = "updated " + (age < 1000 ? "just now" : Math.round(age / 1000) + " s ago");
    if (age > STALE_MS && connState === "live") setStatus("stale", "No updates");
    else if (age <= STALE_MS && connState === "stale") setStatus("live", "Live");
  }

  // ------------------------------------------------------------------ 5. try a user

  function renderFeed(body, ms) {
    var items = arr(body.items);
    var meta = byId("try-meta");
    meta.replaceChildren(
      "segment ",
      el("code", { text: String(body.segment || "–") }),
      " · policy ",
      el("code", { text: String(body.policy_version || "–") }),
      " · request ",
      el("code", { text: String(body.request_id || "–") })
    );
    if (body.degraded) meta.append(el("span", { class: "badge degraded", text: "degraded" }));
    var tbody = byId("try-feed-body");
    tbody.replaceChildren.apply(
      tbody,
      items.map(function (it, i) {
        it = obj(it);
        var others = arr(it.sources).filter(function (s) {
          return s !== it.source;
        });
        return el("tr", { "data-testid": "try-user-feed-row" }, [
          el("td", { class: "num", text: String(i + 1) }),
          el("td", { class: "id", "data-testid": "cell-item", text: String(it.item_id) }),
          el("td", { "data-testid": "cell-category", text: it.category ? String(it.category) : "–" }),
          el("td", { "data-testid": "cell-source" }, [
            el("strong", { text: String(it.source || "–") }),
            others.length ? el("span", { class: "muted", text: " also " + others.join(", ") }) : null,
          ]),
          el("td", { class: "num", "data-testid": "cell-score", text: fmt(num(it.score)) }),
          el("td", { class: "num", "data-testid": "cell-propensity", text: num(it.propensity) === null ? "–" : num(it.propensity).toFixed(3) }),
        ]);
      })
    );
    if (!items.length) {
      tbody.append(el("tr", {}, [el("td", { colspan: 6, class: "muted", text: "The feed is empty." })]));
    }
    renderTrace(obj(body.trace));
    return items.length;
  }

  function smallTable(caption, head, rows, testid) {
    return el("table", { class: "compact", "data-testid": testid }, [
      el("caption", { text: caption }),
      el("thead", {}, [
        el("tr", {}, head.map(function (h, i) {
          return el("th", { scope: "col", class: i ? "num" : null, text: h });
        })),
      ]),
      el("tbody", {}, rows.map(function (r) {
        return el("tr", {}, r.map(function (c, i) {
          return el("td", { class: i ? "num" : null, text: c });
        }));
      })),
    ]);
  }

  function renderTrace(trace) {
    var stages = obj(trace.stages_ms);
    var names = stageOrder(Object.keys(stages));
    var fig = byId("chart-try-stages");
    fig.dataset.title = "Time per stage (ms)" + (num(stages.total) !== null ? ", total " + fmtMs(stages.total) : "");
    frame(fig).cap.textContent = fig.dataset.title;
    barChart(fig, {
      categories: names,
      groups: [{ name: "ms", values: names.map(function (n) { return stages[n]; }) }],
      format: fmtMs,
      color: "#0b5cad",
    });
    var sources = obj(trace.sources);
    var filters = obj(trace.filters_removed);
    var scorer = obj(trace.scorer);
    var ordering = obj(trace.ordering);
    var probs = obj(ordering.first_slot_probabilities);
    var tables = [
      smallTable(
        "Candidates per source",
        ["source", "candidates", "ms"],
        Object.keys(sources).sort().map(function (k) {
          var s = obj(sources[k]);
          return [k + (s.timed_out ? " (timed out)" : ""), fmt(num(s.candidates)), fmt(num(s.ms))];
        }),
        "trace-sources"
      ),
      smallTable(
        "Removed per filter",
        ["filter", "removed"],
        Object.keys(filters).sort().map(function (k) {
          return [k, fmt(num(filters[k]))];
        }),
        "trace-filters"
      ),
      smallTable(
        "First slot: source probabilities",
        ["source", "p"],
        Object.keys(probs).sort().map(function (k) {
          return [k, num(probs[k]) === null ? "–" : num(probs[k]).toFixed(3)];
        }),
        "trace-ordering"
      ),
      smallTable(
        "Scorer and ordering",
        ["", "value"],
        [
          ["model", String(scorer.model !== undefined ? scorer.model : "–")],
          ["examples", fmt(num(scorer.examples))],
          ["segment", String(ordering.segment !== undefined ? ordering.segment : "–")],
          ["slots", fmt(num(ordering.slots))],
        ],
        "trace-scorer"
      ),
    ];
    byId("try-trace-tables").replaceChildren.apply(byId("try-trace-tables"), tables);
  }

  function renderSession(info, error) {
    var box = byId("try-session");
    if (error) {
      box.replaceChildren(el("p", { class: "muted", text: "Session information unavailable (" + error + ")." }));
      return;
    }
    var cats = arr(info.session_categories).filter(function (c) {
      return c && c.category !== undefined;
    });
    var parts = [];
    if (!cats.length) {
      parts.push(
        el("p", {
          class: "muted",
          "data-testid": "try-user-no-session",
          text: info.has_session
            ? "The session has no nearest categories yet."
            : "No active session: a new user, or none since the last session gap.",
        })
      );
    } else {
      var best = Math.max.apply(null, cats.map(function (c) { return Math.abs(num(c.similarity) || 0); })) || 1;
      parts.push(
        el("ol", { class: "session-list", "aria-label": "Nearest categories, best first" }, cats.map(function (c) {
          var sim = num(c.similarity);
          var w = sim === null ? 0 : Math.max(0, (sim / best) * 100);
          return el("li", { "data-testid": "try-user-session-category" }, [
            el("span", { text: String(c.category) }),
            el("span", { class: "bar", "aria-hidden": "true" }, [el("span", { style: "width:" + w.toFixed(0) + "%" })]),
            el("span", { class: "num", text: sim === null ? "–" : sim.toFixed(2) }),
          ]);
        }))
      );
    }
    var recent = arr(info.recent).filter(function (r) {
      return r && r.item_id !== undefined;
    });
    if (recent.length) {
      parts.push(
        el("p", {
          class: "recent",
          "data-testid": "try-user-recent",
          text: "Recent: " + recent.slice(0, 10).map(function (r) {
            return String(r.item_id) + (r.category ? " (" + r.category + ")" : "");
          }).join(", "),
        })
      );
    }
    box.replaceChildren.apply(box, parts);
  }

  function getJson(url) {
    return fetch(url, { headers: { Accept: "application/json" } }).then(function (r) {
      return r.json().then(
        function (body) {
          return { ok: r.ok, status: r.status, body: body };
        },
        function () {
          return { ok: false, status: r.status, body: {} };
        }
      );
    });
  }

  function errorText(res) {
    var detail = obj(res.body).detail;
    if (Array.isArray(detail) && detail.length) detail = obj(detail[0]).msg;
    return "HTTP " + res.status + (typeof detail === "string" ? ": " + detail : "");
  }

  var tryRequest = 0;
  function tryUser(ev) {
    ev.preventDefault();
    var input = byId("try-user-id");
    var user = input.value.trim();
    var status = byId("try-status");
    if (!user) {
      status.textContent = "Enter a user id first.";
      input.focus();
      return;
    }
    var k = parseInt(byId("try-k").value, 10);
    if (!(k >= 1 && k <= 200)) k = 20;
    var mine = ++tryRequest;
    var button = byId("try-form").querySelector("button");
    button.disabled = true;
    byId("try-result").setAttribute("aria-busy", "true");
    status.textContent = "Loading the feed of " + user + "…";
    var started = performance.now();
    var id = encodeURIComponent(user);
    Promise.all([
      getJson("/feed/" + id + "?k=" + k + "&debug=true"),
      getJson("/dashboard/user/" + id).catch(function (err) {
        return { ok: false, status: 0, body: {}, error: String(err) };
      }),
    ])
      .then(function (res) {
        if (mine !== tryRequest) return; // a newer request won
        var feed = res[0], info = res[1];
        if (!feed.ok) {
          status.textContent = "Could not load the feed of " + user + " (" + errorText(feed) + ").";
          status.classList.add("error");
          return;
        }
        status.classList.remove("error");
        byId("try-result").hidden = false;
        var count = renderFeed(obj(feed.body), performance.now() - started);
        renderSession(obj(info.body), info.ok ? null : info.error || errorText(info));
        var total = num(obj(obj(obj(feed.body).trace).stages_ms).total);
        status.textContent =
          "Feed of " + count + " item" + (count === 1 ? "" : "s") + " for " + user +
          (total !== null ? ", served in " + fmtMs(total) : "") + ".";
      })
      .catch(function (err) {
        if (mine !== tryRequest) return;
        status.textContent = "Could not load the feed of " + user + " (" + err + ").";
        status.classList.add("error");
      })
      .then(function () {
        if (mine !== tryRequest) return;
        button.disabled = false;
        byId("try-result").removeAttribute("aria-busy");
      });
  }

  // ------------------------------------------------------------------ start

  function start() {
    document.querySelectorAll("figure.chart").forEach(function (fig) {
      frame(fig);
    });
    byId("trend-half-life").addEventListener("change", render);
    byId("trend-category").addEventListener("change", render);
    byId("bandit-segment").addEventListener("change", function () {
      banditChosenByUser = true;
      render();
    });
    byId("try-form").addEventListener("submit", tryUser);
    render();
    loadHistory();
    connect();
    setInterval(tickAge, 1000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
