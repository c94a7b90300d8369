"use strict";
// The operator console: plain DOM, one fetch per view, the token in this tab's storage.
(() => {
  const TOKEN_KEY = "operator-token";
  const token = sessionStorage.getItem(TOKEN_KEY);
  const $ = (id) => document.getElementById(id);
  const NOW_EVERY_MS = 5000;

  async function api(path, options = {}) {
    const response = await fetch("/ops/api/" + path, {
      ...options,
      cache: "no-store",
      headers: { Authorization: "Bearer " + token, "Content-Type": "application/json", ...(options.headers || {}) },
    });
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      location.reload();
      throw new Error("signed out");
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || "the console's API answered " + response.status);
    return body;
  }

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });
  const when = (iso) => (iso ? timeFormat.format(new Date(iso)) : "—");
  function ago(iso) {
    const secs = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    return duration(secs) + " ago";
  }
  function duration(secs) {
    if (secs < 1) return Math.round(secs * 1000) + " ms";
    if (secs < 90) return Math.round(secs) + " s";
    if (secs < 5400) return Math.round(secs / 60) + " min";
    if (secs < 172800) return Math.round(secs / 3600) + " h";
    return Math.round(secs / 86400) + " d";
  }
  const outcomeWords = { dead_lettered: "dead-lettered" };
  const badge = (outcome) => el("span", { class: "badge " + outcome }, outcomeWords[outcome] || outcome);
  const jobLink = (id, text) => (id ? el("a", { href: "#job/" + encodeURIComponent(id) }, text || id) : "—");
  const code = (text) => (text ? el("code", {}, text) : "—");

  function showError(err) {
    const box = $("error");
    box.textContent = err ? err.message || String(err) : "";
    box.hidden = !err;
  }
  let toastTimer;
  function toast(text) {
    const box = $("toast");
    box.textContent = text;
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (box.hidden = true), 6000);
  }
  function stamp() {
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  // A confirmation dialog; resolves to the reason typed (or true) when confirmed.
  function confirmAction(text, { reason = false, ok = "Confirm" } = {}) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = ok;
    $("confirm-reason-label").hidden = !reason;
    $("confirm-reason").value = "";
    $("confirm-reason").required = reason;
    dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        if (dialog.returnValue !== "ok") return resolve(null);
        resolve(reason ? $("confirm-reason").value.trim() || null : true);
      }, { once: true });
    });
  }

  // ---- Now ----
  function tile(label, value, state = "") {
    return el("div", { class: "tile " + state }, el("span", { class: "label" }, label), el("strong", {}, value));
  }
  async function loadNow() {
    const now = await api("now");
    const work = now.queues[0] || { messages: 0 };
    const delayed = now.queues.filter((q) => q.name.includes(".delay.")).reduce((n, q) => n + q.messages, 0);
    const dead = now.queues.find((q) => q.name.endsWith(".dead")) || { messages: 0 };
    const rate = (n) => (n === undefined ? "—" : n.toFixed(1) + "/s");
    $("tiles").replaceChildren(
      tile("Accepted", now.ingest ? rate(now.ingest.accepted_per_sec) : "—"),
      tile("Refused", now.ingest ? rate(now.ingest.refused_per_sec) : "—", now.ingest && now.ingest.refused_per_sec > 0 ? "warn" : ""),
      tile("Waiting", work.messages, work.messages > 100 ? "warn" : ""),
      // Webhook timestamps are whole seconds: below one second the wait is not known better.
      tile("Oldest wait", now.oldest_wait_secs === null ? "—" : now.oldest_wait_secs < 1 ? "under 1 s" : duration(now.oldest_wait_secs), now.oldest_wait_secs > 60 ? "warn" : ""),
      tile("Delayed (retries)", delayed),
      tile("Dead letters", dead.messages, dead.messages > 0 ? "bad" : ""),
      tile("Workers consuming", now.workers, now.workers === 0 ? "bad" : ""),
      tile("Browsers connected", now.browsers),
      tile("Creations failing", now.creations_failed + " of " + now.creations, now.creations_failed > 0 ? "warn" : ""),
      tile("Stuck jobs", now.stuck_jobs, now.stuck_jobs > 0 ? "warn" : ""),
    );
    $("ingest-hint").hidden = Boolean(now.ingest);
    $("queues").replaceChildren(...now.queues.map((q) =>
      el("tr", {}, el("td", {}, code(q.name)), el("td", { class: "num" }, q.messages), el("td", { class: "num" }, q.consumers))));
    const outcomes = Object.entries(now.handled_last_minute);
    $("outcomes").replaceChildren(...(outcomes.length
      ? outcomes.map(([outcome, n]) => el("a", { href: "#webhooks?outcome=" + outcome, class: "outcome" }, badge(outcome), " ", n))
      : [el("span", { class: "hint" }, "No webhook handled in the last minute.")]));
  }

  // ---- Webhooks ----
  let webhookNext = null;
  function webhookQuery(before) {
    const form = new FormData($("webhook-filters"));
    const params = new URLSearchParams();
    for (const name of ["outcome", "kind", "q"]) if (form.get(name)) params.set(name, form.get(name));
    const window = Number(form.get("window"));
    if (window) params.set("since", new Date(Date.now() - window * 1000).toISOString());
    if (before) params.set("before", before);
    return params;
  }
  function webhookRow(row) {
    const job = row.job_row_id || row.replicate_id;
    return el("tr", { class: "outcome-" + row.outcome },
      el("td", { title: row.at }, when(row.at)),
      el("td", {}, code(row.webhook_id), row.attempt > 1 ? el("span", { class: "hint small" }, " attempt " + row.attempt) : null,
        row.replays > 0 ? el("span", { class: "badge replayed" }, "replayed") : null),
      el("td", {}, code(row.replicate_id)),
      el("td", {}, row.job_row_id ? jobLink(row.job_row_id, (row.kind || "job") + " " + row.job_row_id) : job ? jobLink(job, "find the job") : "—"),
      el("td", {}, row.status || "—"),
      el("td", {}, badge(row.outcome), el("div", { class: "detail" }, row.detail)),
      el("td", { class: "num" }, row.duration_ms.toFixed(1) + " ms"));
  }
  async function loadWebhooks(more = false) {
    const page = await api("webhooks?" + webhookQuery(more ? webhookNext : null));
    const rows = page.webhooks.map(webhookRow);
    if (more) $("webhook-rows").append(...rows);
    else $("webhook-rows").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 7, class: "hint" }, "No webhook matches."))]));
    webhookNext = page.next;
    $("webhooks-more").hidden = !page.next;
  }

  // ---- Dead letters ----
  let letters = [];
  function selectedIds() {
    return [...document.querySelectorAll("#letter-rows input[type=checkbox]:checked")].map((box) => box.value);
  }
  function updateReplayButtons() {
    const n = selectedIds().length;
    $("replay-selected").disabled = n === 0;
    $("replay-selected").textContent = n ? "Replay " + n + " selected" : "Replay selected";
    $("replay-matching").disabled = letters.length === 0;
    $("replay-matching").textContent = "Replay all " + letters.length + " shown";
  }
  async function loadLetters() {
    const form = new FormData($("letter-filters"));
    const params = new URLSearchParams();
    for (const name of ["reason", "q"]) if (form.get(name)) params.set(name, form.get(name));
    const list = await api("dead-letters?" + params);
    letters = list.letters;
    $("letter-count").textContent = letters.length + " shown of " + list.total + " in the dead-letter queue";
    $("select-all").checked = false;
    $("letter-rows").replaceChildren(...(letters.length ? letters.map((letter) => el("tr", {},
      el("td", {}, el("input", { type: "checkbox", value: letter.webhook_id, "aria-label": "Select " + letter.webhook_id, onchange: updateReplayButtons })),
      el("td", {}, code(letter.webhook_id)),
      el("td", {}, letter.job_id ? jobLink(letter.job_id) : "—"),
      el("td", {}, letter.status || "—"),
      el("td", { class: "reason" }, letter.reason,
        letter.replays > 0 ? el("div", {}, el("span", { class: "badge dead_lettered" }, "replayed " + letter.replays + "× and died again")) : null),
      el("td", { class: "num" }, letter.attempts),
      el("td", {}, letter.first_seen_ms ? when(new Date(letter.first_seen_ms).toISOString()) : "—"),
      el("td", {}, el("button", { class: "secondary small", onclick: () => replay([letter.webhook_id]) }, "Replay")),
    )) : [el("tr", {}, el("td", { colspan: 8, class: "hint" }, "No dead letter matches."))]));
    updateReplayButtons();
  }
  async function replay(ids) {
    const n = ids.length;
    const ok = await confirmAction("Send " + n + " dead letter" + (n === 1 ? "" : "s") + " back to the work queue? Each is processed again like a new webhook; one that dies again comes back here, marked.", { ok: "Replay " + n });
    if (!ok) return;
    const result = await api("dead-letters/replay", { method: "POST", body: JSON.stringify({ webhook_ids: ids }) });
    toast(result.replayed.length + " replayed");
    await loadLetters();
  }

  // ---- Stuck jobs ----
  function jobActions(job, after) {
    const unfinished = job.status === "PENDING" || job.status === "PROCESSING";
    if (!unfinished) return [];
    return [
      job.job_id ? el("button", { class: "secondary small", onclick: () => act(() => api("jobs/" + encodeURIComponent(job.id) + "/ask-replicate", { method: "POST" }), after) }, "Ask Replicate now") : null,
      el("button", { class: "danger small", onclick: async () => {
        const reason = await confirmAction("Fail job " + job.id + " and give back its " + job.credits_used + " credits? The user sees the reason as the job's error.", { reason: true, ok: "Fail and refund" });
        if (reason) await act(() => api("jobs/" + encodeURIComponent(job.id) + "/fail", { method: "POST", body: JSON.stringify({ reason }) }), after);
      } }, "Fail and refund"),
    ];
  }
  async function act(call, after) {
    try {
      const done = await call();
      toast(done.message);
      await after();
    } catch (err) {
      showError(err);
    }
  }
  async function loadStuck() {
    const { jobs } = await api("stuck");
    $("stuck-rows").replaceChildren(...(jobs.length ? jobs.map((job) => el("tr", {},
      el("td", {}, jobLink(job.id), el("div", { class: "detail" }, job.label)),
      el("td", {}, job.kind),
      el("td", {}, code(job.user_id)),
      el("td", {}, job.status),
      el("td", { title: job.updated_at }, ago(job.updated_at)),
      el("td", {}, job.job_id ? code(job.job_id) : el("span", { class: "hint" }, "never named"),
        job.not_found_since ? el("div", {}, el("span", { class: "badge dead_lettered" }, "404 since " + when(job.not_found_since))) : null),
      el("td", { class: "num" }, job.credits_used),
      el("td", { class: "row-actions" }, jobActions(job, loadStuck)),
    )) : [el("tr", {}, el("td", { colspan: 8, class: "hint" }, "No stuck job."))]));
  }

  // ---- One job ----
  function entry(item) {
    switch (item.type) {
      case "webhook":
        return el("li", { class: "webhook" }, el("time", {}, when(item.at)), " webhook ", code(item.webhook_id), " ",
          item.status || "", " → ", badge(item.outcome), item.attempt > 1 ? " (attempt " + item.attempt + ")" : "",
          el("div", { class: "detail" }, item.detail));
      case "progress-run":
        return el("li", { class: "webhook" }, el("time", {}, when(item.at)), " " + item.count + " webhooks ", item.status || "", " → ", badge("progress"),
          el("div", { class: "detail" }, "logs or output only, until " + when(item.until)));
      case "event":
        return el("li", { class: "event" }, el("time", {}, when(item.at)), " event ", el("strong", {}, "#" + item.seq), " sent to the browser: ",
          item.status || "", item.refunded ? " (" + item.refunded + " credits refunded)" : "", item.published_at ? "" : " — not yet published");
      case "ledger":
        return el("li", { class: "ledger" }, el("time", {}, when(item.at)), " ledger ", el("strong", {}, item.kind), " ", (item.amount > 0 ? "+" : "") + item.amount + " credits");
      case "operator":
        return el("li", { class: "operator" }, el("time", {}, when(item.at)), " operator ", el("strong", {}, item.action.replaceAll("_", " ")), el("div", { class: "detail" }, item.detail));
      default:
        return el("li", {}, JSON.stringify(item));
    }
  }
  // Runs of progress-only webhooks (one per log line while a job runs) folded into one line.
  function grouped(entries) {
    const out = [];
    for (const item of entries) {
      const last = out[out.length - 1];
      const progress = item.type === "webhook" && item.outcome === "progress";
      if (progress && last && (last.type === "progress-run" || (last.type === "webhook" && last.outcome === "progress"))) {
        if (last.type === "webhook") out[out.length - 1] = { type: "progress-run", at: last.at, until: item.at, count: 2, status: item.status };
        else Object.assign(last, { until: item.at, count: last.count + 1 });
      } else out.push(item);
    }
    return out;
  }

  async function loadJob(id) {
    const timeline = await api("jobs/" + encodeURIComponent(id));
    const job = timeline.job;
    const field = (label, value) => el("div", {}, el("span", { class: "label" }, label), el("span", {}, value));
    $("job-summary").replaceChildren(
      el("h2", {}, job.kind + " " + job.id),
      el("div", { class: "fields" },
        field("Status", el("span", { class: "status " + job.status }, job.status)),
        field("User", code(job.user_id)),
        field("Replicate id", code(job.job_id)),
        field("Credits", job.credits_used),
        field("Created", when(job.created_at)),
        field("Last change", when(job.updated_at)),
        field(job.kind === "training" ? "Name" : "Prompt", job.label),
        job.error_message ? field("Error", job.error_message) : null));
    $("job-actions").replaceChildren(...jobActions(job, () => loadJob(id)));
    $("timeline").replaceChildren(...(timeline.entries.length ? grouped(timeline.entries).map(entry) : [el("li", { class: "hint" }, "Nothing recorded yet.")]));
  }

  // ---- Navigation ----
  let nowTimer = null;
  async function show() {
    showError(null);
    clearInterval(nowTimer);
    const hash = decodeURIComponent(location.hash.slice(1)) || "now";
    const [view, rest] = hash.split(/[/?](.*)/s);
    const section = view === "job" ? "job" : view;
    for (const node of document.querySelectorAll("[data-section]")) node.hidden = node.dataset.section !== section;
    for (const link of document.querySelectorAll("nav a")) link.setAttribute("aria-current", link.dataset.tab === section ? "page" : "false");
    try {
      if (view === "now") {
        await loadNow();
        nowTimer = setInterval(() => loadNow().then(stamp, showError), NOW_EVERY_MS);
      } else if (view === "webhooks") {
        if (rest) {
          const params = new URLSearchParams(rest);
          for (const [name, value] of params) {
            const input = $("webhook-filters").elements[name];
            if (input) input.value = value;
          }
        }
        await loadWebhooks();
      } else if (view === "dead-letters") await loadLetters();
      else if (view === "stuck") await loadStuck();
      else if (view === "job") await loadJob(rest);
      else location.hash = "#now";
      stamp();
    } catch (err) {
      showError(err);
    }
  }

  $("webhook-filters").addEventListener("submit", (event) => { event.preventDefault(); loadWebhooks().then(stamp, showError); });
  $("webhooks-more").addEventListener("click", () => loadWebhooks(true).catch(showError));
  $("letter-filters").addEventListener("submit", (event) => { event.preventDefault(); loadLetters().then(stamp, showError); });
  $("select-all").addEventListener("change", (event) => {
    for (const box of document.querySelectorAll("#letter-rows input[type=checkbox]")) box.checked = event.target.checked;
    updateReplayButtons();
  });
  $("replay-selected").addEventListener("click", () => replay(selectedIds()).catch(showError));
  $("replay-matching").addEventListener("click", () => replay(letters.map((l) => l.webhook_id)).catch(showError));
  window.addEventListener("hashchange", show);
  // The console was written into the sign-in page's document: say where we are.
  if (location.pathname !== "/ops/") history.replaceState(null, "", "/ops/" + location.hash);
  show();
})();
