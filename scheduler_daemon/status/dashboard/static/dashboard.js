// rmcs dashboard: live updates over the dashboard's event stream, a log tail that follows, and
// the stop button through the HTTP API. Our own code, no library. Without it the pages still read
// fine; they are just not live.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var state = document.getElementById("livestate");
  var body = document.body;
  var jobId = body.dataset.job || null;
  var page = body.dataset.page;
  var pending = null, busy = false, again = false, lastSwap = 0;
  var MIN_GAP_MS = 250;  // at most four refreshes a second, however many events arrive

  function say(text) { if (state) state.textContent = text; }

  function jobFinal() {
    var marker = document.getElementById("job-state");
    return marker ? marker.dataset.final === "true" : body.dataset.final === "true";
  }

  function refresh() {
    if (pending) return;
    var wait = Math.max(0, MIN_GAP_MS - (Date.now() - lastSwap));
    pending = setTimeout(run, wait);
  }

  function run() {
    pending = null;
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { headers: { "X-Rmcs-Live": "1" }, cache: "no-store" })
      .then(function (r) { return r.ok || r.status === 400 ? r.text() : null; })
      .then(function (html) { if (html !== null) swap(html); })
      .catch(function () { say("Live: could not refresh; retrying"); })
      .then(function () { busy = false; lastSwap = Date.now(); if (again) { again = false; refresh(); } });
  }

  function swap(html) {
    var active = document.activeElement;
    var keep = active && live.contains(active) && active.id ? active.id : null;
    live.innerHTML = html;
    if (keep) { var el = document.getElementById(keep); if (el) el.focus(); }
    if (jobId) {
      var stop = document.getElementById("stop");
      if (stop && jobFinal()) stop.hidden = true;
      followLogs();
    }
    if (state && state.textContent !== "Live") say("Live");  // announced on change only, not each refresh
  }

  function relevant(ev) {
    if (page === "job") return ev.submission_id === jobId;
    if (page === "clusters") return String(ev.event || "").indexOf("cluster.") === 0;
    return true;
  }

  if (live && window.EventSource) {
    var source = new EventSource("/live");
    source.onopen = function () { say("Live"); refresh(); };
    source.onerror = function () { say("Live: reconnecting"); };
    source.onmessage = function (msg) {
      var ev;
      try { ev = JSON.parse(msg.data); } catch (e) { return; }
      if (relevant(ev)) refresh();
    };
    // Resources and probe ages come from the scheduler's reports, not from events.
    if (page === "overview" || page === "clusters") setInterval(refresh, 2000);
  }

  // ---- the job page: log tail and stop button ----------------------------------------------
  var logTimer = null;
  function followLogs() {
    var pre = document.getElementById("log");
    if (!pre || !jobId || logTimer) return;
    logTimer = setTimeout(function () {
      logTimer = null;
      fetch("/api/v1/jobs/" + encodeURIComponent(jobId) + "/logs", { cache: "no-store" })
        .then(function (r) { return r.json().then(function (d) { return [r.ok, d]; }); })
        .then(function (res) {
          var note = document.getElementById("log-note");
          if (res[0]) {
            var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
            var lines = String(res[1].logs || "").split("\n");
            var text = lines.slice(-200).join("\n");
            if (pre.textContent !== text) {
              pre.textContent = text;
              if (atEnd) pre.scrollTop = pre.scrollHeight;
            }
            if (note) note.textContent = text ? "Following the job's output on " + res[1].cluster + "." : "No output yet.";
          } else if (note) {
            note.textContent = res[1].error || "No logs.";
          }
        })
        .catch(function () {})
        .then(function () { if (!jobFinal()) followLogs(); });
    }, 1000);
  }
  if (jobId) followLogs();

  var form = document.getElementById("stop-form");
  if (form && window.fetch) {
    var token = document.getElementById("stop-token");
    if (token && window.sessionStorage) token.value = sessionStorage.getItem("rmcs-token") || "";
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var out = document.getElementById("stop-result");
      var reason = document.getElementById("stop-reason").value;
      var headers = { "Content-Type": "application/json" };
      if (token && token.value) {
        headers.Authorization = "Bearer " + token.value;
        if (window.sessionStorage) sessionStorage.setItem("rmcs-token", token.value);
      }
      out.className = "";
      out.textContent = "Asking the scheduler…";
      fetch("/api/v1/jobs/" + encodeURIComponent(form.dataset.sid) + "/stop", {
        method: "POST", headers: headers, body: JSON.stringify(reason ? { reason: reason } : {})
      })
        .then(function (r) { return r.json().then(function (d) { return [r.status, d]; }); })
        .then(function (res) {
          var ok = res[0] === 202;
          out.className = ok ? "ok" : "error";
          out.textContent = (ok ? "Stop accepted: " : "Refused (" + res[0] + "): ") +
            (res[1].message || res[1].error || res[1].outcome || "");
          refresh();
        })
        .catch(function (err) { out.className = "error"; out.textContent = "Could not ask: " + err; });
    });
  }
})();
