// The heatmap browser: a sortable, filterable, paged table of every explained image and a panel per image.
// Data: window.AIS_BROWSER (browser-data.js, written by the build_browser stage; see ais/reporting/browser.py).
(function () {
  "use strict";
  var T0 = performance.now();
  var D = window.AIS_BROWSER;
  var $ = function (id) { return document.getElementById(id); };
  if (!D) {
    $("status").innerHTML = '<span class="error">The data file did not load: keep browser-data.js beside this page.</span>';
    return;
  }
  var N = D.n;

  // ---------------------------------------------------------------- columns as typed arrays
  function prepare(c) {
    var col = {key: c.key, label: c.label, kind: c.kind, group: c.group, visible: !!c.visible};
    if (c.kind === "number") {
      var v = new Float64Array(N);
      for (var i = 0; i < N; i++) v[i] = c.values[i] === null ? NaN : c.values[i];
      col.values = v;
    } else if (c.kind === "category") {
      col.levels = c.levels;
      col.codes = Int32Array.from(c.codes);
    } else {
      col.values = c.values;
      col.lower = c.values.map(function (s) { return s === null ? "" : s.toLowerCase(); });
    }
    return col;
  }
  var COLS = D.columns.map(prepare);
  var BY = {};
  COLS.forEach(function (c) { BY[c.key] = c; });
  var IDS = BY.image_id.values;
  var IDS_LOWER = BY.image_id.lower;
  var INDEX = {};
  for (var r = 0; r < N; r++) INDEX[IDS[r]] = r;

  function text(c, i) {
    if (c.kind === "number") return fmt(c.values[i]);
    if (c.kind === "category") return c.codes[i] < 0 ? "\u2013" : c.levels[c.codes[i]];
    return c.values[i] === null ? "\u2013" : c.values[i];
  }
  function fmt(x) {
    if (x !== x) return "\u2013";
    var a = Math.abs(x);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return x.toExponential(2);
    return String(+x.toPrecision(4));
  }
  function stem(i) { return D.stem[i] === null ? IDS[i] : D.stem[i]; }
  function panelSrc(i) { return D.panel_dirs[String(D.shard[i])] + encodeURIComponent(stem(i)) + ".png"; }
  function thumbSrc(i) { return D.thumb_dirs[String(D.shard[i])] + encodeURIComponent(stem(i)) + ".jpg"; }

  // ---------------------------------------------------------------- state
  var S = {sortKey: null, sortDir: 1, search: "", cats: {}, ranges: {}, page: 0, pageSize: 50, current: -1};
  var sorted = null;  // Int32Array: every row in sort order
  var order = null;   // Int32Array: the rows passing the filters, in sort order

  var ascending = {};  // per column: every row in ascending order, missing values last (computed once)

  function ascendingOrder(c) {
    if (ascending[c.key]) return ascending[c.key];
    var have = [], missing = [];
    var i;
    if (c.kind === "number") {
      var v = c.values;
      for (i = 0; i < N; i++) (v[i] === v[i] ? have : missing).push(i);
      have = Int32Array.from(have).sort(function (a, b) { return v[a] - v[b] || a - b; });
    } else if (c.kind === "category") {
      var k = c.codes;  // levels are sorted, so codes sort as their names
      for (i = 0; i < N; i++) (k[i] >= 0 ? have : missing).push(i);
      have = Int32Array.from(have).sort(function (a, b) { return k[a] - k[b] || a - b; });
    } else {
      var t = c.values;
      for (i = 0; i < N; i++) (t[i] !== null ? have : missing).push(i);
      have = Int32Array.from(have).sort(function (a, b) { return t[a] < t[b] ? -1 : t[a] > t[b] ? 1 : a - b; });
    }
    var out = new Int32Array(N);
    out.set(have);
    out.set(missing, have.length);
    ascending[c.key] = {order: out, n: have.length};
    return ascending[c.key];
  }

  function sortRows() {
    var c = S.sortKey === null ? null : BY[S.sortKey];
    if (!c) {
      sorted = new Int32Array(N);
      for (var i = 0; i < N; i++) sorted[i] = i;
      return;
    }
    var asc = ascendingOrder(c);
    if (S.sortDir > 0) { sorted = asc.order; return; }
    sorted = new Int32Array(N);  // descending: the values reversed, missing values still last
    for (var j = 0; j < asc.n; j++) sorted[j] = asc.order[asc.n - 1 - j];
    sorted.set(asc.order.subarray(asc.n), asc.n);
  }

  function passes(i) {
    if (S.search && IDS_LOWER[i].indexOf(S.search) < 0) return false;
    for (var key in S.cats) {
      if (BY[key].codes[i] !== S.cats[key]) return false;
    }
    for (var rk in S.ranges) {
      var v = BY[rk].values[i], lim = S.ranges[rk];
      if (lim[0] !== null && !(v >= lim[0])) return false;
      if (lim[1] !== null && !(v <= lim[1])) return false;
    }
    return true;
  }

  function filterRows() {
    var out = new Int32Array(N), n = 0;
    for (var j = 0; j < N; j++) { if (passes(sorted[j])) out[n++] = sorted[j]; }
    order = out.subarray(0, n);
    var pages = Math.max(1, Math.ceil(n / S.pageSize));
    if (S.page >= pages) S.page = pages - 1;
  }

  // ---------------------------------------------------------------- table
  function visibleCols() { return COLS.filter(function (c) { return c.visible || c.key === "image_id"; }); }

  function renderHead() {
    var thead = $("grid").tHead;
    thead.innerHTML = "";
    var labels = thead.insertRow(), filters = thead.insertRow();
    labels.className = "labels";
    filters.className = "filters";
    labels.appendChild(document.createElement("th")).textContent = "";
    filters.appendChild(document.createElement("th"));
    visibleCols().forEach(function (c) {
      var th = document.createElement("th");
      th.textContent = c.label;
      th.dataset.key = c.key;
      th.title = "sort by " + c.label + " (click again to reverse)";
      if (c.kind !== "number") th.className = "l";
      if (S.sortKey === c.key) th.classList.add(S.sortDir > 0 ? "sorted-asc" : "sorted-desc");
      th.addEventListener("click", function () { sortBy(c.key); });
      labels.appendChild(th);
      filters.appendChild(filterCell(c));
    });
  }

  function filterCell(c) {
    var th = document.createElement("th");
    th.className = c.kind === "number" ? "" : "l";
    if (c.kind === "number") {
      ["min", "max"].forEach(function (end, e) {
        var input = document.createElement("input");
        input.type = "number";
        input.step = "any";
        input.placeholder = end;
        input.id = end + "-" + c.key;
        var lim = S.ranges[c.key];
        if (lim && lim[e] !== null) input.value = lim[e];
        input.addEventListener("input", function () { setRange(c.key); });
        th.appendChild(input);
      });
    } else if (c.kind === "category") {
      var sel = document.createElement("select");
      sel.id = "filter-" + c.key;
      sel.add(new Option("all", ""));
      c.levels.forEach(function (name, k) { sel.add(new Option(name, String(k))); });
      if (c.key in S.cats) sel.value = String(S.cats[c.key]);
      sel.addEventListener("change", function () {
        if (sel.value === "") delete S.cats[c.key]; else S.cats[c.key] = +sel.value;
        update(false);
      });
      th.appendChild(sel);
    }
    return th;
  }

  function setRange(key) {
    var lo = $("min-" + key).value, hi = $("max-" + key).value;
    if (lo === "" && hi === "") delete S.ranges[key];
    else S.ranges[key] = [lo === "" ? null : +lo, hi === "" ? null : +hi];
    update(false);
  }

  function renderBody() {
    var tbody = $("grid").tBodies[0];
    var cols = visibleCols();
    var start = S.page * S.pageSize, end = Math.min(order.length, start + S.pageSize);
    var frag = document.createDocumentFragment();
    for (var j = start; j < end; j++) {
      var i = order[j];
      var tr = document.createElement("tr");
      tr.dataset.row = i;
      if (i === S.current) tr.className = "current";
      var td = tr.insertCell();
      td.className = "thumb";
      var im = document.createElement("img");
      im.loading = "lazy";
      im.alt = "";
      im.src = thumbSrc(i);
      td.appendChild(im);
      for (var k = 0; k < cols.length; k++) {
        var cell = tr.insertCell();
        cell.textContent = text(cols[k], i);
        if (cols[k].kind !== "number") cell.className = "l";
      }
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
    var pages = Math.max(1, Math.ceil(order.length / S.pageSize));
    $("page-info").textContent = "page " + (S.page + 1) + " of " + pages;
    $("count").textContent = (order.length === N ? "" : order.length.toLocaleString("en") + " of ") +
      N.toLocaleString("en") + " explained images" +
      (order.length ? "; rows " + (start + 1).toLocaleString("en") + "\u2013" + end.toLocaleString("en") : "");
    $("prev-page").disabled = S.page === 0;
    $("next-page").disabled = S.page >= pages - 1;
  }

  function update(resort) {
    if (resort) sortRows();
    filterRows();
    renderBody();
  }

  function sortBy(key) {
    if (S.sortKey === key) S.sortDir = -S.sortDir;
    else { S.sortKey = key; S.sortDir = BY[key].kind === "number" ? -1 : 1; }  // numbers: largest first
    S.page = 0;
    update(true);
    renderHead();
  }

  function renderPicker() {
    var body = $("picker-body"), groups = {};
    body.innerHTML = "";
    COLS.forEach(function (c) { (groups[c.group] = groups[c.group] || []).push(c); });
    Object.keys(groups).forEach(function (g) {
      var fs = body.appendChild(document.createElement("fieldset"));
      fs.appendChild(document.createElement("legend")).textContent = g;
      groups[g].forEach(function (c) {
        var label = fs.appendChild(document.createElement("label"));
        var box = label.appendChild(document.createElement("input"));
        box.type = "checkbox";
        box.checked = c.visible || c.key === "image_id";
        box.disabled = c.key === "image_id";
        box.id = "show-" + c.key;
        box.addEventListener("change", function () { c.visible = box.checked; renderHead(); renderBody(); });
        label.appendChild(document.createTextNode(" " + c.label));
      });
    });
  }

  // ---------------------------------------------------------------- one image
  function openDetail(i) {
    S.current = i;
    var pos = order.indexOf(i);
    if (pos >= 0) {
      var page = Math.floor(pos / S.pageSize);
      if (page !== S.page) { S.page = page; }
    }
    renderBody();
    $("detail").hidden = false;
    $("detail-id").textContent = IDS[i];
    $("detail-pos").textContent = pos >= 0 ? "image " + (pos + 1).toLocaleString("en") + " of " +
      order.length.toLocaleString("en") : "not in the filtered rows";
    var src = panelSrc(i);
    var img = $("detail-panel");
    img.removeAttribute("src");
    img.alt = "panel of " + IDS[i];
    img.src = src;  // loaded only now: panels are never loaded for the table
    $("detail-link").href = src;
    fillValues(i);
    fillTop(i);
    if (history.replaceState) history.replaceState(null, "", "#image=" + encodeURIComponent(IDS[i]));
  }

  function fillValues(i) {
    var t = $("detail-values");
    t.innerHTML = "";
    COLS.forEach(function (c) {
      if (c.key === "image_id") return;
      var tr = t.insertRow();
      tr.insertCell().textContent = c.label;
      tr.insertCell().textContent = text(c, i);
      tr.dataset.key = c.key;
    });
  }

  function fillTop(i) {
    var t = $("detail-top"), top = D.top[i] || [];
    t.innerHTML = "<tr><th>channel</th><th>AIS score</th><th>\u0394y</th><th></th></tr>";
    if (!top.length) { t.insertRow().insertCell().textContent = "no fused scores for this image"; return; }
    top.forEach(function (row) {
      var tr = t.insertRow();
      tr.insertCell().textContent = row[0];
      tr.insertCell().textContent = fmt(row[1] === null ? NaN : row[1]);
      tr.insertCell().textContent = fmt(row[2] === null ? NaN : row[2]);
      tr.insertCell().textContent = row[1] > 0 ? "helpful" : "harmful";
    });
  }

  function fillViews() {
    var t = $("detail-views");
    t.innerHTML = "";
    (D.views || []).forEach(function (v) {
      var tr = t.insertRow();
      tr.insertCell().textContent = v.title;
      var bar = tr.insertCell();
      bar.innerHTML = '<span class="bar"></span><div class="ticks"></div>';
      bar.firstChild.style.background = v.gradient;
      v.ticks.forEach(function (tick) { bar.lastChild.appendChild(document.createElement("span")).textContent = tick; });
      tr.insertCell().textContent = v.description;
    });
  }

  function step(delta) {
    if (S.current < 0 || !order.length) return;
    var pos = order.indexOf(S.current);
    var next = pos < 0 ? 0 : Math.min(order.length - 1, Math.max(0, pos + delta));
    openDetail(order[next]);
  }

  function closeDetail() {
    $("detail").hidden = true;
    $("detail-panel").removeAttribute("src");
    if (history.replaceState) history.replaceState(null, "", location.pathname + location.search);
  }

  // ---------------------------------------------------------------- wiring
  function wire() {
    var timer = null;
    function search() { S.search = $("search").value.trim().toLowerCase(); S.page = 0; update(false); }
    $("search").addEventListener("input", function () {
      clearTimeout(timer);
      if (N > 20000) timer = setTimeout(search, 120);  // large tables: once typing pauses
      else search();
    });
    $("page-size").addEventListener("change", function () { S.pageSize = +$("page-size").value; S.page = 0; update(false); });
    $("prev-page").addEventListener("click", function () { S.page = Math.max(0, S.page - 1); renderBody(); });
    $("next-page").addEventListener("click", function () { S.page += 1; filterRows(); renderBody(); });
    $("reset").addEventListener("click", function () {
      S.search = ""; S.cats = {}; S.ranges = {}; S.page = 0; $("search").value = "";
      renderHead(); update(false);
    });
    $("grid").tBodies[0].addEventListener("click", function (ev) {
      var tr = ev.target.closest("tr");
      if (tr && tr.dataset.row !== undefined) openDetail(+tr.dataset.row);
    });
    $("detail-prev").addEventListener("click", function () { step(-1); });
    $("detail-next").addEventListener("click", function () { step(1); });
    $("detail-close").addEventListener("click", closeDetail);
    $("detail").addEventListener("click", function (ev) { if (ev.target === $("detail")) closeDetail(); });
    document.addEventListener("keydown", function (ev) {
      if ($("detail").hidden || ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT") return;
      if (ev.key === "ArrowRight" || ev.key === "ArrowDown") { step(1); ev.preventDefault(); }
      else if (ev.key === "ArrowLeft" || ev.key === "ArrowUp") { step(-1); ev.preventDefault(); }
      else if (ev.key === "Escape") closeDetail();
    });
  }

  function openFromHash() {
    var m = /^#image=(.*)$/.exec(location.hash);
    if (m) {
      var id = decodeURIComponent(m[1]);
      if (id in INDEX) openDetail(INDEX[id]);
    }
  }

  sortRows();
  filterRows();
  renderHead();
  renderPicker();
  fillViews();
  wire();
  renderBody();
  $("status").textContent = D.meta && D.meta.note ? D.meta.note : "";
  $("status").hidden = !$("status").textContent;
  openFromHash();
  window.AIS_TIMINGS = {script_start_ms: T0, ready_ms: performance.now()};
  window.AIS_APP = {state: S, rows: function () { return Array.from(order, function (i) { return IDS[i]; }); },
                    open: openDetail, refresh: function () { update(false); }};
})();
