// ppplan pages: the planning form (POST /v1/plans, then the server-rendered plan view) and the stored
// plans list (GET /v1/plans). Vanilla JavaScript, same-origin requests only; charts are server-rendered SVG.
(function () {
  "use strict";

  function byId(id) { return document.getElementById(id); }

  function setStatus(text, isError) {
    var el = byId("status");
    if (!el) { return; }
    el.textContent = text;
    el.className = isError ? "error" : "";
  }

  function showErrors(list) {
    var ul = byId("form-errors");
    if (!ul) { return; }
    ul.textContent = "";
    list.forEach(function (msg) {
      var li = document.createElement("li");
      li.textContent = msg;
      ul.appendChild(li);
    });
  }

  function errorMessages(body, status) {
    if (body && Array.isArray(body.detail)) {
      return body.detail.map(function (d) { return d && d.message ? d.message : JSON.stringify(d); });
    }
    return ["the service answered HTTP " + status];
  }

  // ---- the planning form ------------------------------------------------------------------------------
  function formValues(form) {
    var body = {};
    var cli = [];
    var model = form.elements.namedItem("model").value;
    var count = form.elements.namedItem("gpu_count").value;
    var kind = form.elements.namedItem("gpu_kind").value;
    body.model = model;
    body.gpus = String(count) + "x" + kind;
    Array.prototype.forEach.call(form.querySelectorAll("[data-type]"), function (el) {
      var raw = (el.value || "").trim();
      if (raw === "") { return; }
      if (el.tagName === "SELECT" && el.querySelector("option[selected]") && el.querySelector("option[selected]").value === raw) {
        return;  // the default choice: left to the planner, like an omitted CLI option
      }
      var type = el.getAttribute("data-type");
      var value = raw;
      if (type === "int") { value = Number(raw); if (!Number.isInteger(value)) { value = raw; } }
      if (type === "float") { value = Number(raw); if (!Number.isFinite(value)) { value = raw; } }
      body[el.name] = value;
      cli.push(el.getAttribute("data-cli") + " " + raw);
    });
    return { body: body, cli: cli };
  }

  function configFile(form) {
    var input = form.elements.namedItem("config_file");
    return input && input.files && input.files.length ? input.files[0] : null;
  }

  function updateCommand(form) {
    var v = formValues(form);
    var file = configFile(form);
    var model = file ? "./" + file.name : v.body.model;
    var out = byId("cli-command");
    if (out) { out.textContent = ["ppplan plan", model, "--gpus", v.body.gpus].concat(v.cli).join(" ") + " --html plan.html"; }
  }

  function describeConfig(form) {
    var note = byId("config-note");
    var file = configFile(form);
    if (!note) { return; }
    if (!file) { note.textContent = ""; return; }
    file.text().then(function (text) {
      var cfg = JSON.parse(text);
      var layers = cfg.num_hidden_layers || (cfg.text_config || {}).num_hidden_layers || "?";
      note.textContent = file.name + ": " + (cfg.model_type || "unknown type") + ", " + layers + " layers; " +
        "it is sent with the request (hf_config) and planned instead of the preset.";
    }).catch(function () {
      note.textContent = file.name + " is not a JSON config.";
    });
  }

  function showPlan(planId) {
    return fetch("/plans/" + encodeURIComponent(planId) + "/view", { headers: { Accept: "text/html" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("could not load the plan view (HTTP " + r.status + ")"); }
        return r.text();
      })
      .then(function (html) {
        var result = byId("result");
        var doc = new DOMParser().parseFromString(html, "text/html");
        result.textContent = "";
        Array.prototype.forEach.call(doc.body.childNodes, function (node) { result.appendChild(document.adoptNode(node)); });
        result.scrollIntoView({ block: "start" });
      });
  }

  function submitPlan(form, button) {
    var v = formValues(form);
    showErrors([]);
    var file = configFile(form);
    if (file) {
      file.text().then(function (text) {
        var cfg;
        try { cfg = JSON.parse(text); } catch (e) { setStatus(file.name + " is not a JSON config", true); return; }
        var named = typeof cfg._name_or_path === "string" && cfg._name_or_path ? cfg._name_or_path : file.name;
        var name = named.replace(/\.json$/i, "").split("/").pop().replace(/^[.~]+/, "") || "uploaded";
        v.body.model = name === "config" ? "uploaded-config" : name;
        v.body.hf_config = cfg;
        postPlan(v, button);
      });
      return;
    }
    postPlan(v, button);
  }

  function postPlan(v, button) {
    button.disabled = true;
    setStatus("planning " + v.body.model + " on " + v.body.gpus + "…", false);
    var started = Date.now();
    fetch("/v1/plans", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(v.body)
    }).then(function (r) {
      return r.json().catch(function () { return null; }).then(function (data) { return { r: r, data: data }; });
    }).then(function (res) {
      if (!res.r.ok || !res.data || !res.data.id) {
        showErrors(errorMessages(res.data, res.r.status));
        setStatus("not planned", true);
        return null;
      }
      var id = res.data.id;
      return showPlan(id).then(function () {
        history.pushState({ planId: id }, "", "/plans/" + encodeURIComponent(id));
        setStatus((res.data.cached ? "stored plan " : "new plan ") + id + " in " + ((Date.now() - started) / 1000).toFixed(1) + " s", false);
      });
    }).catch(function (err) {
      setStatus(String(err && err.message ? err.message : err), true);
    }).then(function () { button.disabled = false; });
  }

  var form = byId("plan-form");
  if (form) {
    var button = byId("plan-submit");
    form.addEventListener("submit", function (ev) { ev.preventDefault(); submitPlan(form, button); });
    form.addEventListener("input", function () { updateCommand(form); });
    form.addEventListener("change", function (ev) {
      if (ev.target && ev.target.name === "config_file") { describeConfig(form); }
      updateCommand(form);
    });
    window.addEventListener("popstate", function () { window.location.reload(); });
    updateCommand(form);
  }

  // ---- the stored plans list --------------------------------------------------------------------------
  var PAGE = 50;

  function cell(row, text, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    if (text instanceof Node) { td.appendChild(text); } else { td.textContent = text; }
    row.appendChild(td);
  }

  function renderRows(tbody, data) {
    tbody.textContent = "";
    data.forEach(function (p) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-plan-id", p.id);
      var a = document.createElement("a");
      a.href = "/plans/" + encodeURIComponent(p.id);
      a.textContent = p.id;
      cell(tr, a);
      cell(tr, String(p.created).replace("T", " ").slice(0, 19), "l");
      cell(tr, p.model_name, "l");
      cell(tr, p.gpu_count + "× " + p.gpu_kind, "l");
      cell(tr, p.objective, "l");
      cell(tr, p.tp + "×" + p.pp + "×" + p.replicas);
      cell(tr, Math.round(p.throughput_tokens_per_s).toLocaleString("en-US"));
      cell(tr, p.throughput_per_gpu.toFixed(1));
      cell(tr, p.tpot_ms.toFixed(2));
      cell(tr, p.slo_met ? "met" : "MISSED");
      tbody.appendChild(tr);
    });
  }

  function loadPlans(filter, offset) {
    var params = new URLSearchParams();
    ["model", "gpu", "objective"].forEach(function (k) { if (filter[k]) { params.set(k, filter[k]); } });
    if (filter.created_after) { params.set("created_after", filter.created_after + "T00:00:00Z"); }
    if (filter.created_before) { params.set("created_before", filter.created_before + "T00:00:00Z"); }
    params.set("limit", String(PAGE));
    params.set("offset", String(offset));
    setStatus("loading…", false);
    return fetch("/v1/plans?" + params.toString(), { headers: { Accept: "application/json" } })
      .then(function (r) { return r.json().then(function (d) { return { r: r, d: d }; }); })
      .then(function (res) {
        if (!res.r.ok) { setStatus(errorMessages(res.d, res.r.status).join("; "), true); return; }
        renderRows(document.querySelector("#plans-table tbody"), res.d.data);
        var shown = res.d.data.length;
        byId("page-info").textContent = shown ? (offset + 1) + "–" + (offset + shown) + " of " + res.d.count : "no plans match";
        byId("page-prev").disabled = offset <= 0;
        byId("page-next").disabled = offset + shown >= res.d.count;
        setStatus("", false);
      })
      .catch(function (err) { setStatus(String(err), true); });
  }

  var filterForm = byId("plans-filter");
  if (filterForm) {
    var offset = 0;
    var current = function () {
      var f = {};
      new FormData(filterForm).forEach(function (v, k) { f[k] = String(v); });
      return f;
    };
    var query = new URLSearchParams(window.location.search);
    query.forEach(function (v, k) { var el = filterForm.elements.namedItem(k); if (el) { el.value = v; } });
    filterForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      offset = 0;
      var f = current();
      var q = new URLSearchParams();
      Object.keys(f).forEach(function (k) { if (f[k]) { q.set(k, f[k]); } });
      history.replaceState(null, "", "/plans" + (q.toString() ? "?" + q.toString() : ""));
      loadPlans(f, offset);
    });
    byId("page-prev").addEventListener("click", function () { offset = Math.max(offset - PAGE, 0); loadPlans(current(), offset); });
    byId("page-next").addEventListener("click", function () { offset += PAGE; loadPlans(current(), offset); });
    loadPlans(current(), offset);
  }
})();
