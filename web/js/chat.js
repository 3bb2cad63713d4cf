// The chat panel: messages to the whole room or to named participants, on the SFU's ordered
// channel (docs/protocol.md, "Annotations and chat"). Each message a recipient receives is
// acknowledged `delivered` at once, and `read` once the page and the panel are visible and the
// message is on screen; on my own messages each recipient's receipt is shown.

import { t } from "./i18n.js";
import { dataChannels } from "./protocol.js";
import { changed, state } from "./state.js";

const READ_VISIBLE_RATIO = 0.6; // this much of a message on screen counts as read
// A message the SFU has not stamped by then is shown as not sent, with a button to send it again
// (its channel may never open: media that cannot connect carries no chat either).
export const SEND_TIMEOUT_MS = 10000;
const RANK = { sent: 0, delivered: 1, read: 2 };

const panel = document.getElementById("chat-panel");
const list = document.getElementById("chat-list");
const empty = document.getElementById("chat-empty");
const form = document.getElementById("chat-form");
const textArea = document.getElementById("chat-text");
const recipients = document.getElementById("chat-recipients");
const chatStatus = document.getElementById("chat-status");

const sentReceipts = new Map(); // chat seq → the receipt state I sent for it
const onScreen = new Set(); // seqs of messages to me that are on screen now
const items = new Map(); // message key → its <li>
let observer = null;

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function nameOf(participantId) {
  const person = state.participants.get(participantId);
  return person ? person.name || person.sub : t("annotate.someone");
}

/** Whether a message is addressed to me (and is not mine). */
function toMe(message) {
  if (message.author === state.participantId) return false;
  return message.to.length === 0 || message.to.includes(state.participantId);
}

/** Receipts in the shape this module keeps: {participant id: "delivered" | "read"}. */
function receiptsOf(value) {
  if (!value) return {};
  if (!Array.isArray(value)) return { ...value };
  const receipts = {};
  for (const r of value) receipts[r.participant_id ?? r.author ?? r.by] = r.state;
  return receipts;
}

function stamped(message) {
  return {
    seq: message.seq,
    time: message.time ?? "",
    author: message.author,
    client_id: message.client_id ?? "",
    text: message.text,
    to: message.to ?? [],
    receipts: receiptsOf(message.receipts),
  };
}

function upgrade(receipts, participantId, next) {
  if ((RANK[next] ?? -1) > (RANK[receipts[participantId]] ?? -1)) receipts[participantId] = next;
}

/** Send my receipt for a message, once per state (read implies delivered). */
function acknowledge(seq, receipt) {
  if ((RANK[sentReceipts.get(seq)] ?? -1) >= RANK[receipt]) return;
  sentReceipts.set(seq, receipt);
  dataChannels.send("receipt", { seq, state: receipt });
  const message = state.chat.find((m) => m.seq === seq);
  if (message) upgrade(message.receipts, state.participantId, receipt);
}

function deliver(message) {
  if (!toMe(message)) return;
  const mine = message.receipts[state.participantId];
  if (mine && RANK[mine] > (RANK[sentReceipts.get(message.seq)] ?? -1)) {
    sentReceipts.set(message.seq, mine); // sent on an earlier connection
  }
  acknowledge(message.seq, "delivered");
}

/** The chat as it stood at the snapshot's sequence number. */
function applySnapshot(snapshot) {
  const pending = state.chat.filter((m) => m.pending && !m.stale);
  state.chat = (snapshot.chat ?? []).map(stamped).concat(pending);
  for (const message of state.chat) if (!message.pending) deliver(message);
  changed();
}

