// Every flow of the web console in real Chromium, as a new user would try it. Run by
// tests/tests/e2e/console.rs, which starts secretd, creates the users and checks the outcome
// through the API. Inputs come from the environment only (never argv):
//   CONSOLE_URL  the service, e.g. http://127.0.0.1:PORT
//   ALICE_TOKEN  alice's user token (alice logs in)
//   VALUE_TEXT   the value typed into the Add dialog; VALUE_FILE a file whose bytes are added
//   OUT_DIR      where every page's HTML, the downloaded manifest and the cookie checks go
//   SHOT_DIR     where the README's screenshots go
// It prints step names only, never a value or a token.
"use strict";
const fs = require("fs");
const http = require("http");
const path = require("path");
const { chromium } = require("playwright-core");

const env = (k) => {
  const v = process.env[k];
  if (!v) { throw new Error(`${k} is not set`); }
  return v;
};
const URL_ = env("CONSOLE_URL");
const OUT = env("OUT_DIR");
const SHOTS = env("SHOT_DIR");
let n = 0;

function check(cond, what) {
  if (!cond) { throw new Error(`check failed: ${what}`); }
  console.log(`ok ${what}`);
}

async function dump(page, name) {
  n += 1;
  fs.writeFileSync(path.join(OUT, `page-${String(n).padStart(2, "0")}-${name}.html`), await page.content());
}

