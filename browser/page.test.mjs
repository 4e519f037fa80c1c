// Drives the live page in Debian's Chromium (usage: URL SHOT_WIDE SHOT_NARROW [TOKEN]).
// With a token, enters it first, as a user of a server that checks callers
// would. At 1280 px: sends a command from the form, waits until the journey
// (carried by the one event stream) shows it applied and queried, checks the
// order appears in the list, the mode badge, the stats in lifecycle order and
// the chart, then sends six commands at once and waits for the last one's
// whole journey (a page that held a request per command would stall on the
// browser's six connections per host). At 390 px (and 360 px) the page must
// fit the width. Saves a screenshot at each width, and fails if the page
// asked for anything outside the server (no CDN) or polled a trace. With
// EXPECT_REACTIONS set (the SKU is in stock), each journey must show the
// order saga's reservation and confirmation.
import { chromium } from "playwright-core";

const [url, shotWide, shotNarrow, token] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = (why) => { console.error(why); process.exitCode = 1; throw new Error(why); };

async function open(width, height) {
  const page = await browser.newPage({ viewport: { width, height } });
  const external = [], traces = [];
  page.on("request", (r) => {
    if (!r.url().startsWith(url)) external.push(r.url());
    if (r.url().includes("/commands/")) traces.push(r.url());
  });
  await page.goto(url);
  if (token) {
    await page.fill("#token", token);
    await page.$eval("#token", (el) => el.dispatchEvent(new Event("change")));
  }
  return { page, external, traces };
}

async function journeyDone(page, timeout = 20000) {
  for (const stage of ["committed", "published", "consumed", "applied", "queried"]) {
    await page.waitForSelector(`.stage[data-stage="${stage}"][data-done="yes"]`, { timeout });
  }
}

async function sendOne(page, customer) {
  await page.fill("#customer", customer);
  await page.fill("#qty", "3");
  await page.click("#send");
  await journeyDone(page);
  // With the SKU in stock, the saga's two commands show under the journey.
  if (process.env.EXPECT_REACTIONS) {
    await page.waitForFunction(() => document.querySelectorAll('#reactions [data-reaction="StockReserved"]').length === 2, null, { timeout: 20000 });
  }
  const orderId = await page.inputValue("#order");
  await page.waitForSelector(`tr[data-order="${orderId}"]`, { timeout: 20000 });
  return orderId;
}

function checkClean({ external, traces }) {
  if (external.length) fail(`the page requested outside assets: ${external}`);
  if (traces.length) fail(`the page polled traces instead of following the stream: ${traces.length} requests`);
}

try {
  // Wide.
  const wide = await open(1280, 860);
  const orderId = await sendOne(wide.page, "browser");
  await wide.page.waitForFunction(() => document.querySelector("#chartlegend").textContent.startsWith("lag "), null, { timeout: 20000 });
  const mode = await wide.page.$eval("#mode", (el) => el.dataset.mode);
  if (mode !== "embedded") fail(`mode badge says ${mode}`);
  const statuses = await wide.page.$$eval(".stat", (els) => els.map((e) => e.dataset.status));
  if (statuses.join() !== "created,paid,shipped,delivered,cancelled") fail(`stats out of lifecycle order: ${statuses}`);
  // Six at once, then the journey of the last answered one to the end.
  let answered = 0;
  wide.page.on("response", (r) => { if (r.request().method() === "POST" && r.url().endsWith("/orders")) answered++; });
  for (let i = 0; i < 6; i++) await wide.page.click("#send");
  await wide.page.waitForFunction(() => document.querySelectorAll("#orders tr").length >= 7, null, { timeout: 20000 });
  for (let t = 0; answered < 6 && t < 100; t++) await new Promise((r) => setTimeout(r, 100));
  if (answered !== 6) fail(`${answered} of 6 commands answered`);
  await wide.page.waitForFunction(() => {
    const j = document.querySelector("#journey");
    return j.dataset.command && j.dataset.command === document.querySelector("#cmdid").textContent
      && [...j.querySelectorAll(".stage")].every((s) => s.dataset.done === "yes");
  }, null, { timeout: 20000 });
  await wide.page.screenshot({ path: shotWide, fullPage: true });
  checkClean(wide);

  // Narrow: a phone.
  for (const width of [390, 360]) {
    const narrow = await open(width, 844);
    await sendOne(narrow.page, "phone");
    await narrow.page.waitForFunction(() => document.querySelector("#chartlegend").textContent.startsWith("lag "), null, { timeout: 20000 });
    const overflow = await narrow.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (overflow > 0) fail(`at ${width} px the page is ${overflow} px wider than the screen`);
    if (width === 390) await narrow.page.screenshot({ path: shotNarrow, fullPage: true });
    checkClean(narrow);
  }
  console.log("ok", orderId);
} finally {
  await browser.close();
}
