// testlab pages: live updates over server-sent events, and writes made without a page reload.
// No framework, no build step: each page marks what is live with data- attributes.
"use strict";

const csrf = () => document.body.dataset.csrf || "";

function badge(status) {
  const span = document.createElement("span");
  span.className = "badge st-" + status;
  span.textContent = status;
  return span;
}

// ---------------------------------------------------------------------------------- live logs

const logStreams = new Map(); // task id -> {pre, source}

function followLog(pre) {
  const task = pre.dataset.logTask;
  const existing = logStreams.get(task);
  if (existing) { // the page's body was refreshed: keep the stream and what it showed
    pre.replaceWith(existing.pre);
    return;
  }
  const source = new EventSource(`/api/v1/tasks/${task}/log/stream`);
  const entry = {pre, source};
  logStreams.set(task, entry);
  source.addEventListener("log", (event) => {
    const chunk = JSON.parse(event.data);
    const atBottom = entry.pre.scrollTop + entry.pre.clientHeight >= entry.pre.scrollHeight - 8;
    entry.pre.append(chunk.text);
    if (atBottom) entry.pre.scrollTop = entry.pre.scrollHeight;
    const size = document.querySelector("[data-log-size]");
    if (size) size.textContent = `${chunk.offset + chunk.text.length} bytes`;
  });
  source.addEventListener("reset", () => { entry.pre.textContent = ""; });
  source.addEventListener("end", () => {
    source.close();
    entry.pre.classList.remove("live");
  });
}

// ---------------------------------------------------------------------------------- job page

// A log watched while its task ran stays under the task's row once it has ended.
function keepWatchedLogs(body) {
  for (const [task, entry] of logStreams) {
    if (body.contains(entry.pre)) continue;
    const row = body.querySelector(`tr.task-row[data-task="${CSS.escape(task)}"]`);
    if (!row) continue;
    const holder = document.createElement("tr");
    holder.className = "live-row";
    const cell = document.createElement("td");
    cell.colSpan = row.children.length;
    cell.append(entry.pre);
    holder.append(cell);
    row.after(holder);
  }
}

function watchJob(root) {
  const id = root.dataset.job;
  let refreshing = false;
  let again = false;
  const refresh = async () => {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const response = await fetch(`/jobs/${id}/fragment`, {headers: {"Accept": "text/html"}});
      if (response.ok) {
        const body = document.getElementById("job-body");
        body.innerHTML = await response.text();
        body.querySelectorAll("pre[data-log-task]").forEach(followLog);
        keepWatchedLogs(body);
        wireForms(body);
      }
    } finally {
      refreshing = false;
      if (again) { again = false; refresh(); }
    }
  };
  // The stream's first event is the job as it is when the stream opens, which may already differ from
  // the page as it was rendered (a change in between would otherwise stay unseen): refresh on it too.
  const source = new EventSource(`/api/v1/jobs/${id}/stream`);
  source.addEventListener("job", () => refresh());
}

// ---------------------------------------------------------------------------------- VM board

function updateVM(card, vm) {
  const before = card.dataset.status;
  card.dataset.status = vm.status;
  card.className = card.className.replace(/st-border-\S+/, "st-border-" + vm.status);
  const status = card.querySelector(".vm-status");
  status.replaceChildren(badge(vm.status));
  const what = card.querySelector(".vm-what");
  if (vm.task) {
    const link = document.createElement("a");
    link.href = `/jobs/${vm.task.job}`;
    link.textContent = `task ${vm.task.id} · job ${vm.task.job}`;
    what.replaceChildren(link);
  } else {
    what.textContent = vm.operation || "\u00a0";
  }
  const flag = card.querySelector(".vm-flag");
  flag.hidden = !vm.maintenance_requested;
  const errors = card.querySelector(".vm-errors");
  errors.hidden = !vm.errors;
  errors.textContent = `${vm.errors} error${vm.errors === 1 ? "" : "s"}`;
  const blocked = card.querySelector(".vm-blocked");
  blocked.hidden = !vm.blocked;
  blocked.textContent = vm.blocked || "";
  showActions(card);
  if (before !== vm.status) {
    card.classList.add("flash");
    setTimeout(() => card.classList.remove("flash"), 900);
  }
}

function showActions(card) {
  const status = card.dataset.status || card.querySelector(".badge").textContent;
  card.dataset.status = status;
  const busy = card.querySelector(".vm-what").textContent.trim() !== "";
  card.querySelectorAll(".vm-actions button").forEach((button) => {
    const when = button.dataset.when;
    button.hidden = !(
      (when === "in-service" && status !== "maintenance" && status !== "offline") ||
      (when === "maintenance" && status === "maintenance") ||
      (when === "out" && (status === "offline" || status === "maintenance")) ||
      (when === "quiet" && !busy && !["offline", "maintenance", "running"].includes(status))
    );
  });
}

function watchBoard(board) {
  board.querySelectorAll("article.vm").forEach(showActions);
  const hosts = (board.dataset.hosts || "").split(",").filter(Boolean);
  const query = hosts.map((h) => "host=" + encodeURIComponent(h)).join("&");
  const source = new EventSource("/api/v1/board/stream" + (query ? "?" + query : ""));
  const state = document.getElementById("live-state");
  source.onopen = () => state && state.classList.add("on");
  source.onerror = () => state && state.classList.remove("on");
  source.addEventListener("vms", (event) => {
    for (const vm of JSON.parse(event.data)) {
      const card = board.querySelector(`article.vm[data-vm="${CSS.escape(vm.name)}"]`);
      if (card) updateVM(card, vm);
    }
  });
}

// ---------------------------------------------------------------------------------- forms

function wireForms(root) {
  root.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  // Board actions go through the API: the live stream shows their effect, no reload needed.
  root.querySelectorAll("form.vm-actions").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = event.submitter;
      const name = form.closest("[data-vm]").dataset.vm;
      const response = await fetch(`/api/v1/vms/${encodeURIComponent(name)}/change`, {
        method: "POST",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
        body: JSON.stringify({change: button.value}),
      });
      if (!response.ok) {
        const problem = await response.json().catch(() => ({detail: response.statusText}));
        window.alert(problem.detail);
      }
    });
  });
}

// The submit form: a chosen folder keeps its sub-folders (each file named by its relative path).
function wireSubmit(form) {
  const folder = document.getElementById("job-folder");
  form.addEventListener("submit", async (event) => {
    if (!folder.files.length) return; // plain form post
    event.preventDefault();
    const data = new FormData();
    data.append("csrf_token", csrf());
    data.append("priority", document.getElementById("priority").value);
    const chosen = document.getElementById("job-file").files[0];
    data.append("job", chosen);
    for (const file of folder.files) {
      const relative = file.webkitRelativePath.split("/").slice(1).join("/");
      if (relative !== chosen.name) data.append("file", file, relative);
    }
    const response = await fetch("/submit", {method: "POST", body: data, headers: {"X-CSRF-Token": csrf()}});
    if (response.redirected) { window.location = response.url; return; }
    document.open(); document.write(await response.text()); document.close();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("pre[data-log-task]").forEach(followLog);
  const job = document.getElementById("job");
  if (job) watchJob(job);
  const board = document.getElementById("board");
  if (board) watchBoard(board);
  const submit = document.getElementById("submit-form");
  if (submit) wireSubmit(submit);
  wireForms(document);
});
