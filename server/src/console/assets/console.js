// The console's one script: opens the dialogs and sends their forms as JSON with the
// session's CSRF token. It never receives or shows a secret value; the login token never
// reaches it (the log-in form is a plain form post).
"use strict";
(function () {
  const csrf = document.body.dataset.csrf || "";
  const $ = (sel, root) => (root || document).querySelector(sel);

  async function post(url, body) {
    const r = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await r.json(); } catch (_) { data = {}; }
    if (r.status === 401) { window.location.assign("/"); }
    if (!r.ok) { throw new Error(data.error || ("the service answered " + r.status)); }
    return data;
  }

  function alertOf(root) { return $('[role="alert"]', root); }
  function showError(root, msg) {
    const a = alertOf(root);
    a.textContent = msg;
    a.hidden = false;
  }
  function clearError(root) {
    const a = alertOf(root);
    if (a) { a.textContent = ""; a.hidden = true; }
  }
  function open(id) {
    const d = document.getElementById(id);
    d.querySelectorAll('[role="alert"]').forEach((a) => { a.textContent = ""; a.hidden = true; });
    d.showModal();
    return d;
  }

  // Base64 of the bytes of a file or of the textarea's text (UTF-8), exact.
  function b64(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(s);
  }

  document.addEventListener("click", (ev) => {
    const t = ev.target.closest("button");
    if (!t) { return; }
    if (t.dataset.open) { open(t.dataset.open); }
    if (t.hasAttribute("data-close")) { t.closest("dialog").close(); }
    if (t.dataset.delete) {
      const d = open("delete-dialog");
      $('input[name="key"]', d).value = t.dataset.delete;
      $("#delete-text", d).textContent = "Delete the secret '" + t.dataset.delete +
        "'? Running jobs that use it lose it.";
    }
    if (t.dataset.share) {
      const d = open("share-dialog");
      $('input[name="key"]', d).value = t.dataset.share;
      $("#share-title", d).textContent = "Share " + t.dataset.share;
    }
    if (t.dataset.revokeUser) {
      post("/console/revoke", { user: t.dataset.revokeUser, uri: t.dataset.revokeUri })
        .then(() => window.location.reload())
        .catch((e) => showError(document, e.message));
    }
    if (t.hasAttribute("data-run-image")) { launch(t.dataset.runImage, t.dataset.runCommand); }
    if (t.id === "add-secret-row") { addRow(); }
    if (t.dataset.removeRow) { t.closest(".row").remove(); }
    if (t.id === "job-revoke") { revokeJob(t); }
  });

  document.addEventListener("submit", async (ev) => {
    const f = ev.target;
    if (!f.dataset.action) { return; }
    ev.preventDefault();
    clearError(f);
    try {
      if (f.dataset.action === "add") {
        const file = f.elements.file.files[0];
        const bytes = file ? new Uint8Array(await file.arrayBuffer())
          : new TextEncoder().encode(f.elements.value.value);
        await post("/console/secrets", { key: f.elements.key.value, value: b64(bytes) });
        window.location.reload();
      } else if (f.dataset.action === "delete") {
        await post("/console/secrets/delete", { key: f.elements.key.value });
        window.location.reload();
      } else if (f.dataset.action === "share") {
        await post("/console/share", {
          key: f.elements.key.value, user: f.elements.user.value, action: f.elements.action.value,
        });
        f.closest("dialog").close();
        window.location.assign("/shared");
      } else if (f.dataset.action === "launch") {
        await run(f);
      }
    } catch (e) {
      showError(f, e.message);
    }
  });

  // The launch dialog.
  let rowCount = 0;
  function launch(image, command) {
    const d = open("launch-dialog");
    const f = $("form", d);
    f.hidden = false;
    $("#job-result", d).hidden = true;
    f.elements.image.value = image || "";
    f.elements.command.value = command || "";
    $("#secret-rows", d).textContent = "";
    (image ? f.elements.command : f.elements.image).focus();
  }

  function addRow() {
    const n = ++rowCount;
    const row = document.createElement("div");
    row.className = "row";
    row.innerHTML =
      '<label for="use-' + n + '">Use as</label><select id="use-' + n + '" name="kind">' +
      '<option value="env">Environment variable</option><option value="file">File</option></select>' +
      '<label for="secret-' + n + '">Secret</label><select id="secret-' + n + '" name="secret"></select>' +
      '<label for="target-' + n + '">Variable name</label><input id="target-' + n + '" name="target" autocomplete="off">' +
      '<button type="button" data-remove-row="1">Remove</button>';
    const sel = $("select[name=secret]", row);
    sel.append(document.getElementById("secret-options").content.cloneNode(true));
    const kind = $("select[name=kind]", row);
    kind.addEventListener("change", () => {
      $('label[for="target-' + n + '"]', row).textContent =
        kind.value === "file" ? "File path" : "Variable name";
    });
    $("#secret-rows").append(row);
    kind.focus();
  }

  async function run(f) {
    const rows = Array.from(f.querySelectorAll(".row")).map((r) => ({
      kind: $("select[name=kind]", r).value,
      secret: $("select[name=secret]", r).value,
      target: $("input[name=target]", r).value,
    }));
    const job = await post("/console/jobs", {
      image: f.elements.image.value, command: f.elements.command.value, rows: rows,
    });
    const d = f.closest("dialog");
    const res = $("#job-result", d);
    $("#job-id", res).textContent = job.job_id;
    $("#job-expires", res).textContent = job.expires_at;
    const ul = $("#job-mappings", res);
    ul.textContent = "";
    for (const m of job.mappings) {
      const li = document.createElement("li");
      li.textContent = m;
      ul.append(li);
    }
    if (!job.mappings.length) { ul.append(Object.assign(document.createElement("li"), { textContent: "no secrets" })); }
    $("#job-run-line", res).textContent = job.run_line;
    const a = $("#job-manifest", res);
    if (a.href.startsWith("blob:")) { URL.revokeObjectURL(a.href); }
    a.href = URL.createObjectURL(new Blob([job.manifest], { type: "application/yaml" }));
    a.download = job.job_id + ".yaml";
    const rv = $("#job-revoke", res);
    rv.dataset.job = job.job_id;
    rv.disabled = false;
    rv.textContent = "Revoke job";
    clearError(res);
    f.hidden = true;
    res.hidden = false;
    $("#job-id", res).focus();
  }

  async function revokeJob(btn) {
    const res = btn.closest("section");
    clearError(res);
    try {
      await post("/console/jobs/revoke", { job_id: btn.dataset.job });
      btn.disabled = true;
      btn.textContent = "Job revoked";
      const a = $("#job-manifest", res);
      if (a.href.startsWith("blob:")) { URL.revokeObjectURL(a.href); }
    } catch (e) {
      showError(res, e.message);
    }
  }
})();
