// idcmap viewer, batch page: one row per slide folder, sortable columns.
"use strict";
(function () {
  const tbody = document.querySelector("#slides tbody");
  const headers = Array.from(document.querySelectorAll("#slides th[data-key]"));
  let rows = [];
  let sortKey = "slide";
  let sortDir = 1;

  function fmt(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return null;
    return Number(v).toLocaleString("en-GB", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    if (text === null) {
      td.innerHTML = '<span class="dash" title="not in this output">—</span>';
    } else {
      td.textContent = text;
    }
    tr.appendChild(td);
    return td;
  }

  function statusCell(tr, r) {
    const td = document.createElement("td");
    const s = document.createElement("span");
    s.className = "status " + r.status;
    s.textContent = r.status;
    td.appendChild(s);
    let reason = r.reason;
    if (r.status === "done" && r.slide_file === "missing") {
      reason = "slide file missing: the results are shown without the slide";
    }
    if (reason) {
      const d = document.createElement("div");
      d.className = "reason" + (r.status === "done" ? " warn" : "");
      d.textContent = reason;
      td.appendChild(d);
    }
    tr.appendChild(td);
  }

  function render() {
    tbody.textContent = "";
    const sorted = rows.slice().sort(compare);
    for (const r of sorted) {
      const tr = document.createElement("tr");
      tr.dataset.id = r.id || "";
      const href = r.id ? "/view/" + encodeURIComponent(r.id) : null;
      const th = document.createElement("td");
      th.className = "thumb";
      if (r.id) {
        const a = document.createElement("a");
        a.href = href;
        const img = document.createElement("img");
        img.loading = "lazy";
        img.alt = "";
        img.src = "/slides/" + encodeURIComponent(r.id) + "/thumbnail.jpeg";
        a.appendChild(img);
        th.appendChild(a);
      }
      tr.appendChild(th);
      const name = document.createElement("td");
      name.className = "slide";
      if (href) {
        const a = document.createElement("a");
        a.href = href;
        a.textContent = r.slide;
        name.appendChild(a);
      } else {
        name.textContent = r.slide;
      }
      const p = document.createElement("div");
      p.className = "path";
      p.textContent = r.slide_path || "";
      name.appendChild(p);
      tr.appendChild(name);
      statusCell(tr, r);
      cell(tr, fmt(r.idc_area_mm2, 2), "num");
      cell(tr, fmt(r.idc_percent, 1), "num");
      cell(tr, r.foci === null || r.foci === undefined ? null : String(r.foci), "num");
      cell(tr, fmt(r.largest_focus_mm, 1), "num");
      cell(tr, fmt(r.tissue_area_mm2, 1), "num");
      const qc = cell(tr, r.review === "yes" ? "review" : r.review === "no" ? "ok" : null, "qc");
      if (r.review === "yes") {
        qc.classList.add("review");
        qc.title = r.review_reasons || "";
      }
      tbody.appendChild(tr);
    }
    for (const h of headers) {
      const on = h.dataset.key === sortKey;
      h.setAttribute("aria-sort", on ? (sortDir > 0 ? "ascending" : "descending") : "none");
      h.querySelector(".arrow").textContent = on ? (sortDir > 0 ? "▲" : "▼") : "↕";
    }
  }

  function compare(a, b) {
    const x = a[sortKey];
    const y = b[sortKey];
    const xn = x === null || x === undefined;
    const yn = y === null || y === undefined;
    if (xn || yn) return xn && yn ? 0 : xn ? 1 : -1; // unknown figures last either way
    if (typeof x === "number" && typeof y === "number") return sortDir * (x - y);
    return sortDir * String(x).localeCompare(String(y), undefined, { numeric: true });
  }

  for (const h of headers) {
    h.querySelector("button").addEventListener("click", () => {
      const key = h.dataset.key;
      if (key === sortKey) {
        sortDir = -sortDir;
      } else {
        sortKey = key;
        sortDir = h.classList.contains("num") ? -1 : 1; // figures: largest first
      }
      render();
    });
  }

  fetch("/api/slides")
    .then((r) => {
      if (!r.ok) throw new Error(r.status + " " + r.statusText);
      return r.json();
    })
    .then((data) => {
      const where = document.getElementById("where");
      where.textContent = data.out_dir + " · " + data.slides.length + " slide" + (data.slides.length === 1 ? "" : "s");
      if (data.cohort_csv) {
        const a = document.createElement("a");
        a.href = "/files/cohort.csv";
        a.setAttribute("download", "cohort.csv");
        a.textContent = "cohort.csv";
        where.appendChild(document.createTextNode(" · "));
        where.appendChild(a);
      }
      document.title = "idcmap · " + data.out_dir;
      rows = data.slides;
      if (!rows.length) {
        const e = document.getElementById("empty");
        e.hidden = false;
        e.textContent = "No finished slides in this folder yet (a slide folder appears once its summary.json is written).";
      }
      render();
      document.body.dataset.ready = "1";
    })
    .catch((err) => {
      const e = document.getElementById("empty");
      e.hidden = false;
      e.textContent = "Cannot list the slides: " + err.message;
      document.body.dataset.ready = "1";
    });
})();