// A raw request with chosen headers (what a page of another origin, or a replayed cookie,
// would send). Returns {status, body, location}.
function raw(method, p, headers, body) {
  return new Promise((resolve, reject) => {
    const u = new URL(p, URL_);
    const req = http.request({ method, host: u.hostname, port: u.port, path: u.pathname, headers }, (res) => {
      let data = "";
      res.on("data", (c) => { data += c; });
      res.on("end", () => resolve({ status: res.statusCode, body: data, location: res.headers.location, headers: res.headers }));
    });
    req.on("error", reject);
    if (body) { req.write(body); }
    req.end();
  });
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  try {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
    const page = await ctx.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("console", (m) => { if (m.type() === "error" && !/Failed to load resource/.test(m.text())) { errors.push(m.text()); } });

    // 1. Log in: a wrong token shows why; the right one, typed from the keyboard, opens a session.
    const first = await page.goto(URL_ + "/");
    for (const h of ["content-security-policy", "x-content-type-options", "referrer-policy", "cache-control"]) {
      check(first.headers()[h], `header ${h} on /`);
    }
    check(!/unsafe-inline/.test(first.headers()["content-security-policy"]) &&
      /frame-ancestors 'none'/.test(first.headers()["content-security-policy"]), "CSP without unsafe-inline, frame-ancestors none");
    await page.getByLabel("Token").fill("nst.0123456789abcdef.wrong");
    await page.getByRole("button", { name: "Log in" }).click();
    const alert = page.getByRole("alert");
    await alert.waitFor();
    const why = await alert.textContent();
    check(/invalid token/.test(why), `a wrong token shows why (${why})`);
    await dump(page, "login-refused");
    await page.getByLabel("Token").focus();
    await page.keyboard.type(env("ALICE_TOKEN"));
    await page.keyboard.press("Enter");
    await page.waitForURL(URL_ + "/secrets");
    check(!page.url().includes("nst."), "the token is not in the URL");
    const cookies = await ctx.cookies();
    check(cookies.length === 1 && cookies[0].httpOnly && cookies[0].sameSite === "Strict", "one HttpOnly SameSite=Strict cookie");
    check(!cookies[0].value.includes(env("ALICE_TOKEN").split(".")[2]), "the cookie is not the token");
    const storage = await page.evaluate(() => localStorage.length + sessionStorage.length);
    check(storage === 0, "nothing in web storage");

    // 2. Navigation and the user's name.
    check(await page.getByRole("link", { name: "Secrets" }).isVisible(), "link Secrets");
    check(await page.getByRole("link", { name: "Dashboard" }).isVisible(), "link Dashboard");
    check((await page.locator("#user-name").textContent()) === "alice", "the user's name is shown");

    // 3. The Secrets tab: own by KEY, shared as secret:/OWNER/KEY; Add with bad inputs first.
    const table = page.getByRole("table");
    check(await table.getByRole("rowheader", { name: "secret:/bob/bob-key" }).isVisible(), "bob's shared secret as secret:/bob/bob-key");
    check(await table.getByRole("rowheader", { name: "doomed", exact: true }).isVisible(), "own secret as KEY");
    await page.getByRole("button", { name: "Add", exact: true }).focus();
    await page.keyboard.press("Enter");
    const add = page.getByRole("dialog");
    await add.waitFor();
    check(await add.getByRole("textbox", { name: "Value" }).isVisible(), "Add dialog with a Value textarea");
    await page.keyboard.press("Escape");
    await add.waitFor({ state: "hidden" });
    const addSecret = async (key, fill) => {
      await page.getByRole("button", { name: "Add", exact: true }).click();
      await add.getByLabel("Key").fill(key);
      await fill();
      await add.getByRole("button", { name: "Confirm" }).click();
    };
    await addSecret("bad key", () => add.getByLabel("Value", { exact: true }).fill(env("VALUE_TEXT")));
    const addAlert = add.getByRole("alert");
    await addAlert.waitFor();
    check(/invalid secret key 'bad key'/.test(await addAlert.textContent()), "an invalid key shows the service's message");
    await add.getByLabel("Key").fill("empty-secret");
    await add.getByLabel("Value", { exact: true }).fill("");
    await add.getByRole("button", { name: "Confirm" }).click();
    await page.waitForFunction(() => /is empty/.test(document.querySelector("#add-dialog [role=alert]").textContent));
    check(true, "an empty value shows the service's message");
    await add.getByRole("button", { name: "Cancel" }).click();
    await addSecret("web-secret", () => add.getByLabel("Value", { exact: true }).fill(env("VALUE_TEXT")));
    await table.getByRole("rowheader", { name: "web-secret", exact: true }).waitFor();
    check(!(await add.isVisible()), "success closes the dialog and the row appears");
    await dump(page, "secrets-added");
    await addSecret("file-secret", () => add.getByLabel("Or take the value from a file").setInputFiles(env("VALUE_FILE")));
    await table.getByRole("rowheader", { name: "file-secret", exact: true }).waitFor();
    check(true, "a value from a file");
    await addSecret("tmp-secret", () => add.getByLabel("Value", { exact: true }).fill("x"));
    await table.getByRole("rowheader", { name: "tmp-secret", exact: true }).waitFor();
    await page.screenshot({ path: path.join(SHOTS, "console-secrets.png") });
    await dump(page, "secrets");

    // 4. Delete: the confirmation names the key; Cancel keeps it, Delete deletes.
    await page.getByRole("button", { name: "Delete tmp-secret" }).click();
    const confirm = page.getByRole("alertdialog");
    await confirm.waitFor();
    const text = await confirm.textContent();
    check(/tmp-secret/.test(text) && /Running jobs/.test(text), "the confirmation names the key and says jobs lose it");
    await confirm.getByRole("button", { name: "Cancel" }).click();
    await page.reload();
    check(await table.getByRole("rowheader", { name: "tmp-secret", exact: true }).isVisible(), "Cancel keeps the secret");
    await page.getByRole("button", { name: "Delete tmp-secret" }).click();
    await confirm.getByRole("button", { name: "Delete", exact: true }).click();
    await table.getByRole("rowheader", { name: "tmp-secret", exact: true }).waitFor({ state: "detached" });
    check(true, "Delete removes the row");
    check((await page.getByRole("button", { name: /^Delete secret:\/bob/ }).count()) === 0, "shared rows have no Delete");

    // 5. Share: bad user, then bob with read; the Shared view lists it; Revoke withdraws it.
    await page.getByRole("button", { name: "Share web-secret" }).click();
    const share = page.getByRole("dialog");
    await share.getByLabel("User").fill("No Such!");
    await share.getByRole("button", { name: "Confirm" }).click();
    await share.getByRole("alert").waitFor();
    check(/invalid/.test(await share.getByRole("alert").textContent()), "a bad user name shows the service's message");
    await share.getByLabel("User").fill("bob");
    await share.getByLabel("Permission").selectOption("read");
    await share.getByRole("button", { name: "Confirm" }).click();
    await page.waitForURL(URL_ + "/shared");
    const grants = page.getByRole("table");
    const row = grants.getByRole("row", { name: /web-secret/ });
    check(/bob/.test(await row.textContent()) && /read/.test(await row.textContent()), "the Shared view lists the grant");
    await dump(page, "shared");
    fs.writeFileSync(path.join(OUT, "step-shared"), "bob can read web-secret now\n");
    await row.getByRole("button", { name: "Revoke" }).click();
    await row.waitFor({ state: "detached" });
    check(true, "Revoke withdraws the grant");

    // 6. Dashboard: RUN, the launch dialog, bad rows, then a job; its manifest; Revoke job.
    // A second tab deletes 'doomed' after the dashboard listed it: the job is refused.
    await page.getByRole("link", { name: "Dashboard" }).click();
    await page.waitForURL(URL_ + "/dashboard");
    await page.getByRole("button", { name: "RUN Terminal" }).click();
    const launch = page.getByRole("dialog");
    check((await launch.getByLabel("Image").inputValue()) === "ubuntu:24.04", "RUN fills Image");
    check((await launch.getByLabel("Command").inputValue()) === "bash", "RUN fills Command");
    const rowN = (i) => launch.locator(".row").nth(i);
    await launch.getByRole("button", { name: "ADD NEW SECRET" }).click();
    await rowN(0).getByLabel("Use as").selectOption({ label: "Environment variable" });
    await rowN(0).getByLabel("Secret").selectOption({ label: "doomed" });
    await rowN(0).getByLabel("Variable name").fill("1BAD");
    const launchAlert = launch.locator("form [role=alert]");
    await launch.getByRole("button", { name: "RUN", exact: true }).click();
    await launchAlert.waitFor();
    check(/1BAD/.test(await launchAlert.textContent()), "a bad variable name is refused as the CLI refuses it");
    await rowN(0).getByLabel("Variable name").fill("DOOMED");
    const other = await ctx.newPage();
    await other.goto(URL_ + "/secrets");
    await other.getByRole("button", { name: "Delete doomed" }).click();
    await other.getByRole("alertdialog").getByRole("button", { name: "Delete", exact: true }).click();
    await other.getByRole("rowheader", { name: "doomed", exact: true }).waitFor({ state: "detached" });
    await other.close();
    await launch.getByRole("button", { name: "RUN", exact: true }).click();
    await page.waitForFunction(() => /Missing secrets: 'doomed'/.test(document.querySelector("#launch-dialog form [role=alert]").textContent));
    check(true, "a secret deleted meanwhile: Missing secrets: 'doomed'");
    await rowN(0).getByLabel("Secret").selectOption({ label: "web-secret" });
    await rowN(0).getByLabel("Variable name").fill("MYPASS");
    await launch.getByRole("button", { name: "ADD NEW SECRET" }).click();
    await rowN(1).getByLabel("Use as").selectOption({ label: "File" });
    await rowN(1).getByLabel("Secret").selectOption({ label: "secret:/bob/bob-key" });
    await rowN(1).getByLabel("File path").fill("relative/bob.txt");
    await launch.getByRole("button", { name: "RUN", exact: true }).click();
    await page.waitForFunction(() => /relative\/bob.txt|absolute/.test(document.querySelector("#launch-dialog form [role=alert]").textContent));
    check(true, "a relative file path is refused as the CLI refuses it");
    await rowN(1).getByLabel("File path").fill("/var/secrets/bob.txt");
    // The screenshot for the README: the dialog from its top, without the last refusal.
    await page.evaluate(() => {
      document.querySelector("#launch-dialog form [role=alert]").hidden = true;
      document.getElementById("launch-dialog").scrollTop = 0;
    });
    await page.screenshot({ path: path.join(SHOTS, "console-launch.png") });
    await dump(page, "launch-filled");
    await launch.getByRole("button", { name: "RUN", exact: true }).click();
    const result = page.locator("#job-result");
    await result.waitFor();
    const jobId = await page.locator("#job-id").textContent();
    check(/^job-[0-9a-f]{16}$/.test(jobId), "the job id is shown");
    const maps = await page.locator("#job-mappings").textContent();
    check(/MYPASS/.test(maps) && /\/var\/secrets\/bob.txt/.test(maps), "the mappings are shown");
    const line = await page.locator("#job-run-line").textContent();
    check(line === "neuro run --env MYPASS=secret:web-secret --volume secret:/bob/bob-key:/var/secrets/bob.txt -- bash", "the neuro run line");
    const [dl] = await Promise.all([page.waitForEvent("download"), page.getByRole("link", { name: "Download manifest" }).click()]);
    await dl.saveAs(path.join(OUT, "manifest.yaml"));
    fs.writeFileSync(path.join(OUT, "job-id"), jobId);
    await dump(page, "job-created");
    await page.getByRole("button", { name: "Revoke job" }).click();
    await page.getByRole("button", { name: "Job revoked" }).waitFor();
    check(true, "Revoke job");
    await dump(page, "job-revoked");

    // 7. 400 px wide: the Secrets tab still fits.
    await page.setViewportSize({ width: 400, height: 800 });
    await page.goto(URL_ + "/secrets");
    check(await table.isVisible(), "the table at 400 px");
    const overflow = await page.evaluate(() => document.scrollingElement.scrollWidth);
    check(overflow <= 400, `no horizontal scrolling at 400 px (${overflow})`);
    await page.setViewportSize({ width: 1280, height: 800 });

    // 8. CSRF: a page of another origin posts to the console; raw requests without the
    // same-origin proof or the CSRF token are refused. Nothing changes (checked in Rust).
    const sid = (await ctx.cookies())[0].value;
    const csrf = await page.evaluate(() => document.body.dataset.csrf);
    const evil = http.createServer((req, res) => {
      res.setHeader("Content-Type", "text/html");
      res.end(`<form id=f method=post action="${URL_}/console/secrets/delete" enctype="text/plain">` +
        `<input name='{"key":"web-secret","x":"' value='"}'></form><script>document.getElementById("f").submit()</script>`);
    });
    await new Promise((r) => evil.listen(0, "localhost", r));
    const evilPage = await ctx.newPage();
    const posted = evilPage.waitForResponse((r) => r.url().startsWith(URL_));
    await evilPage.goto(`http://localhost:${evil.address().port}/`);
    const refused = await posted;
    check(refused.status() === 403 || refused.status() === 401, `the cross-origin form post is refused (${refused.status()})`);
    await evilPage.close();
    evil.close();
    const cookie = `neuro_session=${sid}`;
    const body = JSON.stringify({ key: "web-secret" });
    const host = new URL(URL_).host;
    for (const [what, h] of [
      ["another Origin", { Origin: "http://evil.example", "X-CSRF-Token": csrf }],
      ["Sec-Fetch-Site cross-site", { "Sec-Fetch-Site": "cross-site", Origin: URL_, "X-CSRF-Token": csrf }],
      ["no Origin", { "X-CSRF-Token": csrf }],
      ["no CSRF token", { Origin: URL_ }],
      ["a wrong CSRF token", { Origin: URL_, "X-CSRF-Token": "A".repeat(43) }],
    ]) {
      const r = await raw("POST", "/console/secrets/delete", { Host: host, Cookie: cookie, "Content-Type": "application/json", ...h }, body);
      check(r.status === 403, `POST with ${what} is refused with 403`);
      check(r.headers["cache-control"] === "no-store" && /frame-ancestors 'none'/.test(r.headers["content-security-policy"]), `security headers on the refusal (${what})`);
    }

    // 9. Log out; the old cookie opens nothing.
    await page.goto(URL_ + "/secrets");
    await page.getByRole("button", { name: "Log out" }).click();
    await page.waitForURL(URL_ + "/");
    check(await page.getByLabel("Token").isVisible(), "Log out returns to the log-in form");
    const replay = await raw("GET", "/secrets", { Host: host, Cookie: cookie });
    check(replay.status === 303 && replay.location === "/", "the old cookie no longer opens the Secrets tab");
    const replayPost = await raw("POST", "/console/secrets/delete", { Host: host, Cookie: cookie, Origin: URL_, "X-CSRF-Token": csrf, "Content-Type": "application/json" }, body);
    check(replayPost.status === 401, "the old cookie no longer deletes");
    await dump(page, "logged-out");
    check(errors.length === 0, `no script errors (${errors.join("; ")})`);
  } finally {
    await browser.close();
  }
}

main().then(() => console.log("flows: all passed"), (e) => {
  console.error(`flows: FAILED: ${e.message}`);
  process.exit(1);
});
