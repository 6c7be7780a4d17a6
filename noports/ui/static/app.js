// noports ui: live tunnel state and the approvals badge from /events (server-sent events). No inline script, no eval;
// the pages work without this file, it only keeps the Status cells current.
(function () {
  "use strict";
  function fmtBytes(n) {
    var u = ["B", "KB", "MB", "GB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + u[i];
  }
  function hms(s) {
    var h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, x = s % 60;
    return h + ":" + (m < 10 ? "0" : "") + m + ":" + (x < 10 ? "0" : "") + x;
  }
  function field(cell, name) { return cell.querySelector('[data-f="' + name + '"]'); }
  function draw(canvas, rate) {
    if (!canvas || !canvas.getContext) return;
    var c = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
    c.clearRect(0, 0, w, h);
    if (!rate || !rate.length) return;
    var max = Math.max.apply(null, rate.concat([1])), step = w / Math.max(rate.length - 1, 1);
    c.beginPath();
    rate.forEach(function (v, i) {
      var x = i * step, y = h - 1 - (v / max) * (h - 2);
      if (i) c.lineTo(x, y); else c.moveTo(x, y);
    });
    c.strokeStyle = "#2a6"; c.lineWidth = 1.5; c.stroke();
  }
  function update(s) {
    var cell = document.querySelector('[data-run="' + s.uuid + '"]');
    if (!cell) return;
    var st = field(cell, "state");
    st.textContent = s.state; st.className = "state " + s.state;
    var a = field(cell, "url");
    if (s.url) { a.href = s.url; a.textContent = s.url; a.hidden = false; } else { a.hidden = true; }
    field(cell, "hint").textContent = s.hint || "";
    field(cell, "address").textContent = s.state === "connected" && !s.url ? s.address : "";
    var rate = s.rate && s.rate.length ? s.rate[s.rate.length - 1] : 0;
    field(cell, "stats").textContent = s.state === "connected"
      ? s.connections + " conn (" + s.active + " open) · " + fmtBytes(s.bytes) + " · " +
        fmtBytes(rate) + "/s · up " + hms(s.uptime) : "";
    field(cell, "retry").textContent = s.next_retry !== null ? "retry in " + s.next_retry + " s" : "";
    field(cell, "progress").textContent = s.progress.length ? s.progress[s.progress.length - 1] : "";
    field(cell, "error").textContent = s.error || "";
    draw(field(cell, "graph"), s.rate);
    var row = cell.closest("tr");
    if (row) {
      var running = ["starting", "connected", "retrying"].indexOf(s.state) >= 0;
      row.querySelectorAll("button[formaction$='/connect'], button[formaction$='/disconnect']")
        .forEach(function (b) {
          b.formAction = "/profiles/" + s.uuid + (running ? "/disconnect" : "/connect");
          b.textContent = running ? "Disconnect" : "Connect";
          b.setAttribute("aria-label", (running ? "disconnect " : "connect ") + s.name);
        });
    }
  }
  function badge(b) {
    var el = document.getElementById("badge");
    if (!el) return;
    if (!b.live) {  // the server's monitor stopped: fall back to polling the fragment
      if (!el.hasAttribute("hx-get") && window.htmx) {
        el.setAttribute("hx-get", "/approvals/badge");
        el.setAttribute("hx-trigger", "load, every 10s");
        el.setAttribute("hx-swap", "innerHTML");
        delete el.dataset.liveBadge;
        window.htmx.process(el);
      }
      return;
    }
    if (!el.dataset.liveBadge) {  // it was polling: a fresh element drops htmx's timer
      var fresh = document.createElement("span");
      fresh.id = "badge";
      fresh.dataset.liveBadge = "1";
      el.replaceWith(fresh);
      el = fresh;
    }
    el.textContent = "";
    if (b.pending > 0) {
      var s = document.createElement("span");
      s.className = "badge";
      s.setAttribute("aria-label", b.pending + " pending");
      s.textContent = String(b.pending);
      el.appendChild(s);
    }
    el.dataset.pending = String(b.pending);
  }
  function start() {
    var live = document.querySelector("[data-run]") || document.getElementById("badge");
    if (!live || !window.EventSource) return;
    var es = new EventSource("/events");
    es.addEventListener("tunnel", function (ev) {
      try { update(JSON.parse(ev.data)); } catch (e) { /* a bad frame is skipped */ }
    });
    es.addEventListener("badge", function (ev) {
      try { badge(JSON.parse(ev.data)); } catch (e) { /* a bad frame is skipped */ }
    });
    document.body.dataset.live = "1";
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
  document.addEventListener("htmx:afterSwap", function () {
    if (!document.body.dataset.live) start();
  });
})();
