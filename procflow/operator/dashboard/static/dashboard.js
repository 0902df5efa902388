// procflow dashboard: draws each page from its JSON and polls it again every few seconds.
// Every value from Redis goes into the page as text (textContent, text nodes, attribute
// values): nothing is ever parsed as HTML.
"use strict";

(function () {
  const body = document.body;
  const POLL_MS = Number(body.dataset.pollMs) || 1500;
  const READ_ONLY = body.dataset.readOnly === "true";
  const CSRF = document.querySelector('meta[name="csrf-token"]').content;
  const SVG = "http://www.w3.org/2000/svg";

  // -- building elements ----------------------------------------------------------------

  function build(element, attrs, kids) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") element.textContent = String(value);
      else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
      else element.setAttribute(key, value === true ? "" : String(value));
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined || kid === false) continue;
      element.append(kid instanceof Node ? kid : String(kid)); // a string becomes a text node
    }
    return element;
  }
  const h = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
  const s = (tag, attrs, ...kids) => build(document.createElementNS(SVG, tag), attrs, kids);

  const enc = encodeURIComponent;
  const flowUrl = (flow) => "/flows/" + enc(flow);
  const stageUrl = (flow, queue, state) =>
    flowUrl(flow) + "/stages/" + enc(queue) + (state ? "?state=" + enc(state) : "");
  const jobUrl = (id, flow) => "/jobs/" + enc(id) + (flow ? "?flow=" + enc(flow) : "");
  const searchUrl = (flow, attribute, value) =>
    "/search?flow=" + enc(flow) + "&attribute=" + enc(attribute) + "&value=" + enc(value);

  function num(n) {
    if (n === null || n === undefined) return "-";
    return typeof n === "number" ? n.toLocaleString("en-US") : String(n);
  }
  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }
  function when(ms) {
    if (!ms) return "-";
    const d = new Date(ms);
    const pad = (v) => String(v).padStart(2, "0");
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  // A job time, a backlog or an ETA: 0.4 ms, 12 ms, 1.5 s, 12 min.
  function took(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds === 0) return "0 s";
    if (seconds < 1) {
      const ms = seconds * 1000;
      return (ms < 10 ? ms.toFixed(1) : Math.round(ms)) + " ms";
    }
    if (seconds < 90) return (seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)) + " s";
    return ago(seconds);
  }
  const pair = (a, b) => (a === null && b === null ? "-" : took(a) + " / " + took(b));
  const mib = (bytes) => (bytes ? (bytes / 1048576).toFixed(0) + " MiB" : "-");

  // Replace a table body's rows, only when what it shows changed (a redraw would lose a
  // selection, a hover or an open traceback for nothing).
  const drawn = new Map();
  function fill(target, key, rows, empty, columns) {
    const text = JSON.stringify(key);
    if (drawn.get(target) === text) return;
    drawn.set(target, text);
    const list = rows.length ? rows : [h("tr", { class: "empty" },
      h("td", { colspan: columns || 1, text: empty || "none" }))];
    target.replaceChildren(...list);
  }
  const tbody = (id) => document.querySelector("#" + id + " tbody");
  const cell = (col, value, cls) => h("td", { "data-col": col, class: cls }, value);
  const ncell = (col, value) => cell(col, num(value), "num");

  // -- talking to the server -------------------------------------------------------------

  function flash(message, isError) {
    const box = document.getElementById("flash");
    box.textContent = message;
    box.className = isError ? "error" : "ok";
    box.hidden = false;
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => { box.hidden = true; }, 6000);
  }

  function live(ok, error) {
    const mark = document.getElementById("live");
    if (!mark) return;
    mark.className = ok ? "live ok" : "live down";
    mark.textContent = ok ? "live · " + when(Date.now()).slice(11) : "not updating: " + error;
  }

  let refreshNow = () => {};

  function poll(url, render) {
    let timer = null;
    async function tick() {
      clearTimeout(timer);
      if (!document.hidden) {
        try {
          const reply = await fetch(url(), { headers: { Accept: "application/json" } });
          if (reply.status === 401) {
            location.href = "/login?next=" + enc(location.pathname + location.search);
            return;
          }
          const data = await reply.json();
          if (!reply.ok) throw new Error(data.error || reply.statusText);
          render(data);
          live(true);
        } catch (err) {
          live(false, err.message || String(err));
        }
      }
      timer = setTimeout(tick, POLL_MS);
    }
    refreshNow = tick;
    const first = document.getElementById("initial");
    if (first) {
      render(JSON.parse(first.textContent));
      live(true);
    }
    timer = setTimeout(tick, POLL_MS);
  }

  async function act(url, payload, button, after) {
    if (button) button.disabled = true;
    try {
      const reply = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
        body: JSON.stringify(payload || {}),
      });
      const data = await reply.json().catch(() => ({}));
      const failed = !reply.ok || Boolean(data.error);
      flash(failed ? "error: " + (data.error || reply.statusText) : data.message || "done", failed);
      if (!failed && after) after(data);
    } catch (err) {
      flash("error: " + (err.message || err), true);
    } finally {
      if (button) button.disabled = false;
      refreshNow();
    }
  }

  function button(label, cls, onclick) {
    if (READ_ONLY) return null;
    return h("button", { type: "button", class: cls, "data-action": cls, text: label, onclick });
  }
  const retryUrl = (flow) => "/api/flows/" + enc(flow) + "/retry";
  const pauseUrl = (flow) => "/api/flows/" + enc(flow) + "/pause";
  const jobActionUrl = (flow, id, what) => "/api/flows/" + enc(flow) + "/jobs/" + enc(id) + "/" + what;

  // -- charts ----------------------------------------------------------------------------

  // Bars per minute: completed (green) with failed (red) on top, oldest minute first.
  function bars(completed, failed, width, height, labels) {
    const n = Math.max(completed.length, 1);
    const totals = completed.map((c, i) => c + (failed[i] || 0));
    const top = Math.max(1, ...totals);
    const pad = labels ? 18 : 0;
    const inner = height - pad;
    const w = width / n;
    const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "bars",
      role: "img", "aria-label": `per minute, max ${top}` });
    completed.forEach((c, i) => {
      const f = failed[i] || 0;
      const minute = n - 1 - i;
      const tip = s("title", { text: `${minute ? minute + " min ago" : "this minute"}: ` +
        `${c} completed, ${f} failed` });
      const hc = (c / top) * inner;
      const hf = (f / top) * inner;
      const g = s("g", {}, tip);
      if (c) g.append(s("rect", { class: "done", x: i * w, y: inner - hc, width: Math.max(w - 1, 1), height: hc }));
      if (f) g.append(s("rect", { class: "fail", x: i * w, y: inner - hc - hf, width: Math.max(w - 1, 1), height: hf }));
      g.append(s("rect", { class: "hit", x: i * w, y: 0, width: w, height: inner }));
      svg.append(g);
    });
    svg.append(s("line", { class: "axis", x1: 0, x2: width, y1: inner + 0.5, y2: inner + 0.5 }));
    if (labels) {
      svg.append(s("text", { x: 0, y: height - 4, class: "label", text: `${n} min ago` }));
      svg.append(s("text", { x: width, y: height - 4, class: "label end", text: "now" }));
      svg.append(s("text", { x: 2, y: 11, class: "label", text: `${top}/min` }));
    }
    return svg;
  }

  // The stages as boxes: top stages left to right with arrows to their next queue, each
  // one's child stages below it.
  function graph(description, byName) {
    const BW = 190, BH = 64, CH = 64, GX = 64, GY = 18, IND = 26, TOP = 34;
    const queues = description.queues || [];
    const column = new Map(queues.map((q, i) => [q.name, i]));
    const rows = Math.max(0, ...queues.map((q) => (q.children || []).length));
    const width = Math.max(1, queues.length) * (BW + GX) - GX + 40;
    const height = TOP + BH + rows * (CH + GY) + 16;
    const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "flowgraph" });
    svg.append(s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    s("path", { d: "M0,0 L10,5 L0,10 z", class: "head" }))));
    const box = (name, label, x, y, bh) => {
      const st = byName.get(name) || {};
      const cls = "box" + (st.failed ? " failing" : "") + (st.processing ? " busy" : "");
      return s("a", { href: stageUrl(description.name, name), "data-stage": name },
        s("title", { text: name }),
        s("rect", { x, y, width: label === name ? BW : BW - IND, height: bh, rx: 6, class: cls }),
        s("text", { x: x + 10, y: y + 18, class: "stage" }, label.length > 24 ? label.slice(0, 23) + "…" : label),
        s("text", { x: x + 10, y: y + 36, class: "depth", "data-depth": name },
          `${num(st.waiting)} waiting · ${num(st.processing)} running`),
        s("text", { x: x + 10, y: y + 53, class: "depth" + (st.failed ? " bad" : "") },
          `${num(st.failed)} failed · ${st.done_per_min ?? 0}/min`));
    };
    queues.forEach((q, i) => {
      const x = 20 + i * (BW + GX);
      (q.children || []).forEach((c, k) => {
        const full = q.name + ":" + c.name;
        const y = TOP + BH + GY + k * (CH + GY);
        const mid = y + CH / 2;
        svg.append(s("path", { class: "child", d: `M${x + 12},${TOP + BH} V${mid} H${x + IND}` }));
        svg.append(box(full, c.name, x + IND, y, CH));
      });
      svg.append(box(q.name, q.name, x, TOP, BH));
      const to = column.get(q.nextQueue);
      if (to === undefined) return;
      const x1 = x + BW, y1 = TOP + BH / 2, x2 = 20 + to * (BW + GX), y2 = y1;
      const d = to === i + 1 ? `M${x1},${y1} H${x2 - 2}`
        : `M${x + BW / 2},${TOP} C${x + BW / 2},4 ${x2 + BW / 2},4 ${x2 + BW / 2},${TOP - 2}`;
      svg.append(s("path", { class: "next", d, "marker-end": "url(#arrow)" }));
    });
    return svg;
  }

  // -- pages -----------------------------------------------------------------------------

  function overview(data) {
    const rows = data.flows.map((f) => h("tr", { "data-flow": f.flow },
      cell("flow", h("a", { href: flowUrl(f.flow), text: f.flow })),
      ncell("stages", f.stages), ncell("waiting", f.waiting), ncell("processing", f.processing),
      cell("failed", num(f.failed), "num" + (f.failed ? " bad" : "")),
      ncell("done_per_min", f.done_per_min), ncell("nodes", f.nodes), ncell("workers", f.workers),
      cell("eta", took(f.eta_seconds), "num")));
    fill(tbody("flows"), data.flows, rows,
      "no flow registered yet: a flow registers when its supervisor starts", 9);
  }

  function flowPage(data) {
    const flow = data.flow;
    const byName = new Map(data.stages.map((st) => [st.name, st]));
    const graphBox = document.getElementById("graph");
    const shape = JSON.stringify([data.description, data.stages.map((st) =>
      [st.waiting, st.processing, st.failed, st.done_per_min])]);
    if (graphBox.dataset.shape !== shape) {
      graphBox.dataset.shape = shape;
      graphBox.replaceChildren(graph(data.description, byName));
    }
    const stageRows = data.stages.map((st) => h("tr", { "data-stage": st.name, class: st.parent ? "child" : "" },
      cell("stage", h("a", { href: stageUrl(flow, st.name), text: st.name + (st.paused ? " (paused)" : "") })),
      ...["waiting", "processing", "delayed", "parked", "failed"].map((state) =>
        cell(state, h("a", { href: stageUrl(flow, st.name, state), text: num(st[state]) }),
          "num" + (state === "failed" && st.failed ? " bad" : ""))),
      ncell("done_per_min", st.done_per_min),
      cell("oldest", ago(st.oldest_waiting_s), "num"),
      ncell("completed", st.totals.completed || 0),
      ncell("failed_total", st.totals.failed || 0),
      cell("history", bars(st.completed_per_minute, st.failed_per_minute, 120, 24, false)),
      cell("actions", [
        button(st.paused ? "resume" : "pause", st.paused ? "resume" : "pause", (e) =>
          act(pauseUrl(flow), { queue: st.name, pause: !st.paused }, e.target)),
        st.failed ? button("retry all failed", "retry-all", (e) =>
          act(retryUrl(flow), { queue: st.name }, e.target)) : null])));
    fill(tbody("stages"), data.stages, stageRows, "no stages", 12);

    document.getElementById("flow-eta").textContent = took(data.eta_seconds);
    const workRows = data.stages.map((st) => h("tr", { "data-stage": st.name, class: st.parent ? "child" : "" },
      cell("stage", st.name), ncell("throughput", st.throughput_per_s), ncell("workers", st.workers),
      cell("job_mean", took(st.job_seconds_mean), "num"),
      cell("job", pair(st.job_seconds_p50, st.job_seconds_p95), "num"),
      cell("cpu", pair(st.cpu_seconds_mean, st.cpu_seconds_p95), "num"),
      cell("backlog", took(st.backlog_seconds), "num"),
      cell("eta", took(st.eta_seconds), "num")));
    fill(tbody("work"), data.stages, workRows, "no stages", 8);

    const completed = [], failed = [];
    for (const st of data.stages) {
      st.completed_per_minute.forEach((v, i) => { completed[i] = (completed[i] || 0) + v; });
      st.failed_per_minute.forEach((v, i) => { failed[i] = (failed[i] || 0) + v; });
    }
    const chart = document.getElementById("chart");
    const series = JSON.stringify([completed, failed]);
    if (chart.dataset.series !== series) {
      chart.dataset.series = series;
      chart.replaceChildren(bars(completed, failed, 720, 140, true));
    }

    const now = data.at;
    const nodeRows = [];
    for (const n of data.nodes) {
      const beat = n.at ? ago(now - n.at) + " ago" : "-";
      nodeRows.push(h("tr", { class: "node", "data-node": n.node },
        h("td", { colspan: 10 }, h("strong", { text: n.node }),
          ` on ${n.host} · pid ${n.pid} · ${n.state} · procflow ${n.version} · beat ${beat}`)));
      for (const w of n.workers || []) {
        nodeRows.push(h("tr", { "data-worker": w.name },
          cell("worker", w.name), cell("stage", w.stage), cell("pid", w.pid ?? "-", "num"),
          cell("state", w.state, "state " + w.state),
          cell("job", w.job ? h("a", { href: jobUrl(w.job, flow), class: "mono", text: w.job }) : "-"),
          cell("for", w.since ? ago(now - w.since) : "-", "num"),
          cell("rss", mib(w.rss), "num"), ncell("cpu", w.cpu),
          ncell("jobs", w.jobs), ncell("restarts", w.restarts)));
      }
    }
    fill(tbody("nodes"), [data.nodes.map((n) => [n.node, n.state, n.workers]), Math.round(now / 5)],
      nodeRows, "no node is running this flow", 10);
  }

  function stagePage(data) {
    const { flow, queue, state } = data;
    const tabs = data.states.map((name) => {
      const count = name === "finished" ? "" : " " + num(data.stage[name]);
      const href = stageUrl(flow, queue, name) + "&count=" + data.count;
      return h("a", { href, class: name === state ? "tab on" : "tab", "data-state": name }, name + count);
    });
    const tabBox = document.getElementById("tabs");
    if (tabBox.dataset.key !== JSON.stringify(tabs.map((t) => t.textContent))) {
      tabBox.dataset.key = JSON.stringify(tabs.map((t) => t.textContent));
      tabBox.replaceChildren(...tabs);
    }
    const end = data.start + data.rows.length;
    document.getElementById("range").textContent = data.total
      ? `${num(data.start + 1)}–${num(end)} of ${num(data.total)} ${state}` : `no ${state} jobs`;
    const link = (label, start, enabled, id) => enabled
      ? h("a", { href: stageUrl(flow, queue, state) + `&start=${start}&count=${data.count}`, id, text: label })
      : h("span", { class: "off", id, text: label });
    document.getElementById("pager").replaceChildren(
      link("« first", 0, data.start > 0, "first"), " ",
      link("‹ previous", Math.max(0, data.start - data.count), data.start > 0, "previous"), " ",
      link("next ›", data.start + data.count, end < data.total, "next"));
    const actions = document.getElementById("stage-actions");
    const retryAll = state === "failed" && data.total
      ? button(`retry all ${num(data.total)} failed`, "retry-all", (e) =>
        act(retryUrl(flow), { queue }, e.target)) : null;
    if (actions.dataset.key !== String(retryAll && data.total)) {
      actions.dataset.key = String(retryAll && data.total);
      actions.replaceChildren(...(retryAll ? [retryAll] : []));
    }
    const score = { delayed: "due", parked: "parked since" }[state];
    document.getElementById("score-head").textContent = score || "outcome";
    const rows = data.rows.map((r) => h("tr", { "data-job": r.id },
      cell("id", h("a", { href: jobUrl(r.id, flow), class: "mono", text: r.id })),
      cell("created", when(r.createdAt * 1000)), ncell("attempts", r.attempts),
      cell("score", score ? when(r.score) : r.outcome),
      cell("error", r.error, "error-text"), cell("preview", r.preview, "mono preview"),
      cell("actions", state === "failed"
        ? button("retry", "retry", (e) => act(retryUrl(flow), { queue, ids: [r.id] }, e.target))
        : ["waiting", "delayed", "parked", "processing"].includes(state)
          ? button("cancel", "cancel", (e) => act(jobActionUrl(flow, r.id, "cancel"), {}, e.target))
          : null)));
    fill(tbody("jobs"), data.rows, rows, `no ${state} jobs on this page`, 7);
  }

  function jobPage(data) {
    const flow = data.flow;
    const dd = (label, value, id) => [h("dt", { text: label }), h("dd", { id }, value)];
    const ended = ["done", "failed", "cancelled"].includes(data.state);
    const places = data.places.map((p) => `${p.state} in ${p.queue}`).join(", ") ||
      (ended ? "left the flow (in no stage's list)" : "in no list");
    const summary = [
      ...dd("flow", h("a", { href: flowUrl(flow), text: flow })),
      ...(data.queue ? dd("child stage", h("a", { href: stageUrl(flow, data.queue), text: data.queue })) : []),
      ...(data.parent ? dd("parent job", h("a", { href: jobUrl(data.parent, flow), class: "mono", id: "parent", text: data.parent })) : []),
      ...dd("state", data.state, "job-state"),
      ...dd("where", places, "job-places"),
      ...dd("created", when(data.createdAt * 1000)),
    ];
    const box = document.getElementById("summary");
    if (box.dataset.key !== JSON.stringify([data.state, places])) {
      box.dataset.key = JSON.stringify([data.state, places]);
      box.replaceChildren(...summary);
    }
    const a = data.actions;
    const buttons = [
      a.retry ? button("retry", "retry", (e) =>
        act(retryUrl(flow), { queue: a.retry, ids: [data.id] }, e.target)) : null,
      a.cancel ? button("cancel", "cancel", (e) =>
        act(jobActionUrl(flow, data.id, "cancel"), {}, e.target)) : null,
      button("delete", "delete", (e) => {
        if (!window.confirm("Delete job " + data.id + " with its children and lookup entries?")) return;
        act(jobActionUrl(flow, data.id, "delete"), {}, e.target, () => { location.href = flowUrl(flow); });
      }),
    ].filter(Boolean);
    const actionBox = document.getElementById("actions");
    if (actionBox.dataset.key !== JSON.stringify(a)) {
      actionBox.dataset.key = JSON.stringify(a);
      actionBox.replaceChildren(...buttons);
    }
    fill(tbody("fields"), data.fields, data.fields.map((f) => h("tr", { "data-field": f.name },
      cell("name", f.name, "mono"),
      cell("value", [h("pre", { text: f.value }), f.search.length ? h("span", { class: "search-links" },
        "search: ", ...f.search.map((v) => h("a", { href: searchUrl(flow, f.name, v), class: "lookup", text: `${f.name} = ${v}` })))
        : null]))), "no fields", 2);
    document.getElementById("attempts").textContent = data.attempts.length
      ? "attempts: " + data.attempts.map((x) => `${x.stage} ${x.count}`).join(", ") : "not attempted yet";
    fill(tbody("errors"), data.errors, data.errors.map((e) => h("tr", {},
      cell("stage", e.stage), ncell("attempt", e.attempt), cell("kind", e.kind),
      cell("at", when(e.at)), cell("error", e.error, "error-text"),
      ncell("exit", e.exitCode), cell("signal", e.signal || "-"), cell("worker", e.worker || "-"),
      cell("pid", e.pid ?? "-", "num"),
      cell("traceback", e.traceback || e.details ? h("details", {}, h("summary", { text: "show" }),
        h("pre", { text: [e.traceback, e.details].filter(Boolean).join("\n") })) : "-"))),
    "no errors", 10);
    fill(tbody("children"), data.children, data.children.map((c) => h("tr", { "data-child": c.id },
      cell("queue", c.queue), cell("id", h("a", { href: jobUrl(c.id, flow), class: "mono", text: c.id })),
      cell("state", c.outcome, "state " + c.outcome), cell("error", c.error, "error-text"))),
    "no children", 4);
  }

  function searchPage(data) {
    const flowSelect = document.getElementById("search-flow");
    const attrSelect = document.getElementById("search-attribute");
    const offer = () => {
      for (const option of attrSelect.options) option.hidden = option.dataset.flow !== flowSelect.value;
      const chosen = attrSelect.selectedOptions[0];
      if (!chosen || chosen.hidden) {
        const first = [...attrSelect.options].find((o) => !o.hidden);
        attrSelect.value = first ? first.value : "";
      }
    };
    if (!flowSelect.dataset.ready) {
      flowSelect.dataset.ready = "1";
      flowSelect.addEventListener("change", offer);
      offer();
    }
    const status = document.getElementById("search-status");
    if (data.rows === null) {
      status.textContent = "Choose a flow and a lookup attribute, give a value.";
      fill(tbody("results"), [], [], "no search yet", 6);
      return;
    }
    status.textContent = data.error ? "error: " + data.error
      : `${data.rows.length} job(s) of ${data.flow} with ${data.attribute} = ${data.value}` +
        (data.rows.length >= data.limit ? ` (the newest ${data.limit})` : "");
    status.className = data.error ? "error" : "hint";
    fill(tbody("results"), data.rows, data.rows.map((r) => h("tr", { "data-job": r.id },
      cell("id", h("a", { href: jobUrl(r.id, data.flow), class: "mono", text: r.id })),
      cell("created", when(r.createdAt * 1000)), cell("state", r.outcome, "state " + r.outcome),
      cell("last", r.lastStage || "-"), cell("error", r.error, "error-text"),
      cell("preview", r.preview, "mono preview"))), "no job found", 6);
  }

  // -- start -----------------------------------------------------------------------------

  const api = body.dataset.api;
  const here = () => api + location.search;
  const pages = { overview, flow: flowPage, stage: stagePage, job: jobPage, search: searchPage };
  const render = pages[body.dataset.page];
  if (render) {
    const count = document.getElementById("count");
    if (count) count.addEventListener("change", () => count.form.submit());
    poll(here, render);
  }
})();