/** A chat message or a receipt, in sequence order. */
function applyEvent(event) {
  if (event.kind === "chat") {
    if (state.chat.some((m) => m.seq === event.seq)) return;
    const message = stamped(event);
    const at = state.chat.findIndex(
      (m) => m.pending && m.client_id === event.client_id && event.author === state.participantId,
    );
    if (at >= 0) state.chat.splice(at, 1);
    state.chat.push(message);
    state.chat.sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity));
    deliver(message);
    changed();
  } else if (event.kind === "receipt") {
    const message = state.chat.find((m) => m.seq === event.ref);
    if (!message) return;
    upgrade(message.receipts, event.author, event.state);
    changed();
  }
}

function refused(error) {
  const message = state.chat.find((m) => m.pending && m.client_id === error.client_id);
  if (!message) return;
  message.failed = "refused";
  const key = `chat.error_${error.code}`;
  chatStatus.textContent = t(key) === key ? t("chat.failed") : t(key);
  changed();
}

/** Hand a pending message to the ordered channel; not stamped in time, it is marked unsent. */
function transmit(message) {
  const fields = { client_id: message.client_id, text: message.text, to: message.to };
  dataChannels.send("chat", fields);
  setTimeout(() => {
    if (!message.pending || message.failed || !state.chat.includes(message)) return;
    // Still waiting for its channel: take it back, so it does not arrive after "not sent".
    dataChannels.withdraw("chat", fields);
    message.failed = "unsent";
    changed();
  }, SEND_TIMEOUT_MS);
}

/** Send an unsent message again (its retry button). */
function retry(clientId) {
  const message = state.chat.find((m) => m.failed === "unsent" && m.client_id === clientId);
  if (!message) return;
  message.failed = false;
  message.stale = false;
  chatStatus.textContent = "";
  transmit(message);
  changed();
}

/** Send the text in the box to the ticked people, or to everyone when nobody is ticked. */
function sendMessage() {
  const text = textArea.value.trim();
  if (!text) return;
  const to = [...recipients.querySelectorAll("input:checked")].map((box) => box.value);
  const message = {
    seq: null,
    time: new Date().toISOString(),
    author: state.participantId,
    client_id: newId(),
    text,
    to,
    receipts: {},
    pending: true,
  };
  state.chat.push(message);
  transmit(message);
  textArea.value = "";
  chatStatus.textContent = "";
  changed();
}

/** Read receipts for messages to me on screen, while the page and the panel are visible. */
function readWhatIsShown() {
  if (document.visibilityState !== "visible" || panel.hidden || !panel.checkVisibility()) return;
  for (const seq of onScreen) acknowledge(seq, "read");
}

/** Wire the form; listen to the SFU. */
export function initChat() {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
  });
  // Enter sends; Shift+Enter starts a new line.
  textArea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  });
  observer = new IntersectionObserver(
    (entries) => {
      for (const entry of entries) {
        const seq = Number(entry.target.dataset.seq);
        if (entry.intersectionRatio >= READ_VISIBLE_RATIO) onScreen.add(seq);
        else onScreen.delete(seq);
      }
      readWhatIsShown();
      changed();
    },
    { threshold: [0, READ_VISIBLE_RATIO, 1] },
  );
  document.addEventListener("visibilitychange", () => {
    readWhatIsShown();
    changed();
  });
  dataChannels.on("snapshot", applySnapshot);
  dataChannels.on("event", applyEvent);
  dataChannels.on("error", refused);
  dataChannels.on("open", () => {
    // What waited is sent now and comes back stamped; an unsent message stays until retried.
    for (const message of state.chat) if (message.pending && !message.failed) message.stale = true;
  });
}

function receiptLine(message) {
  const others = [...state.participants.keys()].filter((p) => p !== state.participantId);
  const people = message.to.length
    ? message.to
    : [...new Set([...others, ...Object.keys(message.receipts)])];
  if (message.failed === "unsent") return t("chat.unsent");
  if (message.failed) return t("chat.failed");
  if (message.pending) return t("chat.sending");
  if (!people.length) return t("chat.receipt_nobody");
  return people
    .map((pid) => t(`chat.receipt_${message.receipts[pid] ?? "sent"}`, { name: nameOf(pid) }))
    .join(" · ");
}

