// The node list: a WebSocket sends the whole list at every change; filtering is local. Each
// online node links a terminal per login of the session (/web/terminal?node=N&login=L).
import {postJSON, say} from "./common.js";

const body = document.querySelector("#nodes tbody");
const status = document.getElementById("status");
const search = document.getElementById("search");
const selector = document.getElementById("selector");
let nodes = [];
let logins = [];

function parseSelector(text) {
  const pairs = [];
  for (const item of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const at = item.indexOf("=");
    if (at < 1) return null;
    pairs.push([item.slice(0, at), item.slice(at + 1)]);
  }
  return pairs;
}

function matches(node, words, pairs) {
  const labels = node.labels ?? {};
  if (!pairs.every(([k, v]) => labels[k] === v)) return false;
  const text = [node.name, node.addr, ...Object.entries(labels).map(([k, v]) => `${k}=${v}`)]
    .join(" ").toLowerCase();
  return words.every((word) => text.includes(word));
}

function cell(row, text) {
  const td = row.insertCell();
  td.textContent = text;
  return td;
}

function render() {
  const pairs = parseSelector(selector.value);
  selector.setAttribute("aria-invalid", pairs === null ? "true" : "false");
  const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
  const shown = nodes.filter((n) => matches(n, words, pairs ?? []));
  const rows = shown.map((node) => {
    const row = document.createElement("tr");
    row.dataset.name = node.name;
    row.className = node.offline ? "offline" : "";
    cell(row, node.name);
    cell(row, node.addr || "");
    const labels = cell(row, "");
    for (const [k, v] of Object.entries(node.labels ?? {}).sort()) {
      labels.append(Object.assign(document.createElement("span"), {className: "label", textContent: `${k}=${v}`}));
    }
    cell(row, node.offline ? "offline" : (node.kind === "openssh" ? "agentless" : "online"));
    const open = cell(row, "");
    open.className = "logins";
    for (const login of node.offline ? [] : logins) {
      const link = document.createElement("a");
      link.href = `/web/terminal?${new URLSearchParams({node: node.name, login})}`;
      link.textContent = login;
      link.setAttribute("aria-label", `terminal on ${node.name} as ${login}`);
      open.append(link);
    }
    return row;
  });
  body.replaceChildren(...rows);
  say(status, `${shown.length} of ${nodes.length} nodes`);
}

let leaving = false;  // logging out: the server's close of the socket is expected, not a reason to navigate

function connect() {
  const socket = new WebSocket(`wss://${location.host}/web/ws/nodes`);
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "nodes") {
      nodes = message.nodes;
      render();
    }
  });
  socket.addEventListener("close", (event) => {
    if (leaving) return;  // one navigation only: two would abort each other
    if (event.code === 4401) return location.assign("/web/login");
    say(status, "Connection lost; reconnecting…", "error");
    setTimeout(connect, 2000);
  });
}

async function start() {
  const response = await fetch("/web/api/me", {credentials: "same-origin"});
  if (!response.ok) return location.assign("/web/login");
  const me = await response.json();
  document.getElementById("who").textContent = `${me.user} (${me.logins.join(", ")})`;
  logins = me.logins;
  connect();
}

search.addEventListener("input", render);
selector.addEventListener("input", render);
document.getElementById("logout").addEventListener("click", async () => {
  leaving = true;
  try { await postJSON("/web/api/logout"); } finally { location.assign("/web/login"); }
});
start();
