// A terminal on a node: xterm.js (vendor/xterm.js, a classic script: window.Terminal) and its fit
// addon, relayed over /web/ws/terminal. Binary messages are terminal bytes both ways; text
// messages are JSON control ({"type": "resize"} from here; "exit" or "error" from the server).
import {postJSON, say} from "./common.js";

const main = document.querySelector("main");
const status = document.getElementById("status");
const container = document.getElementById("terminal");

// xterm.js's DOM renderer injects <style> elements (its theme and cell sizes); the page's CSP
// admits only those carrying this page's nonce, so each one made here gets it (no 'unsafe-inline').
const nonce = main.dataset.styleNonce;
const createElement = Document.prototype.createElement;
Document.prototype.createElement = function (name, options) {
  const element = createElement.call(this, name, options);
  if (String(name).toLowerCase() === "style") element.nonce = nonce;
  return element;
};

const params = new URLSearchParams(location.search);
const node = params.get("node") ?? "";
const login = params.get("login") ?? "";
document.getElementById("where").textContent = `${login}@${node}`;
document.title = `${login}@${node} — Jumpgate`;

const term = new Terminal({cursorBlink: true, scrollback: 5000, fontFamily: "ui-monospace, monospace"});
const fit = new FitAddon.FitAddon();
term.loadAddon(fit);
term.open(container);
fit.fit();
window.jumpgateTerminal = term;  // the tests read its buffer

const encoder = new TextEncoder();
const query = new URLSearchParams({node, login, cols: term.cols, rows: term.rows});
const socket = new WebSocket(`wss://${location.host}/web/ws/terminal?${query}`);
socket.binaryType = "arraybuffer";

socket.addEventListener("open", () => {
  say(status, `Connected to ${node} as ${login}`);
  term.focus();
});
socket.addEventListener("message", (event) => {
  if (typeof event.data !== "string") return term.write(new Uint8Array(event.data));
  const message = JSON.parse(event.data);
  if (message.type === "exit") say(status, `The session ended (exit status ${message.status}).`);
  else if (message.type === "error") say(status, message.message, "error");
});
socket.addEventListener("close", (event) => {
  main.dataset.closed = String(event.code);
  if (event.code === 4401) return location.assign("/web/login");
  if (event.code !== 1000 && !status.classList.contains("error")) say(status, "The connection was lost.", "error");
  term.options.disableStdin = true;
});

const send = (data) => { if (socket.readyState === WebSocket.OPEN) socket.send(data); };
term.onData((data) => send(encoder.encode(data)));
term.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
term.onResize(({cols, rows}) => send(JSON.stringify({type: "resize", cols, rows})));
new ResizeObserver(() => fit.fit()).observe(container);

document.getElementById("logout").addEventListener("click", async () => {
  try { await postJSON("/web/api/logout"); } finally { location.assign("/web/login"); }
});
