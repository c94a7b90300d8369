// The live gallery: one WebSocket, no polling. Every message is a job's new state (or its
// progress); after a disconnect we reconnect with `since` so nothing is missed or repeated.
(() => {
  "use strict";
  const token = new URLSearchParams(location.search).get("token") || "";
  const jobs = document.getElementById("jobs");
  const empty = document.getElementById("empty");
  const credits = document.getElementById("credits");
  const connection = document.getElementById("connection");
  const KIND = { generation: "Generation", upscale: "Upscale", training: "Training" };
  let lastSeq = 0;
  let backoff = 500;

  function card(job) {
    let el = document.querySelector(`.card[data-id="${CSS.escape(job.id)}"]`);
    if (el) return el;
    el = document.createElement("article");
    el.className = "card";
    el.dataset.id = job.id;
    el.dataset.jobId = job.job_id;
    el.innerHTML = `<div class="head"><span class="kind"></span><span class="status"></span></div>
      <div class="progress"><div></div></div><div class="images"></div><div class="body"></div>`;
    el.querySelector(".kind").textContent = KIND[job.kind] || job.kind;
    jobs.prepend(el);
    empty.hidden = true;
    return el;
  }

  function render(job) {
    const el = card(job);
    el.dataset.status = job.status;
    const status = el.querySelector(".status");
    status.textContent = job.status;
    status.className = `status ${job.status}`;
    const images = el.querySelector(".images");
    const urls = job.image_urls || [];
    if (images.childElementCount !== urls.length) {
      images.replaceChildren(...urls.map((url, i) => {
        const img = document.createElement("img");
        img.src = url;
        img.alt = `output ${i + 1}`;
        img.loading = "lazy";
        return img;
      }));
    }
    const body = el.querySelector(".body");
    body.replaceChildren();
    if (job.model_version) {
      const v = document.createElement("div");
      v.className = "version";
      v.textContent = job.model_version;
      body.append(v);
    }
    if (job.error) {
      const e = document.createElement("div");
      e.className = "error";
      e.textContent = job.error;
      body.append(e);
    }
    if (!body.childElementCount) body.textContent = `job ${job.job_id}`;
  }

  function progress(job) {
    const el = card(job);
    if (!el.dataset.status) {
      el.dataset.status = "PROCESSING";
      const status = el.querySelector(".status");
      status.textContent = "PROCESSING";
      status.className = "status PROCESSING";
    }
    el.querySelector(".progress > div").style.width = `${Math.round(job.progress * 100)}%`;
  }

  function handle(message) {
    switch (message.type) {
      case "hello":
        if (message.seq < lastSeq) { // the server's log is behind ours: start over
          lastSeq = 0;
          jobs.replaceChildren();
          empty.hidden = false;
        }
        break;
      case "generation_status_changed":
      case "model_status_changed":
        if (message.seq <= lastSeq) return;
        lastSeq = message.seq;
        credits.textContent = message.credits;
        render(message.job);
        break;
      case "job_progress":
        progress(message.job);
        break;
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws?token=${encodeURIComponent(token)}&since=${lastSeq}`);
    ws.onopen = () => {
      backoff = 500;
      connection.textContent = "live";
      connection.className = "pill online";
      console.log("WebSocket connected - event-driven system active");
    };
    ws.onmessage = (event) => handle(JSON.parse(event.data));
    ws.onclose = (event) => {
      connection.textContent = "offline";
      connection.className = "pill offline";
      const wait = Math.min(backoff, 10000) * (0.75 + Math.random() / 2);
      console.log(`WebSocket closed (${event.code} ${event.reason || "no reason"}) - reconnecting in ${Math.round(wait)} ms`);
      backoff = Math.min(backoff * 2, 10000);
      setTimeout(connect, wait);
    };
  }

  connect();
})();
