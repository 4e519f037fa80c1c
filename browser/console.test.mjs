// Drives the operator's console in Debian's Chromium (usage: URL
// SHOT_WIDE SHOT_NARROW [TOKEN]); the server holds a poison record (an
// event that does not decode) and one parked behind it, for the orders'
// read model. With a token, enters it first. At 1280 px: the processors
// show (the read model's parked, with a lag sparkline), both services are
// ready, the dead letters show their decoded envelopes; a retry fails (it
// still does not apply) and the page says why; skipping it applies the one
// parked behind it and the processor runs again; a rebuild of the orders'
// read models is refused (history holds the skipped record) and said so;
// one of the inventory's, started from the page, finishes (the audit,
// carried by the stream, says so). At 360 px the page must fit the width. Saves a
// screenshot at each width, and fails if the page asked for anything
// outside the server, or opened more than one event stream.
import { chromium } from "playwright-core";

const [url, shotWide, shotNarrow, token] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = (why) => { console.error(why); process.exitCode = 1; throw new Error(why); };
const origin = new URL(url).origin;

async function open(width, height) {
  const page = await browser.newPage({ viewport: { width, height } });
  const external = [], streams = [];
  page.on("request", (r) => {
    if (!r.url().startsWith(origin)) external.push(r.url());
    if (new URL(r.url()).pathname === "/stream") streams.push(r.url());
  });
  // Skip and rebuild ask first: yes.
  page.on("dialog", (d) => d.accept());
  await page.goto(url);
  if (token) {
    // Opened before the token was typed, the stream was refused: count
    // from here.
    await page.fill("#token", token);
    streams.length = 0;
    await page.$eval("#token", (el) => el.dispatchEvent(new Event("change")));
  }
  return { page, external, streams };
}

const T = { timeout: 20000 };

function checkClean({ external, streams }) {
  if (external.length) fail(`the console requested outside assets: ${external}`);
  if (streams.length !== 1) fail(`the console opened ${streams.length} event streams: ${streams}`);
  if (!streams[0].includes("ops=true")) fail(`the stream was not asked for the console: ${streams[0]}`);
}

try {
  const wide = await open(1280, 1400);
  const page = wide.page;
  await page.waitForSelector('[data-processor="orders_read_model"][data-state="parked"]', T);
  // The saga does not read payments: the bad one does not stop it.
  await page.waitForSelector('[data-processor="order_saga"][data-state="running"]', T);
  await page.waitForSelector('[data-processor="inventory_read_model"][data-state="running"]', T);
  await page.waitForSelector('#health [data-service="orders"][data-ready="yes"]', T);
  await page.waitForSelector('#health [data-service="inventory"][data-ready="yes"]', T);
  // One dead, one parked behind it; the envelopes decoded.
  await page.waitForFunction(() => document.querySelectorAll('[data-letter][data-status="dead"]').length === 1
    && document.querySelectorAll('[data-letter][data-status="parked"]').length === 1, null, T);
  const pre = await page.$eval('[data-letter][data-status="dead"] pre', (el) => el.textContent);
  if (!pre.includes('"amount_cents": "lots"')) fail(`the dead letter's envelope is not shown decoded: ${pre}`);
  // A sparkline has been drawn (some pixels are not blank).
  const drawn = await page.$eval('[data-processor="orders_read_model"] canvas', (c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    return d.some((v, i) => i % 4 === 3 && v > 0);
  });
  if (!drawn) fail("no lag sparkline drawn");
  await page.$eval('[data-letter][data-status="dead"] details', (d) => { d.open = true; });
  await page.screenshot({ path: shotWide, fullPage: true });

  // Retry it from the page: it still does not apply, the page says why.
  const id = await page.$eval(`[data-letter][data-status="dead"]`, (el) => el.dataset.letter);
  await page.click(`[data-letter="${id}"] [data-action="retry"]`);
  await page.waitForFunction(() => document.querySelector("#msg").textContent.includes("409 retry_failed"), null, T);
  // Skip it: the cancellation parked behind it applies.
  await page.click(`[data-letter="${id}"] [data-action="skip"]`);
  await page.waitForSelector(`[data-letter="${id}"]`, { state: "detached", ...T });
  await page.waitForSelector(`#actions [data-action-row="dead_letter.skip"][data-target="${id}"][data-outcome="done"]`, T);
  await page.waitForFunction(() => document.querySelectorAll("[data-letter]").length === 0, null, T);
  await page.waitForSelector('[data-processor="orders_read_model"][data-state="running"]', T);

  // The orders' read models cannot be rebuilt now: history holds the
  // record they skipped. The page says so.
  await page.click('[data-processor="orders_read_model"] [data-action="rebuild"]');
  await page.waitForFunction(() => document.querySelector("#msg").textContent.includes("409 rebuild_refused"), null, T);
  await page.waitForSelector('#actions [data-action-row="rebuild.start"][data-target="orders_read_model"][data-outcome="refused"]', T);
  // The inventory's can: started from the page, watched to its end over the stream.
  await page.click('[data-processor="inventory_read_model"] [data-action="rebuild"]');
  await page.waitForSelector('#actions [data-action-row="rebuild.start"][data-target="inventory_read_model"][data-outcome="started"]', T);
  await page.waitForSelector('#actions [data-action-row="rebuild.finish"][data-target="inventory_read_model"][data-outcome="done"]', T);
  checkClean(wide);

  // A phone.
  const narrow = await open(360, 800);
  await narrow.page.waitForSelector('[data-processor="orders_read_model"][data-state="running"]', T);
  await narrow.page.waitForSelector('#health [data-service="inventory"][data-ready="yes"]', T);
  const overflow = await narrow.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) fail(`at 360 px the console is ${overflow} px wider than the screen`);
  await narrow.page.screenshot({ path: shotNarrow, fullPage: true });
  checkClean(narrow);
  console.log("ok");
} finally {
  await browser.close();
}