function renderMessage(message) {
  const key = message.seq === null ? `c:${message.client_id}` : `s:${message.seq}`;
  let li = items.get(key);
  if (!li) {
    li = document.createElement("li");
    li.className = "chat-message";
    for (const part of ["chat-from", "chat-text", "chat-receipts"]) {
      const el = document.createElement(part === "chat-text" ? "p" : "span");
      el.className = part;
      li.append(el);
    }
    const again = document.createElement("button");
    again.type = "button";
    again.className = "chat-retry";
    again.addEventListener("click", () => retry(li.dataset.clientId));
    li.append(again);
    items.set(key, li);
  }
  const mine = message.author === state.participantId;
  li.dataset.seq = message.seq ?? "";
  li.dataset.author = message.author;
  li.dataset.clientId = message.client_id;
  li.classList.toggle("mine", mine);
  li.classList.toggle("private", message.to.length > 0);
  const time = message.time
    ? new Date(message.time).toLocaleTimeString(state.lang, { hour: "2-digit", minute: "2-digit" })
    : "";
  const from = mine ? t("chat.me") : nameOf(message.author);
  const to = message.to.length
    ? t("chat.to_people", {
        names: message.to
          .map((p) => (p === state.participantId ? t("chat.me") : nameOf(p)))
          .join(", "),
      })
    : t("chat.to_room");
  const [fromEl, textEl, receiptsEl, againButton] = li.children;
  const header = t("chat.header", { from, to, time });
  if (fromEl.textContent !== header) fromEl.textContent = header;
  if (textEl.textContent !== message.text) textEl.textContent = message.text;
  const receipts = mine ? receiptLine(message) : "";
  if (receiptsEl.textContent !== receipts) receiptsEl.textContent = receipts;
  receiptsEl.hidden = !mine;
  receiptsEl.dataset.receipts = JSON.stringify(message.receipts);
  li.classList.toggle("failed", Boolean(message.failed));
  againButton.hidden = message.failed !== "unsent";
  againButton.textContent = t("chat.retry");
  return li;
}

/** The messages, the recipients to pick from, and read receipts for what is on screen. */
export function renderChat(s) {
  const shown = s.chat.map(renderMessage);
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 8;
  const changedRows =
    shown.length !== list.children.length || shown.some((li, i) => list.children[i] !== li);
  if (changedRows) {
    const keep = new Set(shown);
    for (const [key, li] of items) {
      if (!keep.has(li)) {
        observer.unobserve(li);
        items.delete(key);
      }
    }
    list.replaceChildren(...shown);
    if (atBottom) list.scrollTop = list.scrollHeight;
  }
  for (const li of shown) {
    const seq = li.dataset.seq;
    const message = s.chat.find((m) => String(m.seq) === seq);
    if (seq && message && toMe(message) && sentReceipts.get(message.seq) !== "read")
      observer.observe(li);
    else observer.unobserve(li);
  }
  empty.hidden = shown.length > 0;

  // One tick box per other participant; ticks survive people coming and going.
  const others = [...s.participants.values()].filter((p) => p.participant_id !== s.participantId);
  const ticked = new Set([...recipients.querySelectorAll("input:checked")].map((b) => b.value));
  const wanted = others.map((p) => `${p.participant_id}|${p.name || p.sub}`).join("\n");
  if (recipients.dataset.people !== wanted) {
    recipients.dataset.people = wanted;
    recipients.replaceChildren(
      ...others.map((person) => {
        const label = document.createElement("label");
        label.className = "chat-recipient";
        const box = document.createElement("input");
        box.type = "checkbox";
        box.value = person.participant_id;
        box.checked = ticked.has(person.participant_id);
        const name = document.createElement("span");
        name.textContent = person.name || person.sub;
        label.append(box, name);
        return label;
      }),
    );
  }
  document.getElementById("chat-to-field").hidden = others.length === 0;
  readWhatIsShown();
}
