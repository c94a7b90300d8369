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
    more: $("more"), toasts: $("toasts"), viewer: $("viewer"), model: $("model"),
  };
  const KIND = { generation: "Generation", upscale: "Upscale", training: "Training" };
  const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
  const RANK = { PENDING: 0, PROCESSING: 1, COMPLETED: 2, FAILED: 2, CANCELLED: 2 };
  const UPSCALE_MARKER = "[UPSCALED]";
  const STATUS_WORDS = { PENDING: "Queued", PROCESSING: "Running", COMPLETED: "Done", FAILED: "Failed", CANCELLED: "Cancelled" };

  let lastSeq = 0;
  let nextCursor = null;
  let features = { enabled: false, training: false, costs: {} };
  let transport = params.get("transport") === "sse" ? "sse" : "websocket";
  let wsEverOpened = false;
  let backoff = 500;
  let stopped = false;
  let liveOnce = false; // whether the page has been live at least once (for the console line)
  let isConnected = false; // whether a WebSocket or event stream is open now
  let finishedUnseen = 0; // jobs that ended while the tab was in the background
  let models = []; // the user's completed models, for the picker
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
    const headers = { "Authorization": `Bearer ${token}` };
    // A form (training photos) says its own multipart content type; the rest is JSON.
    if (!(options.body instanceof FormData)) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { ...options, headers });
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
    showNotice(`<strong>Your sign-in link has expired or is not valid</strong> (${escapeHtml(error.message)}).
      Open the gallery again from the app to get a fresh link.`);
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
      <div class="progress" role="progressbar" aria-label="Progress" aria-valuemin="0" aria-valuemax="100"><div></div></div>
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
    status.textContent = STATUS_WORDS[job.status] || job.status;
    status.className = `status ${job.status}`;
    el.querySelector(".title").textContent = title(job);
    const time = el.querySelector("time");
    time.dateTime = job.created_at || "";
    time.title = job.created_at ? new Date(job.created_at).toLocaleString() : "";
    time.textContent = ago(job.created_at);
    // A failed or cancelled job is refunded exactly once by the server: say so on the card.
    const refunded = job.status === "FAILED" || job.status === "CANCELLED";
    // (A cancelled card says it below, with the cancel.)
    el.querySelector(".cost").textContent = !job.credits_used || job.status === "CANCELLED" ? ""
      : refunded ? ` · ${job.credits_used} credits refunded` : ` · ${job.credits_used} credits`;

    const images = el.querySelector(".images");
    const urls = job.image_urls || [];
    if (images.childElementCount !== urls.length) {
      images.replaceChildren(...urls.map((url, i) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "thumb";
        button.setAttribute("aria-label", `Open image ${i + 1} full size`);
        const img = document.createElement("img");
        img.src = (job.thumb_urls || [])[i] || url;
        img.alt = `${title(job)} (image ${i + 1})`;
        img.loading = "lazy";
        button.append(img);
        button.addEventListener("click", () => openViewer(url, img.alt, title(job)));
        return button;
      }));
    }

    const detail = el.querySelector(".detail");
    detail.className = "detail";
    detail.textContent = "";
    if (job.error) {
      detail.classList.add("error");
      detail.textContent = job.error;
    } else if (job.status === "CANCELLED") {
      detail.textContent = job.credits_used ? `Cancelled — ${job.credits_used} credits refunded` : "Cancelled";
    } else if (job.kind === "training" && job.status === "COMPLETED") {
      detail.textContent = "Ready: pick it in the form above to generate with it.";
    } else if (job.model) {
      detail.textContent = `With your model “${job.model.name}”`;
    } else if (job.source_id && jobs.has(job.source_id)) {
      // The upscale links to the card of the image it enlarges.
      const link = document.createElement("a");
      link.href = "#";
      link.className = "source";
      link.textContent = `“${title(jobs.get(job.source_id))}”`;
      link.addEventListener("click", (event) => {
        event.preventDefault();
        const source = els.jobs.querySelector(`.card[data-id="${CSS.escape(job.source_id)}"]`);
        if (source) { source.scrollIntoView({ behavior: "smooth", block: "center" }); source.querySelector("button, a")?.focus(); }
      });
      detail.append("Upscale of ", link);
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

  function actionButton(className, text, onClick) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = className;
    button.textContent = text;
    button.addEventListener("click", () => onClick(button));
    return button;
  }

  function renderActions(el, job) {
    const actions = el.querySelector(".actions");
    const buttons = [];
    if (!features.enabled) { actions.replaceChildren(); return; }
    if (!TERMINAL.has(job.status)) buttons.push(actionButton("cancel secondary", "Cancel", (b) => cancel(job.id, b)));
    if (job.kind === "generation" && job.status === "COMPLETED" && (job.image_urls || []).length > 0) {
      const running = upscaling.has(job.id) || [...jobs.values()].some((other) =>
        other.source_id === job.id && !TERMINAL.has(other.status));
      const button = actionButton("upscale", running ? "Upscaling…" : `Upscale · ${features.costs.upscale ?? "?"} credits`,
        (b) => upscale(job.id, b));
      button.disabled = running;
      buttons.push(button);
    }
    if (job.kind !== "training" && (job.image_urls || []).length > 0) {
      const url = job.image_urls[0];
      const link = document.createElement("a");
      link.className = "button secondary";
      link.href = `${url}${url.includes("?") ? "&" : "?"}download=1&name=${encodeURIComponent(title(job).slice(0, 60))}`;
      link.textContent = "Download";
      link.setAttribute("download", "");
      buttons.push(link);
    }
    if (job.kind === "generation" && job.status === "FAILED") {
      buttons.push(actionButton("retry", "Try again", (b) => generate(title(job), job.model && job.model.id, b)));
    }
    if (job.kind === "generation") {
      buttons.push(actionButton("reuse secondary", "Use this prompt", () => {
        els.prompt.value = title(job);
        if (job.model) els.model.value = job.model.id;
        els.prompt.focus();
      }));
    }
    actions.replaceChildren(...buttons);
  }

  function progress(job) {
    const el = els.jobs.querySelector(`.card[data-id="${CSS.escape(job.id)}"]`);
    if (!el || TERMINAL.has(el.dataset.status)) return;
    if (el.dataset.status === "PENDING") {
      el.dataset.status = "PROCESSING";
      const status = el.querySelector(".status");
      status.textContent = STATUS_WORDS.PROCESSING;
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
    // At most three at once (a phone's screen is small): the oldest gives way.
    while (els.toasts.childElementCount > 3) els.toasts.firstElementChild.remove();
    // Read at the person's pace: a toast waits while the pointer or focus is on it.
    let held = false;
    const hold = () => { held = true; };
    const release = () => { held = false; };
    el.addEventListener("mouseenter", hold);
    el.addEventListener("mouseleave", release);
    el.addEventListener("focusin", hold);
    el.addEventListener("focusout", release);
    const expire = () => { if (held) setTimeout(expire, 2000); else el.remove(); };
    setTimeout(expire, 10000);
  }

  function finished(message) {
    const job = message.job;
    if (document.hidden) {
      finishedUnseen += 1;
      document.title = `(${finishedUnseen}) Gallery`;
    }
    if (job.kind === "training" && job.status === "COMPLETED") loadModels();
    const name = KIND[job.kind] || "Job";
    const refund = message.refunded ? ` — ${message.refunded} credits refunded` : "";
    if (job.status === "COMPLETED") toast("completed", `✓ ${name} completed: ${title(job)}`);
    if (job.status === "FAILED") toast("failed", `${name} failed: ${job.error || "no reason given"}${refund}`);
    if (job.status === "CANCELLED") toast("cancelled", `${name} cancelled${refund}`);
  }

  function openViewer(url, alt, name) {
    const img = els.viewer.querySelector("img");
    img.src = url;
    img.alt = alt;
    $("viewer-open").href = url;
    $("viewer-download").href = `${url}${url.includes("?") ? "&" : "?"}download=1&name=${encodeURIComponent((name || "").slice(0, 60))}`;
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

  function handle(message, via) {
    switch (message.type) {
      case "hello":
        log("📡 Server info:", { pollingDisabled: message.polling_disabled, webhookEnabled: message.webhook_enabled });
        if (message.seq < lastSeq) reload(); // the server's log is behind ours: start over
        break;
      case "generation_status_changed":
      case "model_status_changed": {
        if (message.seq <= lastSeq) return;
        lastSeq = message.seq;
        log(via === "sse" ? `📥 SSE event received: ${message.type}` : `📥 event received: ${message.type}`,
          { seq: message.seq, id: message.job.id, status: message.job.status });
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

  let retryTimer = null;
  let pendingReconnect = null;

  function retryLater(reconnect) {
    if (stopped) return;
    if (!navigator.onLine) {
      // Nothing to try until the network is back: the `online` event reconnects at once.
      setConnection("offline", "offline");
      pendingReconnect = reconnect;
      return;
    }
    const wait = Math.min(backoff, 10000) * (0.75 + Math.random() / 2);
    backoff = Math.min(backoff * 2, 10000);
    let left = Math.ceil(wait / 1000);
    setConnection(`reconnecting in ${left} s`, "reconnecting");
    clearInterval(retryTimer);
    retryTimer = setInterval(() => {
      left -= 1;
      if (left > 0) setConnection(`reconnecting in ${left} s`, "reconnecting");
    }, 1000);
    pendingReconnect = reconnect;
    setTimeout(() => reconnectNow(reconnect), wait);
  }

  async function reconnectNow(reconnect) {
    if (pendingReconnect !== reconnect) return; // already reconnected (the network came back)
    pendingReconnect = null;
    clearInterval(retryTimer);
    setConnection("connecting", "connecting");
    // A refused token ends the reconnecting, with a message, instead of retrying forever.
    try { await api("/api/jobs?limit=1"); } catch (error) { if (error.status === 401) return tokenProblem(error); }
    reconnect();
  }

  window.addEventListener("online", () => {
    backoff = 500;
    if (pendingReconnect) {
      log("🌐 network back: reconnecting now");
      reconnectNow(pendingReconnect);
    } else if (isConnected) {
      log("🌐 network back: still connected");
      setConnection(transport === "sse" ? "live (SSE)" : "live", "online");
    }
  });
  window.addEventListener("offline", () => setConnection("offline", "offline"));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && finishedUnseen) { finishedUnseen = 0; document.title = "Gallery"; }
  });

  function live(text) {
    isConnected = true;
    backoff = 500;
    setConnection(text, "online");
    if (!liveOnce) log("Connection status: webhook-driven system active");
    liveOnce = true;
  }

  function connect() {
    if (stopped) return;
    setConnection("connecting", "connecting");
    if (transport === "sse") openEventStream(); else openWebSocket();
  }

  function openWebSocket() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws?token=${encodeURIComponent(token)}&since=${lastSeq}`);
    let opened = false;
    ws.onopen = () => {
      opened = wsEverOpened = true;
      log("✅ WebSocket connected - event-driven system active");
      live("live");
    };
    ws.onmessage = (event) => handle(JSON.parse(event.data), "websocket");
    ws.onclose = (event) => {
      isConnected = false;
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
      log("✅ SSE connection opened - event-driven system active");
      live("live (SSE)");
    };
    source.onmessage = (event) => handle(JSON.parse(event.data), "sse");
    source.onerror = () => {
      isConnected = false;
      setConnection(navigator.onLine ? "reconnecting" : "offline", navigator.onLine ? "reconnecting" : "offline");
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
    if (features.enabled) await loadModels();
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
    if (!navigator.onLine) {
      formError(form, "You are offline, so nothing was sent and no credits were taken. Try again once you are back online.");
      return null;
    }
    button.disabled = true;
    try {
      const answer = await api(path, { method: "POST", body: body instanceof FormData ? body : JSON.stringify(body) });
      setCredits(answer.credits);
      render(answer.job);
      return answer.job;
    } catch (error) {
      if (error.status === 401) tokenProblem(error);
      else if (error.body && error.body.job) { // Replicate refused: failed and refunded
        setCredits(error.body.credits);
        render(error.body.job);
        toast("failed", `${error.message}`);
      } else if (error.status === undefined) {
        // The connection broke: the server may or may not have the job. The list says.
        formError(form, "The connection broke before the server answered. If the job was created it appears below by itself, and your balance shows whether credits were taken.");
        reloadSoon();
      } else formError(form, `${error.message} No credits were taken.`);
      return null;
    } finally {
      button.disabled = false;
    }
  }

  function reloadSoon() {
    setTimeout(() => { if (navigator.onLine) reload().catch(() => {}); }, 2000);
  }

  async function generate(prompt, modelId, button) {
    const body = modelId ? { prompt, model: modelId } : { prompt };
    return create(els.generate, button || els.generateButton, "/api/generations", body);
  }

  async function cancel(id, button) {
    button.disabled = true;
    button.textContent = "Cancelling…";
    try {
      await api(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST", body: "{}" });
      log("🛑 cancel asked", { id });
    } catch (error) {
      if (error.status === 401) return tokenProblem(error);
      toast("failed", `Could not cancel: ${error.message}`);
      button.disabled = false;
      button.textContent = "Cancel";
    }
  }

  // ---- the generate form's model picker ----------------------------------------------
  async function loadModels() {
    try {
      const answer = await api("/api/models");
      models = answer.models.filter((model) => model.status === "COMPLETED");
    } catch { return; }
    const chosen = els.model.value;
    els.model.replaceChildren(new Option("Standard model", ""),
      ...models.map((model) => new Option(`Your model: ${model.name}`, model.id)));
    els.model.value = models.some((model) => model.id === chosen) ? chosen : "";
    els.model.parentElement.hidden = models.length === 0;
  }

  els.generate.addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = els.prompt.value.trim();
    if (!prompt) return formError(els.generate, "Describe the image you want first.");
    const job = await generate(prompt, els.model.value || null);
    if (job) els.prompt.value = "";
  });
  els.prompt.addEventListener("keydown", (event) => {
    // Not while an input method is composing a character (Enter picks the character).
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      els.generate.requestSubmit();
    }
  });

  els.train.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("model-name").value.trim();
    const files = [...$("photos").files];
    if (!name) return formError(els.train, "Give your model a name first.");
    if (files.length === 0) return formError(els.train, "Pick your photos first.");
    const form = new FormData();
    form.append("name", name);
    const zip = files.length === 1 && /\.zip$/i.test(files[0].name);
    for (const file of files) form.append(zip ? "archive" : "photos", file, file.name);
    const job = await create(els.train, els.trainButton, "/api/models", form);
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
      showNotice(`<strong>This page needs your sign-in link.</strong> Open the gallery from the app;
        the link it gives you signs you in (it looks like <code>${escapeHtml(location.origin)}/?token=…</code>).`);
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
