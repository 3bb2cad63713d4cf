// Recording with consent (signaling/recording.py): the recording notice and my answer to it, the
// indicator everyone sees while the room is recorded, the mark on the tiles of those who are not
// recorded, and the chair's controls (ask for consent, who answered what, a spoken answer, start,
// next case, stop). The server decides everything; this shows what it said (`consent_requested`,
// `recording_state`, `error`) and sends the requests. It also says what the server's storage
// means for the meeting: a recording that stopped by itself (a full disk), the chair's warning
// that the disk runs low (`storage_low`), and the SFU's notice that annotations and chat are
// delivered but not stored (`storage` on the data channel).

import { replaceRows } from "./chair.js";
import { t } from "./i18n.js";
import { dataChannels } from "./protocol.js";
import { changed, noRecording, state } from "./state.js";

/** The requests this module sends: the server's refusals of them are shown here. */
const REQUESTS = new Set([
  "request_consent",
  "consent",
  "verbal_consent",
  "start_recording",
  "stop_recording",
  "mark_case",
]);

const bar = document.getElementById("recording-bar");
const indicator = document.getElementById("recording-indicator");
const myStatus = document.getElementById("recording-my-status");
const answerButton = document.getElementById("recording-answer");
const announcer = document.getElementById("recording-announce");

const dialog = document.getElementById("consent-dialog");
const dialogHeading = document.getElementById("consent-dialog-heading");
const noticeText = document.getElementById("consent-notice");
const noticeVersion = document.getElementById("consent-version");
const currentAnswer = document.getElementById("consent-current");
const agreeButton = document.getElementById("consent-agree");
const declineButton = document.getElementById("consent-decline");

const panel = document.getElementById("recording-panel");
const requestButton = document.getElementById("request-consent-button");
const consentEmpty = document.getElementById("consent-empty");
const consentList = document.getElementById("consent-list");
const startReason = document.getElementById("start-reason");
const startButton = document.getElementById("start-recording-button");
const stopButton = document.getElementById("stop-recording-button");
const caseForm = document.getElementById("case-form");
const caseLabel = document.getElementById("case-label");
const casesHeading = document.getElementById("cases-heading");
const caseList = document.getElementById("case-list");
const errorText = document.getElementById("recording-error");
const storageText = document.getElementById("storage-notice");

let call = null;
let returnFocus = null; // where the keyboard was before the notice opened

/** Wire the notice's answers and the chair's controls to the call. */
export function initRecording(theCall) {
  call = theCall;
  agreeButton.addEventListener("click", () => answer("granted"));
  declineButton.addEventListener("click", () => answer("declined"));
  answerButton.addEventListener("click", () => {
    state.consentNotice = { version: state.recording.notice_version, asked: false };
    changed();
  });
  // Escape closes the notice unanswered: I stay "not answered" and may answer from the bar.
  dialog.addEventListener("cancel", (event) => {
    event.preventDefault();
    state.consentNotice = null;
    closeNotice();
    changed();
  });
  // Closed some other way than `closeNotice`: the keyboard goes back all the same. The close
  // event comes late (with an animation frame, which a background tab may not have for a
  // while): one arriving after `closeNotice` gave the focus back, or after the notice opened
  // again, changes nothing.
  dialog.addEventListener("close", () => {
    if (!dialog.open) giveFocusBack();
  });
  dialog.addEventListener("keydown", trapFocus);
  dataChannels.on("storage", (msg) => {
    state.notStored = !msg.stored;
    changed();
  });
  requestButton.addEventListener("click", () => send(() => call.signalling.requestConsent()));
  startButton.addEventListener("click", () => send(() => call.signalling.startRecording()));
  stopButton.addEventListener("click", () => send(() => call.signalling.stopRecording()));
  caseForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const label = caseLabel.value.trim();
    if (!label) return;
    send(() => call.signalling.markCase(label));
    caseLabel.value = "";
  });
}

function send(request) {
  state.recordingError = null;
  request();
  changed();
}

/** My answer to the notice shown (the version I was shown goes with it). */
function answer(decision) {
  const version = state.consentNotice?.version || state.recording.notice_version;
  call.signalling.consent(decision, version);
  state.consentNotice = null;
  changed();
}

/** Close the notice and give the keyboard back at once: to where it was before the notice
 * opened, or to the bar's answer button where that is gone. */
