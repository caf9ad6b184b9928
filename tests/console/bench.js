// The Secrets tab in Chromium: time from navigation start until the secrets table is
// visible, for bench/console.sh. Inputs from the environment: CONSOLE_URL, USER_TOKEN, RUNS.
// Prints one line per run (milliseconds) and the median; never a token.
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const url = process.env.CONSOLE_URL;
  const runs = Number(process.env.RUNS || "10");
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  try {
    const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
    await page.goto(url + "/");
    await page.getByLabel("Token").fill(process.env.USER_TOKEN);
    await page.getByRole("button", { name: "Log in" }).click();
    await page.waitForURL(url + "/secrets");
    const times = [];
    for (let i = 0; i < runs; i++) {
      const t0 = Date.now();
      await page.goto(url + "/secrets", { waitUntil: "commit" });
      await page.locator("#secrets tbody tr").nth(999).waitFor({ state: "visible" });
      await page.getByRole("table").waitFor({ state: "visible" });
      times.push(Date.now() - t0);
    }
    const rows = await page.locator("#secrets tbody tr").count();
    times.sort((a, b) => a - b);
    console.log(`chromium: ${rows} rows; table visible after ${times.join(" ")} ms; median ${times[Math.floor(times.length / 2)]} ms`);
  } finally {
    await browser.close();
  }
}
main().catch((e) => { console.error(`bench: ${e.message}`); process.exit(1); });
