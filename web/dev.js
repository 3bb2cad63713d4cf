// The development link page (/dev): POSTs the form to /api/dev/links and shows the join link.
// A developer tool served only by a development node to this machine; its strings stay here,
// not in the web client's language catalogues.

const form = document.getElementById("mint-form");
const statusText = document.getElementById("status");
const result = document.getElementById("result");
const link = document.getElementById("link");
const expires = document.getElementById("expires");
const copyButton = document.getElementById("copy");

function showStatus(text, isError = false) {
  statusText.textContent = text;
  statusText.classList.toggle("error", isError);
}

function linkRequest() {
  const value = (name) => form.elements[name].value.trim();
  return {
    sub: value("sub"),
    name: value("name"),
    role: value("role"),
    depts: value("depts").split(",").map((d) => d.trim()).filter(Boolean),
    rooms: [value("room")],
    amr: form.elements.mfa.checked ? ["pwd", "otp"] : ["pwd"],
  };
}

async function mint(event) {
  event.preventDefault();
  result.hidden = true;
  showStatus("Minting…");
  let response;
  try {
    response = await fetch("/api/dev/links", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(linkRequest()),
      credentials: "same-origin",
    });
  } catch (error) {
    showStatus(`Could not reach the server: ${error.message}`, true);
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    showStatus(`Refused (${response.status}): ${body.message || body.error || "unknown error"}`, true);
    return;
  }
  link.href = body.link;
  link.textContent = body.link;
  const when = new Date(body.expires_at * 1000);
  expires.dateTime = when.toISOString();
  expires.textContent = when.toLocaleString();
  result.hidden = false;
  showStatus("Link minted. Development only: never use it with patient data.");
}

async function copyLink() {
  try {
    await navigator.clipboard.writeText(link.href);
    showStatus("Link copied to the clipboard.");
  } catch {
    // No clipboard permission (e.g. not a secure context): select the link for a manual copy.
    const range = document.createRange();
    range.selectNodeContents(link);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    showStatus("Copy was refused; the link is selected — press Ctrl+C.", true);
  }
}

form.addEventListener("submit", mint);
copyButton.addEventListener("click", copyLink);