function closeNotice() {
  if (!dialog.open) return;
  dialog.close();
  giveFocusBack();
}

function giveFocusBack() {
  if (!returnFocus) return;
  const back = returnFocus.isConnected && !returnFocus.closest("[hidden]") ? returnFocus : null;
  returnFocus = null;
  (back ?? (answerButton.hidden ? null : answerButton))?.focus();
}

/** Tab and Shift+Tab stay inside the notice while it is open. */
function trapFocus(event) {
  if (event.key !== "Tab") return;
  const stops = [...dialog.querySelectorAll("button:not(:disabled)")];
  if (!stops.length) return;
  const first = stops[0];
  const last = stops[stops.length - 1];
  const active = document.activeElement;
  if (event.shiftKey && (active === first || !stops.includes(active))) {
    event.preventDefault();
    last.focus();
  } else if (!event.shiftKey && active === last) {
    event.preventDefault();
    first.focus();
  }
}

// -- what the server says ------------------------------------------------------------------------

/** A new connection joined: the server tells again where the recording stands (`hello`). */
export function resetRecording() {
  state.recording = noRecording();
  state.consentNotice = null;
  state.recordingError = null;
}

/** Off the room screen (reconnecting, ended): no notice over the other screens. */
export function leftRoom() {
  state.consentNotice = null;
  if (dialog.open) dialog.close();
}

/** `consent_requested`: show the notice, unless I answered already (the chair reminds the
 * others; my answer stands, and I can change it from the bar). */
export function consentRequested(msg) {
  state.recording.notice_version ||= msg.notice_version;
  if (decisionOf(state, state.participantId) !== "pending") return;
  state.consentNotice = { version: msg.notice_version, asked: true };
}

/** `recording_state`: the room's recording and everyone's answer; say when it starts or stops. */
export function recordingState(msg) {
  const was = state.recording.recording;
  state.recording = { ...noRecording(), ...msg };
  delete state.recording.type;
  if (msg.recording !== was) {
    state.recordingAnnounced = msg.recording ? "recording.started" : "recording.stopped";
    if (!msg.recording && msg.failure) state.recordingAnnounced = "recording.failed";
  }
  if (msg.recording !== was) state.storageLow = null; // a warning is about one recording
  // The chair recorded my spoken answer while the notice was waiting for mine.
  if (state.consentNotice?.asked && decisionOf(state, state.participantId) !== "pending") {
    state.consentNotice = null;
  }
}

/** `storage_low` (to the chair): the server's disk is running low while recording. */
export function storageLow(msg) {
  state.storageLow = { free_mb: msg.free_mb, reserve_mb: msg.reserve_mb };
}

/** What to say about the server's storage, most serious first, or "". */
export function storageWords(s) {
  const rec = s.recording;
  const words = [];
  if (!rec.recording && rec.failure) {
    const key = `recording.failed_${rec.failure}`;
    words.push(t(key) === key ? t("recording.failed_write_failed") : t(key));
  }
  if (s.notStored) words.push(t("chat.not_stored"));
  if (rec.recording && s.storageLow) words.push(t("recording.storage_low", s.storageLow));
  return words.join(" ");
}

/** An `error`: true if it refused one of the recording requests (then it is shown here). */
export function recordingRefused(msg) {
  if (!REQUESTS.has(msg.request)) return false;
  if (msg.request === "consent") state.notice = "recording.consent_failed";
  else state.recordingError = { code: msg.code, request: msg.request };
  return true;
}

/** Someone's answer: `granted`, `declined`, or `pending` (not answered yet). */
export function decisionOf(s, participantId) {
  return s.recording.consent[participantId] ?? "pending";
}

/** The i18n key of the mark on someone's tile when they are not recorded, or "". */
export function notRecordedKey(s, participantId) {
  if (!s.recording.requested && !s.recording.recording) return "";
  const decision = decisionOf(s, participantId);
  if (decision === "declined") return "tile.recording_declined";
  if (decision === "pending" && s.recording.recording) return "tile.recording_pending";
  return "";
}

// -- drawing -------------------------------------------------------------------------------------

