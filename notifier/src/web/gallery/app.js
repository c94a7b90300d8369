// The gallery: first paint from the jobs API (the state as of a `seq`), then every change
// live from that `seq` on — WebSocket first, Server-Sent Events when WebSocket cannot
// connect (or with ?transport=sse). No polling, no replay of the whole history.
(() => {
  "use strict";
  const params = new URLSearchParams(location.search);
  // The token leaves the address bar once read (so it is not bookmarked, shared in a
  // screenshot or kept in history); it stays for this tab's session, reloads included.
  const token = params.get("token") || sessionStorage.getItem("gallery-token") || "";
  if (params.has("token")) {
    if (token) sessionStorage.setItem("gallery-token", token);
    params.delete("token");
    const rest = params.toString();
    window.history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  }
  const $ = (id) => document.getElementById(id);
  const els = {
    jobs: $("jobs"), empty: $("empty"), credits: $("credits"), connection: $("connection"),
    notice: $("notice"), create: $("create"), notConfigured: $("not-configured"),
    generate: $("generate"), prompt: $("prompt"), generateButton: $("generate-button"),
    trainPanel: $("train-panel"), train: $("train"), trainButton: $("train-button"),
    more: $("more"), toasts: $("toasts"), viewer: $("viewer"),
  };
  const KIND = { generation: "Generation", upscale: "Upscale", training: "Training" };
  const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
  const RANK = { PENDING: 0, PROCESSING: 1, COMPLETED: 2, FAILED: 2, CANCELLED: 2 };
  const UPSCALE_MARKER = "[UPSCALED]";

  let lastSeq = 0;
  let nextCursor = null;
  let features = { enabled: false, training: false, costs: {} };
  let transport = params.get("transport") === "sse" ? "sse" : "websocket";
  let wsEverOpened = false;
  let backoff = 500;
  let stopped = false;
  const jobs = new Map(); // id → latest job object
  const upscaling = new Map(); // source id → upscale id, while the upscale runs

  // What the page tells the console; kept in `window.galleryLog` for tests too.
  const history = (window.galleryLog = []);
  function log(message, detail) {
    history.push(detail === undefined ? message : `${message} ${JSON.stringify(detail)}`);
    if (detail === undefined) console.log(message); else console.log(message, detail);
  }

  // ---- the jobs API -------------------------------------------------------------------
  async function api(path, options = {}) {
    const response = await fetch(path, {
      ...options,
      headers: { "Authorization": `Bearer ${token}`, "Content-Type": "application/json" },
    });
    let body = null;
    try { body = await response.json(); } catch { /* not JSON */ }
    if (!response.ok) {
      const error = new Error((body && body.error) || `HTTP ${response.status}`);
      error.status = response.status;
      error.body = body;
      throw error;
    }
    return body;
  }

  function showNotice(html) {
    els.notice.innerHTML = html;
    els.notice.hidden = false;
  }

  function tokenProblem(error) {
    stopped = true;
    setConnection("offline", "offline");
    showNotice(`<strong>Your access token was refused</strong> (${escapeHtml(error.message)}).
      Open the gallery with a fresh link: <code>notifier token --user &lt;id&gt;</code> prints a token,
      and <code>deploy/run</code> prints a ready link.`);
  }

  // ---- cards --------------------------------------------------------------------------
  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  function title(job) {
    if (job.kind === "training") return job.name || "Model";
    const prompt = job.prompt || "";
    return prompt.startsWith(UPSCALE_MARKER) ? prompt.slice(UPSCALE_MARKER.length).trim() : prompt;
  }

  function ago(iso) {
    if (!iso) return "";
    const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (seconds < 45) return "just now";
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
    return new Date(iso).toLocaleDateString();
  }

  function card(job) {
    let el = els.jobs.querySelector(`.card[data-id="${CSS.escape(job.id)}"]`);
    if (el) return el;
    el = document.createElement("article");
    el.className = "card";
    el.dataset.id = job.id;
    el.dataset.kind = job.kind;
    el.dataset.created = job.created_at || new Date().toISOString();
    el.innerHTML = `<div class="head"><span class="kind"></span><span class="status"></span></div>
      <div class="progress" role="progressbar" aria-valuemin="0" aria-valuemax="100"><div></div></div>
      <div class="images"></div>
      <div class="body"><p class="title"></p><p class="meta"><time></time><span class="cost"></span></p>
        <p class="detail"></p><div class="actions"></div></div>`;
    el.querySelector(".kind").textContent = KIND[job.kind] || job.kind;
    // Newest first, whatever order cards arrive in.
    const later = [...els.jobs.children].find((other) => other.dataset.created < el.dataset.created);
    els.jobs.insertBefore(el, later || null);
    els.empty.hidden = true;
    return el;
  }

  function render(job) {
    const known = jobs.get(job.id);
    if (known && RANK[known.status] > RANK[job.status]) return; // never show a step back
    jobs.set(job.id, job);
    const el = card(job);
    el.dataset.status = job.status;
    el.dataset.jobId = job.job_id || "";
    const status = el.querySelector(".status");
    status.textContent = job.status;
    status.className = `status ${job.status}`;
    el.querySelector(".title").textContent = title(job);
    const time = el.querySelector("time");
    time.dateTime = job.created_at || "";
    time.title = job.created_at ? new Date(job.created_at).toLocaleString() : "";
    time.textContent = ago(job.created_at);
    el.querySelector(".cost").textContent = job.credits_used ? ` · ${job.credits_used} credits` : "";

    const images = el.querySelector(".images");
    const urls = job.image_urls || [];
    if (images.childElementCount !== urls.length) {
      images.replaceChildren(...urls.map((url, i) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "thumb";
        button.setAttribute("aria-label", `Open image ${i + 1} full size`);
        const img = document.createElement("img");
        img.src = url;
        img.alt = `${title(job)} (image ${i + 1})`;
        img.loading = "lazy";
        button.append(img);
        button.addEventListener("click", () => openViewer(url, img.alt));
        return button;
      }));
    }

    const detail = el.querySelector(".detail");
    detail.className = "detail";
    detail.textContent = "";
    if (job.error) {
      detail.classList.add("error");
      detail.textContent = job.error;
    } else if (job.model_version) {
      detail.classList.add("version");
      detail.textContent = job.model_version;
    }
    renderActions(el, job);
    if (TERMINAL.has(job.status)) {
      for (const [source, upscale] of upscaling) {
        if (upscale === job.id) {
          upscaling.delete(source);
          const sourceJob = jobs.get(source);
          if (sourceJob) renderActions(card(sourceJob), sourceJob);
        }
      }
    }
  }

  function renderActions(el, job) {
    const actions = el.querySelector(".actions");
    const canUpscale = features.enabled && job.kind === "generation" && job.status === "COMPLETED"
      && (job.image_urls || []).length > 0;
    if (!canUpscale) { actions.replaceChildren(); return; }
    let button = actions.querySelector("button.upscale");
    if (!button) {
      button = document.createElement("button");
      button.type = "button";
      button.className = "upscale";
      button.addEventListener("click", () => upscale(job.id, button));
      actions.replaceChildren(button);
    }
    const running = upscaling.has(job.id);
    button.disabled = running;
    button.textContent = running ? "Upscaling…" : `Upscale · ${features.costs.upscale ?? "?"} credits`;
  }

  function progress(job) {
    const el = els.jobs.querySelector(`.card[data-id="${CSS.escape(job.id)}"]`);
    if (!el || TERMINAL.has(el.dataset.status)) return;
    if (el.dataset.status === "PENDING") {
      el.dataset.status = "PROCESSING";
      const status = el.querySelector(".status");
      status.textContent = "PROCESSING";
      status.className = "status PROCESSING";
    }
    const percent = Math.round(job.progress * 100);
    el.querySelector(".progress > div").style.width = `${percent}%`;
    el.querySelector(".progress").setAttribute("aria-valuenow", String(percent));
  }

  // ---- toasts and the image viewer ----------------------------------------------------
  function toast(kind, text) {
    const el = document.createElement("div");
    el.className = `toast ${kind}`;
    el.setAttribute("role", kind === "failed" ? "alert" : "status");
    const message = document.createElement("span");
    message.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.addEventListener("click", () => el.remove());
    el.append(message, close);
    els.toasts.append(el);
    setTimeout(() => el.remove(), 8000);
  }

  function finished(message) {
    const job = message.job;
    const name = KIND[job.kind] || "Job";
    const refund = message.refunded ? ` — ${message.refunded} credits refunded` : "";
    if (job.status === "COMPLETED") toast("completed", `✓ ${name} completed: ${title(job)}`);
    if (job.status === "FAILED") toast("failed", `${name} failed: ${job.error || "no reason given"}${refund}`);
    if (job.status === "CANCELLED") toast("cancelled", `${name} cancelled${refund}`);
  }

  function openViewer(url, alt) {
    const img = els.viewer.querySelector("img");
    img.src = url;
    img.alt = alt;
    $("viewer-open").href = url;
    els.viewer.showModal();
  }
  $("viewer-close").addEventListener("click", () => els.viewer.close());
  els.viewer.addEventListener("click", (event) => { if (event.target === els.viewer) els.viewer.close(); });

  // ---- events -------------------------------------------------------------------------
  function setCredits(value) {
    if (typeof value === "number") els.credits.textContent = value;
  }

  function setConnection(text, state) {
    els.connection.textContent = text;
    els.connection.className = `pill ${state}`;
  }

  function handle(message) {
    switch (message.type) {
      case "hello":
        log("📡 Server info:", { pollingDisabled: message.polling_disabled, webhookEnabled: message.webhook_enabled });
        if (message.seq < lastSeq) reload(); // the server's log is behind ours: start over
        break;
      case "generation_status_changed":
      case "model_status_changed": {
        if (message.seq <= lastSeq) return;
        lastSeq = message.seq;
        log(`📥 event received: ${message.type}`, { seq: message.seq, id: message.job.id, status: message.job.status });
        const before = jobs.get(message.job.id);
        setCredits(message.credits);
        render(message.job);
        if (TERMINAL.has(message.job.status) && !(before && TERMINAL.has(before.status))) finished(message);
        break;
      }
      case "job_progress":
        progress(message.job);
        break;
    }
  }

  function retryLater(reconnect) {
    if (stopped) return;
    const wait = Math.min(backoff, 10000) * (0.75 + Math.random() / 2);
    backoff = Math.min(backoff * 2, 10000);
    setTimeout(async () => {
      // A refused token ends the reconnecting, with a message, instead of retrying forever.
      try { await api("/api/jobs?limit=1"); } catch (error) { if (error.status === 401) return tokenProblem(error); }
      reconnect();
    }, wait);
  }

  function connect() {
    if (stopped) return;
    if (transport === "sse") openEventStream(); else openWebSocket();
  }

  function openWebSocket() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws?token=${encodeURIComponent(token)}&since=${lastSeq}`);
    let opened = false;
    ws.onopen = () => {
      opened = wsEverOpened = true;
      backoff = 500;
      setConnection("live", "online");
      log("✅ WebSocket connected - event-driven system active");
    };
    ws.onmessage = (event) => handle(JSON.parse(event.data));
    ws.onclose = (event) => {
      setConnection("offline", "offline");
      if (!opened && !wsEverOpened) {
        // Never connected: a proxy that blocks upgrades, or a refused token. SSE tells.
        log("⚠️ WebSocket could not connect - switching to Server-Sent Events");
        transport = "sse";
        openEventStream();
        return;
      }
      log(`WebSocket closed (${event.code} ${event.reason || "no reason"}) - reconnecting`);
      retryLater(connect);
    };
  }

  function openEventStream() {
    const source = new EventSource(`/events?token=${encodeURIComponent(token)}&since=${lastSeq}`);
    source.onopen = () => {
      backoff = 500;
      setConnection("live (SSE)", "online");
      log("✅ SSE connection opened - event-driven system active");
    };
    source.onmessage = (event) => handle(JSON.parse(event.data));
    source.onerror = () => {
      setConnection("offline", "offline");
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an error status such as 401): check, then start again.
        source.close();
        retryLater(connect);
      }
      // Otherwise the browser reconnects by itself, sending Last-Event-ID.
    };
  }

  // ---- first paint --------------------------------------------------------------------
  function applyFeatures(value) {
    features = value || features;
    els.create.hidden = !features.enabled;
    els.notConfigured.hidden = features.enabled;
    els.trainPanel.hidden = !features.training;
    const costs = features.costs || {};
    els.generateButton.textContent = `Generate · ${costs.generation ?? "?"} credits`;
    els.trainButton.textContent = `Train · ${costs.training ?? "?"} credits`;
  }

  function showPage(page) {
    for (const job of page.jobs) render(job);
    nextCursor = page.next;
    els.more.hidden = !nextCursor;
    els.empty.hidden = jobs.size > 0;
  }

  async function reload() {
    els.jobs.replaceChildren();
    jobs.clear();
    lastSeq = 0;
    await firstPaint();
  }

  async function firstPaint() {
    const page = await api("/api/jobs?limit=30");
    lastSeq = page.seq;
    setCredits(page.credits);
    applyFeatures(page.jobs_api);
    showPage(page);
  }

  els.more.addEventListener("click", async () => {
    els.more.disabled = true;
    try {
      const page = await api(`/api/jobs?limit=30&before=${encodeURIComponent(nextCursor)}`);
      showPage({ ...page, jobs: page.jobs.filter((job) => !jobs.has(job.id)) });
    } catch (error) {
      toast("failed", `Could not load more: ${error.message}`);
    } finally {
      els.more.disabled = false;
    }
  });

  // ---- creating jobs ------------------------------------------------------------------
  function formError(form, text) {
    const el = form.querySelector(".form-error");
    el.textContent = text || "";
    el.hidden = !text;
  }

  async function create(form, button, path, body) {
    formError(form, "");
    button.disabled = true;
    try {
      const answer = await api(path, { method: "POST", body: JSON.stringify(body) });
      setCredits(answer.credits);
      render(answer.job);
      return answer.job;
    } catch (error) {
      if (error.status === 401) tokenProblem(error);
      else if (error.body && error.body.job) { // Replicate refused: failed and refunded
        setCredits(error.body.credits);
        render(error.body.job);
        toast("failed", error.message);
      } else formError(form, error.message);
      return null;
    } finally {
      button.disabled = false;
    }
  }

  els.generate.addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = els.prompt.value.trim();
    if (!prompt) return formError(els.generate, "Describe the image you want first.");
    const job = await create(els.generate, els.generateButton, "/api/generations", { prompt });
    if (job) els.prompt.value = "";
  });
  els.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); els.generate.requestSubmit(); }
  });

  els.train.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: $("model-name").value.trim(), input_images: $("input-images").value.trim() };
    const job = await create(els.train, els.trainButton, "/api/models", body);
    if (job) els.train.reset();
  });

  async function upscale(sourceId, button) {
    button.disabled = true;
    try {
      const answer = await api(`/api/generations/${encodeURIComponent(sourceId)}/upscale`, { method: "POST", body: "{}" });
      upscaling.set(sourceId, answer.job.id);
      setCredits(answer.credits);
      render(answer.job);
    } catch (error) {
      if (error.status === 401) return tokenProblem(error);
      if (error.body && error.body.job) { setCredits(error.body.credits); render(error.body.job); }
      toast("failed", `Upscale not started: ${error.message}`);
    } finally {
      const source = jobs.get(sourceId);
      if (source) renderActions(card(source), source);
    }
  }

  setInterval(() => {
    for (const el of els.jobs.querySelectorAll("time")) if (el.dateTime) el.textContent = ago(el.dateTime);
  }, 30000);

  async function start() {
    if (!token) {
      stopped = true;
      showNotice(`<strong>This gallery needs your access token</strong> in its address:
        <code>${escapeHtml(location.origin)}/?token=&lt;token&gt;</code>. For development,
        <code>notifier token --user &lt;id&gt;</code> prints one, and <code>deploy/run</code> prints a ready link.`);
      return;
    }
    try {
      await firstPaint();
    } catch (error) {
      if (error.status === 401) return tokenProblem(error);
      showNotice(`Your jobs could not be loaded (${escapeHtml(error.message)}); trying again…`);
      setTimeout(() => { els.notice.hidden = true; start(); }, 3000);
      return;
    }
    connect();
  }

  start();
})();
