// idcmap viewer, slide page: OpenSeadragon over Deep Zoom tiles, heatmap overlay, numbered
// IDC regions (SVG), the QC stage's artefacts coloured by kind (SVG), a scale bar. Coordinates: level-0 px of QuPath's frame = Deep Zoom px.
"use strict";
(function () {
  const OSD = window.OpenSeadragon;
  const id = decodeURIComponent(location.pathname.replace(/^\/view\//, "").replace(/\/$/, ""));
  const base = "/slides/" + encodeURIComponent(id);
  const state = { viewer: null, heat: null, info: null, selected: null, width: 1, svg: null, qcSvg: null };
  // test hooks: window.idcmap.ready() is true once every image on the page has loaded
  window.idcmap = {
    state: state,
    ready: function () {
      const v = state.viewer;
      if (!v || !state.info || !state.opened) return false;
      const n = v.world.getItemCount();
      const expected = 1 + (state.info.heatmap ? 1 : 0);
      if (n < expected) return false;
      for (let i = 0; i < n; i++) {
        if (!v.world.getItemAt(i).getFullyLoaded()) return false;
      }
      return true;
    },
    // viewer-element px of a level-0 px (QuPath frame): for tests that click on the slide
    pixel: function (x, y) {
      const p = imageToPixel(x, y);
      const r = document.getElementById("osd").getBoundingClientRect();
      return [p.x + r.left, p.y + r.top];
    },
  };

  function $(sel) { return document.querySelector(sel); }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || !Number.isFinite(Number(v))) return "—";
    return Number(v).toLocaleString("en-GB", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  function fmtAny(v) {
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return v.toLocaleString("en-GB");
    const a = Math.abs(v);
    const d = a >= 100 ? 1 : a >= 1 ? 2 : 3;
    return fmt(v, d);
  }
  function areaMm2(m) {
    for (const k of ["Area (mm²)", "Area (mm^2)", "Area mm^2", "Area mm²"]) {
      if (typeof m[k] === "number") return m[k];
    }
    for (const k of ["Area µm^2", "Area (µm²)", "Area um^2"]) {
      if (typeof m[k] === "number") return m[k] / 1e6;
    }
    return null;
  }
  function greatest(m) {
    for (const k of ["Greatest dimension mm", "Greatest dimension (mm)"]) {
      if (typeof m[k] === "number") return m[k];
    }
    return null;
  }

  // ------------------------------------------------------------------ side panel

  function showBanner(text) {
    $("#banner-text").textContent = text;
    $("#banner").hidden = false;
  }

  function fillSide(info) {
    document.title = "idcmap · " + info.slide;
    $("#name").textContent = info.slide;
    const mpp = info.mpp ? fmt(info.mpp, 3) + " µm/px" : "µm/px unknown";
    $("#sub").textContent = [info.width_px + " × " + info.height_px + " px", mpp, info.vendor, info.model].filter(Boolean).join(" · ");
    const dl = $("#figures");
    const figs = [
      ["IDC area", fmt(info.idc_area_mm2, 2) + " mm²"],
      ["IDC % of tissue", fmt(info.idc_percent, 1) + " %"],
      ["Foci", info.foci === null || info.foci === undefined ? "—" : String(info.foci)],
      ["Largest focus, greatest dimension", info.largest_focus_mm === null || info.largest_focus_mm === undefined ? "—" : fmt(info.largest_focus_mm, 1) + " mm"],
      ["Tissue area", fmt(info.tissue_area_mm2, 1) + " mm²"],
      ["Threshold", info.threshold === null || info.threshold === undefined ? "—" : fmt(info.threshold, 2)],
    ];
    for (const [k, v] of figs) {
      dl.appendChild(el("dt", null, k));
      dl.appendChild(el("dd", null, v.replace(/^— .*/, "—")));
    }
    const ul = $("#downloads");
    for (const name of info.downloads) {
      const li = el("li");
      const a = el("a", null, name);
      a.href = base + "/files/" + encodeURIComponent(name);
      a.setAttribute("download", name);
      li.appendChild(a);
      ul.appendChild(li);
    }
    legend(info);
    const tb = $("#regions tbody");
    if (!info.regions.length) $("#regions-none").hidden = false;
    for (const r of info.regions) {
      const tr = el("tr");
      tr.dataset.number = r.number;
      const td = el("td");
      td.appendChild(el("span", "badge", String(r.number)));
      tr.appendChild(td);
      tr.appendChild(el("td", "num", fmt(areaMm2(r.measurements), 2)));
      tr.appendChild(el("td", "num", fmt(greatest(r.measurements), 1)));
      tr.addEventListener("click", () => select(r, true));
      tb.appendChild(tr);
    }
    fillQc(info.qc);
    if (!info.heatmap) {
      for (const s of ["#heat-on", "#heat-opacity", "#heat-layer"]) $(s).disabled = true;
    } else if (info.heatmap.layers.indexOf("smoothed") < 0) {
      $("#heat-layer").querySelector('option[value="smoothed"]').disabled = true;
    }
  }

  function rgb(c, a) {
    return "rgba(" + c.join(",") + "," + a + ")";
  }

  // the QC section: a legend of the kinds found, or why there is nothing to show
  function fillQc(qc) {
    const note = $("#qc-note");
    if (!qc) {
      note.textContent = "QC did not run on this slide (idcmap run --qc all finds ink, folds, blur, debris and scanner borders).";
      return;
    }
    if (qc.review) {
      const p = el("div", "qc-review", "Review: " + (qc.reasons.join("; ") || "flagged"));
      $("#qc-legend").before(p);
    }
    if (!qc.layers.length) {
      note.textContent = "QC found no artefacts on this slide.";
      return;
    }
    $("#qc-control").hidden = false;
    const ul = $("#qc-legend");
    for (const layer of qc.layers) {
      const li = el("li");
      li.dataset.kind = layer.kind;
      const sw = el("span", "swatch");
      sw.style.background = rgb(layer.color, 0.35);
      sw.style.borderColor = rgb(layer.color, 1);
      li.appendChild(sw);
      const area = layer.area_mm2 === null ? "" : " · " + fmt(layer.area_mm2, 2) + " mm²";
      li.appendChild(el("span", null, layer.name + area));
      const what = layer.note || (layer.excluded ? "removed from the tissue" : "kept");
      li.appendChild(el("span", "what", what));
      ul.appendChild(li);
    }
    note.textContent = "Removed areas are not tissue, not tiles and not IDC; kept ones are analysed (corrected as the legend says) and reported; ink over tissue stays tissue, its colour taken off before the network.";
  }

  function buildQcSvg(viewer, qc) {
    if (!qc || !qc.layers.length) return;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "artefacts");
    const g = document.createElementNS(NS, "g");
    svg.appendChild(g);
    for (const layer of qc.layers) {
      const path = document.createElementNS(NS, "path");
      path.setAttribute("d", layer.polygons.map(ringPath).join(""));
      path.setAttribute("data-kind", layer.kind);
      path.style.fill = rgb(layer.color, 0.35);
      path.style.stroke = rgb(layer.color, 1);
      g.appendChild(path);
    }
    // under the region outlines
    viewer.canvas.insertBefore(svg, state.svg ? state.svg.svg : null);
    state.qcSvg = { svg: svg, shapes: g };
  }

  function legend(info) {
    const stops = info.overlay_stops;
    const css = stops.map(([p, c, a]) => "rgba(" + c.join(",") + "," + a + ") " + (p * 100) + "%");
    $("#legend-grad").style.background = "linear-gradient(to right, " + css.join(", ") + ")";
    const ticks = $("#legend-ticks");
    const add = (p, text, cls) => {
      const s = el("span", cls, text);
      s.style.left = p * 100 + "%";
      ticks.appendChild(s);
    };
    add(0, "0", "first");
    add(1, "1", "last");
    if (typeof info.threshold === "number") {
      const t = $("#legend-thr");
      t.hidden = false;
      t.style.left = "calc(" + info.threshold * 100 + "% - 1px)";
      add(info.threshold, "threshold " + fmt(info.threshold, 2), "thrlabel");
    }
  }

  function showMeasurements(r) {
    const box = $("#measure");
    box.textContent = "";
    if (!r) {
      box.className = "hint";
      box.textContent = "Click a region on the slide or in the list.";
      return;
    }
    box.className = "";
    const h = el("h3");
    h.appendChild(el("span", "badge", String(r.number)));
    h.appendChild(document.createTextNode(" " + r.name));
    box.appendChild(h);
    const dl = el("dl");
    const m = r.measurements;
    const a = areaMm2(m);
    const hasMm2 = ["Area (mm²)", "Area (mm^2)", "Area mm^2", "Area mm²"].some((k) => k in m);
    if (a !== null && !hasMm2) {
      dl.appendChild(el("dt", null, "Area (mm²)"));
      dl.appendChild(el("dd", null, fmt(a, 3)));
    }
    for (const k of Object.keys(m)) {
      dl.appendChild(el("dt", null, k));
      dl.appendChild(el("dd", null, fmtAny(m[k])));
    }
    box.appendChild(dl);
  }

  // ------------------------------------------------------------------ regions (SVG)

  const NS = "http://www.w3.org/2000/svg";

  function ringPath(rings) {
    return rings.map((ring) => "M" + ring.map((p) => p[0] + " " + p[1]).join("L") + "Z").join("");
  }

  function buildSvg(viewer, regions) {
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "regions");
    const shapes = document.createElementNS(NS, "g");
    const labels = document.createElementNS(NS, "g");
    svg.appendChild(shapes);
    svg.appendChild(labels);
    for (const r of regions) {
      const d = r.polygons.map(ringPath).join("");
      const halo = document.createElementNS(NS, "path");
      halo.setAttribute("d", d);
      halo.setAttribute("class", "halo");
      const line = document.createElementNS(NS, "path");
      line.setAttribute("d", d);
      line.setAttribute("class", "line");
      shapes.appendChild(halo);
      shapes.appendChild(line);
      const g = document.createElementNS(NS, "g");
      const c = document.createElementNS(NS, "circle");
      const digits = String(r.number).length;
      c.setAttribute("r", String(9 + 3 * digits));
      const t = document.createElementNS(NS, "text");
      t.textContent = String(r.number);
      g.appendChild(c);
      g.appendChild(t);
      labels.appendChild(g);
      r._svg = { halo: halo, line: line, label: g, circle: c };
    }
    viewer.canvas.appendChild(svg);
    // keep the navigator above the outlines and their numbers
    if (viewer.navigator && viewer.navigator.element) {
      let e = viewer.navigator.element;
      while (e && e.parentNode !== viewer.container) e = e.parentNode;
      if (e) e.style.zIndex = "3";
    }
    state.svg = { svg: svg, shapes: shapes, labels: labels };
  }

  function imageToPixel(x, y) {
    return state.viewer.viewport.pixelFromPoint(new OSD.Point(x / state.width, y / state.width), true);
  }

  function redraw() {
    if (!state.svg) return;
    const p0 = imageToPixel(0, 0);
    const p1 = imageToPixel(state.width, 0);
    const s = (p1.x - p0.x) / state.width;
    const t = "translate(" + p0.x + " " + p0.y + ") scale(" + s + ")";
    state.svg.shapes.setAttribute("transform", t);
    if (state.qcSvg) state.qcSvg.shapes.setAttribute("transform", t);
    for (const r of state.info.regions) {
      // inside the region when it is big enough on screen; else beside its top-right corner,
      // so that the badge does not hide a small focus
      const b = r.bbox;
      const rad = Number(r._svg.circle.getAttribute("r"));
      let x, y;
      if ((b[2] - b[0]) * s >= 3 * rad && (b[3] - b[1]) * s >= 3 * rad) {
        const p = imageToPixel(r.label[0], r.label[1]);
        x = p.x;
        y = p.y;
      } else {
        x = p0.x + b[2] * s + rad + 2;
        y = p0.y + b[1] * s - rad - 2;
      }
      r._svg.label.setAttribute("transform", "translate(" + x.toFixed(1) + " " + y.toFixed(1) + ")");
    }
    scalebar();
  }

  function pointInRings(x, y, rings) {
    let inside = false;
    for (const ring of rings) {
      for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
        const xi = ring[i][0], yi = ring[i][1], xj = ring[j][0], yj = ring[j][1];
        if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
      }
    }
    return inside;
  }

  function hit(x, y) {
    let best = null;
    for (const r of state.info.regions) {
      const b = r.bbox;
      if (x < b[0] || x > b[2] || y < b[1] || y > b[3]) continue;
      if (r.polygons.some((rings) => pointInRings(x, y, rings))) {
        const area = (b[2] - b[0]) * (b[3] - b[1]);
        if (!best || area < best.area) best = { r: r, area: area };
      }
    }
    return best ? best.r : null;
  }

  function select(r, zoom) {
    if (state.selected && state.selected._svg) {
      for (const k of ["halo", "line"]) state.selected._svg[k].classList.remove("sel");
      state.selected._svg.circle.classList.remove("sel");
    }
    state.selected = r;
    for (const tr of document.querySelectorAll("#regions tbody tr")) {
      tr.classList.toggle("sel", !!r && tr.dataset.number === String(r.number));
    }
    if (r && r._svg) {
      for (const k of ["halo", "line"]) r._svg[k].classList.add("sel");
      r._svg.circle.classList.add("sel");
      // draw the selected outline last so that it is on top
      state.svg.shapes.appendChild(r._svg.halo);
      state.svg.shapes.appendChild(r._svg.line);
    }
    showMeasurements(r);
    if (r && zoom && state.viewer) {
      const b = r.bbox;
      const w = state.width;
      const pad = 0.15 * Math.max(b[2] - b[0], b[3] - b[1]);
      state.viewer.viewport.fitBounds(new OSD.Rect((b[0] - pad) / w, (b[1] - pad) / w, (b[2] - b[0] + 2 * pad) / w, (b[3] - b[1] + 2 * pad) / w));
    }
  }

  // ------------------------------------------------------------------ scale bar

  function scalebar() {
    const info = state.info;
    const box = $("#scalebar");
    if (!info.mpp || !state.viewer) {
      box.hidden = true;
      return;
    }
    const p0 = imageToPixel(0, 0);
    const p1 = imageToPixel(state.width, 0);
    const screenPerImagePx = (p1.x - p0.x) / state.width;
    if (!(screenPerImagePx > 0)) return;
    const umPerScreenPx = info.mpp / screenPerImagePx;
    const target = 120 * umPerScreenPx; // about 120 px long
    const pow = Math.pow(10, Math.floor(Math.log10(target)));
    let nice = pow;
    for (const m of [1, 2, 5, 10]) {
      if (m * pow <= target) nice = m * pow;
    }
    const px = nice / umPerScreenPx;
    const label = nice >= 1000 ? fmtAny(nice / 1000) + " mm" : fmtAny(nice) + " µm";
    $("#scale-rule").style.width = px.toFixed(1) + "px";
    $("#scale-label").textContent = label;
    box.hidden = false;
  }

  // ------------------------------------------------------------------ heatmap overlay

  function addHeatmap() {
    const info = state.info;
    const hm = info.heatmap;
    if (!hm) return;
    if (state.heat) {
      state.viewer.world.removeItem(state.heat);
      state.heat = null;
    }
    const layer = $("#heat-layer").value;
    const w = state.width;
    state.viewer.addTiledImage({
      tileSource: { type: "image", url: base + "/overlay.png?layer=" + encodeURIComponent(layer) },
      x: hm.origin_level0_px[0] / w,
      y: hm.origin_level0_px[1] / w,
      width: (hm.shape[1] * hm.cell_level0_px[0]) / w,
      opacity: heatOpacity(),
      success: (e) => {
        state.heat = e.item;
      },
    });
  }

  function heatOpacity() {
    return $("#heat-on").checked ? Number($("#heat-opacity").value) / 100 : 0;
  }

  // ------------------------------------------------------------------ the viewer

  function tileSource(info) {
    const dz = info.deepzoom;
    if (dz) {
      return {
        width: dz.width,
        height: dz.height,
        tileSize: dz.tile_px,
        tileOverlap: dz.overlap_px,
        minLevel: 0,
        maxLevel: dz.max_level,
        getTileUrl: (level, x, y) => base + "/tiles/" + level + "/" + x + "_" + y + ".jpeg",
      };
    }
    // no slide picture: a blank canvas of the slide's size keeps the outputs in place
    const side = Math.max(info.width_px, info.height_px);
    return {
      width: info.width_px,
      height: info.height_px,
      tileSize: side,
      minLevel: 0,
      maxLevel: 0,
      getTileUrl: () => "/static/nodata.png",
    };
  }

  function start(info) {
    state.info = info;
    // OpenSeadragon's unit is the image width: the Deep Zoom width (which openslide-python may
    // round 1 px above the bounds width), so that level-0 px map exactly
    state.width = info.deepzoom ? info.deepzoom.width : info.width_px;
    fillSide(info);
    if (info.slide_error) showBanner(info.slide_error);
    const viewer = OSD({
      element: $("#osd"),
      prefixUrl: "/static/openseadragon/images/",
      tileSources: tileSource(info),
      drawer: "canvas",
      showNavigator: true,
      navigatorPosition: "BOTTOM_RIGHT",
      navigatorBackground: "#e9e9e9",
      navigatorBorderColor: "#9aa1ad",
      navigatorDisplayRegionColor: "#0b6e99",
      showRotationControl: false,
      showFullPageControl: false,
      maxZoomPixelRatio: 2,
      visibilityRatio: 0.3,
      animationTime: 0.6,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
      gestureSettingsTouch: { clickToZoom: false, dblClickToZoom: true },
      crossOriginPolicy: false,
      placeholderFillStyle: "#f0f0f0",
    });
    state.viewer = viewer;
    viewer.addOnceHandler("open", () => {
      state.opened = true;
      buildSvg(viewer, info.regions);
      buildQcSvg(viewer, info.qc);
      addHeatmap();
      redraw();
    });
    viewer.addHandler("update-viewport", redraw);
    viewer.addHandler("resize", redraw);
    viewer.addHandler("tile-load-failed", onTileFailed);
    viewer.addHandler("canvas-click", (e) => {
      if (!e.quick) return;
      const vp = viewer.viewport.pointFromPixel(e.position, true);
      select(hit(vp.x * state.width, vp.y * state.width), false);
    });
    $("#heat-on").addEventListener("change", () => state.heat && state.heat.setOpacity(heatOpacity()));
    $("#heat-opacity").addEventListener("input", () => {
      $("#heat-opacity-val").textContent = $("#heat-opacity").value + "%";
      if (!$("#heat-on").checked) $("#heat-on").checked = true;
      if (state.heat) state.heat.setOpacity(heatOpacity());
    });
    $("#heat-layer").addEventListener("change", addHeatmap);
    // the outlines are drawn unrotated: keep OpenSeadragon's r / R / f keys from rotating or
    // flipping the slide under them
    viewer.addHandler("canvas-key", (e) => {
      if (["r", "R", "f", "F"].indexOf(e.originalEvent.key) >= 0) e.preventDefaultAction = true;
    });
    document.addEventListener("keydown", (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey || /^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName)) return;
      if (e.key === "h") $("#heat-on").click();
      else if (e.key === "o") $("#regions-on").click();
      else if (e.key === "q" && !$("#qc-control").hidden) $("#qc-on").click();
      else if (e.key === "Escape") select(null, false);
    });
    $("#qc-on").addEventListener("change", () => {
      if (state.qcSvg) state.qcSvg.svg.style.display = $("#qc-on").checked ? "" : "none";
    });
    $("#regions-on").addEventListener("change", () => {
      if (state.svg) state.svg.svg.style.display = $("#regions-on").checked ? "" : "none";
    });
  }

  let checkedAfterFailure = false;
  function onTileFailed() {
    if (checkedAfterFailure || !state.info || state.info.slide_error) return;
    checkedAfterFailure = true;
    fetch("/api/slides/" + encodeURIComponent(id))
      .then((r) => r.json())
      .then((info) => {
        if (info.slide_error) showBanner(info.slide_error);
      })
      .catch(() => {});
  }

  fetch("/api/slides/" + encodeURIComponent(id))
    .then((r) => {
      if (!r.ok) throw new Error(r.status === 404 ? "no slide folder of that name in this output folder" : r.status + " " + r.statusText);
      return r.json();
    })
    .then(start)
    .catch((err) => {
      $("#name").textContent = id;
      showBanner("Cannot show this slide: " + err.message);
      $("#banner strong").textContent = "Cannot show this slide";
      $("#banner-text").textContent = err.message;
    });
})();