/** The indicator, my status, the notice and the chair's controls from the state. */
export function renderRecording(s) {
  const rec = s.recording;
  const mine = decisionOf(s, s.participantId);
  bar.hidden = !(rec.requested || rec.recording || rec.failure);
  const storage = storageWords(s);
  storageText.hidden = !storage;
  if (storageText.textContent !== storage) storageText.textContent = storage;
  bar.dataset.recording = String(rec.recording);
  indicator.hidden = !rec.recording;
  myStatus.textContent = t(`recording.${rec.recording ? "me" : "asked"}_${mine}`);
  answerButton.textContent = t(mine === "pending" ? "recording.answer" : "recording.change");
  answerButton.hidden = !rec.notice_version;
  const announced = s.recordingAnnounced ? t(s.recordingAnnounced) : "";
  if (announcer.textContent !== announced) announcer.textContent = announced;
  renderNotice(s, mine);
  renderChairControls(s);
}

function renderNotice(s, mine) {
  const notice = s.consentNotice;
  if (!notice) {
    closeNotice();
    return;
  }
  const key = `recording.notice.${notice.version}`;
  // A notice version this client has no text for cannot be agreed to: nobody has read it.
  const known = t(key) !== key;
  noticeText.textContent = known ? t(key) : t("recording.notice_unknown");
  noticeVersion.textContent = t("recording.notice_version", { version: notice.version });
  currentAnswer.textContent = t(`recording.current_${mine}`);
  agreeButton.disabled = !known;
  if (!dialog.open) {
    returnFocus = document.activeElement;
    dialog.showModal();
    // The heading first, not an answer: a screen reader reads the notice before any choice.
    dialogHeading.focus();
  }
}

function button(text, className, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

function renderChairControls(s) {
  const mayStart = s.permissions.includes("start_recording");
  const mayStop = s.permissions.includes("stop_recording");
  panel.hidden = !(mayStart || mayStop);
  if (panel.hidden) return;
  const rec = s.recording;
  const people = [...s.participants.values()];
  const nameOf = (person) => person.name || person.sub;
  requestButton.hidden = !mayStart || rec.recording;
  requestButton.textContent = t(rec.requested ? "recording.ask_again" : "recording.ask");

  const rows = [];
  if (rec.requested || rec.recording) {
    for (const person of people) {
      const pid = person.participant_id;
      const decision = decisionOf(s, pid);
      const li = document.createElement("li");
      li.dataset.participantId = pid;
      li.dataset.consent = decision;
      const label = document.createElement("span");
      label.className = "person";
      const name = nameOf(person);
      const who = pid === s.participantId ? t("room.you", { name }) : name;
      const said = t(`recording.decision_${decision}`);
      label.textContent = `${who} · ${said}`;
      li.append(label);
      if (decision === "pending" && mayStart) {
        const verbal = (d) => () => send(() => call.signalling.verbalConsent(pid, d));
        li.append(
          button(t("recording.verbal_granted", { name }), "verbal-granted", verbal("granted")),
          button(t("recording.verbal_declined", { name }), "verbal-declined", verbal("declined")),
        );
      }
      rows.push(li);
    }
  }
  replaceRows(consentList, rows);
  consentEmpty.hidden = rows.length > 0;

  const pending = people.filter((person) => decisionOf(s, person.participant_id) === "pending");
  const declined = people.filter((person) => decisionOf(s, person.participant_id) === "declined");
  startButton.hidden = !mayStart || rec.recording;
  startButton.disabled = pending.length > 0;
  // Why the start button is (not) available; nothing to say while recording.
  let reason = "";
  if (rec.recording) reason = "";
  else if (!rec.requested && pending.length) reason = t("recording.start_needs_request");
  else if (pending.length) {
    reason = t("recording.start_waiting", { names: pending.map(nameOf).join(", ") });
  } else if (declined.length) {
    reason = t("recording.start_ready_declined", { names: declined.map(nameOf).join(", ") });
  } else {
    reason = t("recording.start_ready");
  }
  startReason.textContent = reason;
  startReason.hidden = !reason;
  stopButton.hidden = !mayStop || !rec.recording;

  caseForm.hidden = !mayStart || !rec.recording;
  casesHeading.hidden = caseList.hidden = rec.cases.length === 0;
  const cases = rec.cases.map((label) => {
    const li = document.createElement("li");
    li.dataset.participantId = "";
    li.textContent = label;
    return li;
  });
  replaceRows(caseList, cases);

  const error = s.recordingError;
  let words = "";
  if (error) {
    const key = `recording.error_${error.code}`;
    words = t(key) === key ? t("recording.error_other") : t(key);
  }
  if (errorText.textContent !== words) errorText.textContent = words;
}
