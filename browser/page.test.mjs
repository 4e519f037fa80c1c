// Drives the live page in Debian's Chromium (usage: URL SCREENSHOT [TOKEN]):
// with a token, enters it first, as a user of a server that checks callers
// would. Then it sends a command from the form,
// waits until the journey shows it applied (and queried), checks the order
// appears in the list fed by Server-Sent Events, saves a screenshot, and
// fails if the page asked for anything outside the server (no CDN).
import { chromium } from "playwright-core";

const [url, shot, token] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const external = [];
  page.on("request", (r) => { if (!r.url().startsWith(url)) external.push(r.url()); });
  await page.goto(url);
  if (token) {
    await page.fill("#token", token);
    await page.$eval("#token", (el) => el.dispatchEvent(new Event("change")));
  }
  await page.fill("#customer", "browser");
  await page.fill("#qty", "3");
  await page.click("#send");
  for (const stage of ["committed", "published", "consumed", "applied", "queried"]) {
    await page.waitForSelector(`.stage[data-stage="${stage}"][data-done="yes"]`, { timeout: 20000 });
  }
  const orderId = await page.inputValue("#order");
  await page.waitForSelector(`tr[data-order="${orderId}"]`, { timeout: 20000 });
  await page.waitForFunction(() => document.querySelector("#chartlegend").textContent.startsWith("lag "), null, { timeout: 20000 });
  await page.screenshot({ path: shot, fullPage: true });
  if (external.length) {
    console.error("the page requested outside assets:", external);
    process.exit(1);
  }
  console.log("ok", orderId);
} finally {
  await browser.close();
}
