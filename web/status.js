// Server status for the landing page; the full client arrives with the web-client issue.
const status = document.getElementById("status");
const mode = document.getElementById("mode");

async function show() {
  try {
    const [health, info] = await Promise.all([
      fetch("/healthz").then((r) => r.json()),
      fetch("/api/info").then((r) => r.json()),
    ]);
    status.textContent = `Server ${health.node} is ${health.status} (version ${info.version}).`;
    if (info.dev_mode) {
      mode.textContent =
        "Development mode: tokens come from a local development identity provider. Not for patient data.";
      mode.className = "warning";
    }
  } catch (err) {
    status.textContent = "The server cannot be reached.";
  }
}

show();
