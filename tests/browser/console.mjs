// The web console in a real browser (Debian's chromium, headless, driven by playwright-core), as an
// operator and as a user would use it. Prints "ok"/"FAIL" lines like the shell suites; writes a
// screenshot of each page to SHOTS. Usage: node console.mjs BASE_URL ADMIN_TOKEN USER_TOKEN SHOTS
import { chromium } from "playwright-core";

const [base, adminToken, userToken, shots] = process.argv.slice(2);
let fails = 0;
const ok = (name) => console.log(`  ok   ${name}`);
const fail = (name, why) => { fails++; console.log(`  FAIL ${name}`); if (why) console.log(`       ${why}`); };
async function check(name, f) {
  try {
    const r = await f();
    if (r === false) fail(name); else ok(name);
  } catch (e) {
    fail(name, String(e.message).split("\n")[0]);
  }
}
const shot = (page, name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));

  console.log("# sign in as an operator");
  const resp = await page.goto(`${base}/`);
  const headers = resp.headers();
  await check("the page has a CSP allowing only its own script", () =>
    /script-src 'self'/.test(headers["content-security-policy"] || "") && !/unsafe-inline/.test(headers["content-security-policy"]));
  await check("  and may not be framed", () => headers["x-frame-options"] === "DENY");
  await check("the sign-in form", () => page.locator("#signin-form").waitFor({ timeout: 5000 }));
  await shot(page, "01-sign-in");
  await page.fill("#token", "not a token");
  await page.click("#signin-button");
  await check("a bad token is refused with the reason", async () => {
    await page.locator("#signin-error", { hasText: "invalid token" }).waitFor({ timeout: 5000 });
  });
  await page.fill("#token", adminToken);
  await page.click("#signin-button");
  await check("signed in: the keyrings table lists default", () =>
    page.locator('#keyrings tr[data-row="default"]').waitFor({ timeout: 10000 }));
  await check("  the role is shown", async () => (await page.textContent("#who")).trim() === "ops");
  await check("  the keyring past 80% of its limit has a badge", () =>
    page.locator('#keyrings tr[data-row="busy"] [data-badge="limit"]').waitFor({ timeout: 5000 }));
  await check("  the others have none", async () => (await page.locator('#keyrings tr[data-row="default"] [data-badge="limit"]').count()) === 0);
  await page.click('#keyrings th[data-key="keyring"]');
  await check("  sortable: by name, descending after a click", async () =>
    (await page.locator("#keyrings tbody tr").first().getAttribute("data-row")) === "zeta");
  await shot(page, "02-keyrings");

  console.log("# a keyring: policy, rotation, live re-encryption, retire, destroy");
  await page.click('a[href="#/keyring/default"]');
  await check("the keyring page with its versions", () => page.locator('#versions tr[data-row="v1"]').waitFor({ timeout: 5000 }));
  await page.fill("#policy-days", "30");
  await page.fill("#policy-max", "500000");
  await page.click("text=Save policy");
  await check("the policy is saved", () => page.locator("#keyring-ok", { hasText: "Policy saved." }).waitFor({ timeout: 5000 }));
  await check("  and shown again", async () => (await page.inputValue("#policy-days")) === "30");
  await shot(page, "03-keyring");
  await page.click("#pause-toggle");
  await check("re-encryption paused: a badge says so", () => page.locator("#paused-badge").waitFor({ timeout: 5000 }));
  await check("Rotate asks for a confirmation first", async () => {
    await page.click("text=Rotate…");
    await page.locator("#rotate-confirm").waitFor({ state: "visible", timeout: 3000 });
  });
  await page.fill("#rotate-reason", "browser test");
  await page.click("text=Rotate now");
  await check("the rotation is made: version 2", () =>
    page.locator("#keyring-ok", { hasText: "Version 2 is active." }).waitFor({ timeout: 10000 }));
  await page.waitForTimeout(2500);
  await check("while paused, the scheduler moves no row (0% after 2.5 s)", async () =>
    ["0", null].includes(await page.locator("#progress-text").getAttribute("data-percent")));
  await page.click("#pause-toggle");
  await check("resumed", () => page.locator("#keyring-ok", { hasText: "Re-encryption resumed." }).waitFor({ timeout: 5000 }));
  const seen = new Set();
  const t0 = Date.now();
  let finished = false;
  while (Date.now() - t0 < 240000) {
    const p = await page.locator("#progress-text").getAttribute("data-percent").catch(() => null);
    const s = await page.locator("#progress-text").getAttribute("data-state").catch(() => null);
    if (p !== null) seen.add(p);
    if (p === "100" && s && s !== "running") { finished = true; break; }
    if (seen.size === 3) await shot(page, "04-reencryption-running");
    await page.waitForTimeout(250);
  }
  await check("the progress bar reaches 100% when the job finishes", () => finished);
  await check(`  moving live on the way (${seen.size} values seen: ${[...seen].slice(0, 6).join(", ")}...)`, () => seen.size >= 3);
  await check("  with rows, rate and the target version", async () => /of 100000 rows to version 2/.test(await page.textContent("#progress-text")));
  await shot(page, "04-reencryption");
  await page.locator('#versions tr[data-row="v1"] button', { hasText: "Retire" }).click();
  await check("retire version 1", () => page.locator('#versions tr[data-row="v1"]', { hasText: "retired" }).waitFor({ timeout: 5000 }));
  await page.locator('#versions tr[data-row="v1"] button', { hasText: "Destroy" }).click();
  await check("destroy asks for the keyring's name: the button is disabled", () => page.locator("#destroy-go").isDisabled());
  await page.fill("#destroy-name", "defaul");
  await check("  still disabled with a wrong name", () => page.locator("#destroy-go").isDisabled());
  await page.fill("#destroy-name", "default");
  await check("  enabled with the name", () => page.locator("#destroy-go").isEnabled());
  await shot(page, "05-destroy-confirm");
  await page.click("#destroy-go");
  await check("version 1 is destroyed", () => page.locator('#versions tr[data-row="v1"]', { hasText: "destroyed" }).waitFor({ timeout: 5000 }));

  console.log("# the audit log and health");
  await page.click("#nav-audit");
  await page.fill("#audit-keyring", "default");
  await page.selectOption("#audit-outcome", "ok");
  await page.click("#audit-apply");
  await check("the audit log has the rotation with its reason and the token's subject", () =>
    page.locator("#audit tr", { hasText: "browser test" }).filter({ hasText: "console-admin" }).waitFor({ timeout: 5000 }));
  await check("  and the destruction", () => page.locator("#audit tr", { hasText: "destroy" }).first().waitFor({ timeout: 5000 }));
  await check("  filtered: only keyring default, outcome ok", async () => {
    const cells = await page.locator("#audit tbody tr td:nth-child(5)").allTextContents();
    const outcomes = await page.locator("#audit tbody tr td:nth-child(4)").allTextContents();
    return cells.length > 0 && cells.every((c) => c === "default") && outcomes.every((o) => o === "ok");
  });
  await shot(page, "06-audit");
  await page.click("#nav-health");
  await check("the health findings", () => page.locator("#health tbody tr").first().waitFor({ timeout: 5000 }));
  await shot(page, "07-health");
  await check("the token is in no storage and no cookie", async () =>
    (await page.evaluate(() => localStorage.length + sessionStorage.length + document.cookie.length)) === 0);
  await check("  nor in the URL", () => !page.url().includes(adminToken.slice(-20)));

  console.log("# a user-role token");
  await page.click("#signout");
  await page.fill("#token", userToken);
  await page.click("#signin-button");
  await check("signed in read-only", () => page.locator("#who", { hasText: "(read-only)" }).waitFor({ timeout: 5000 }));
  await check("  the keyrings are refused by the database, with the reason", () =>
    page.locator("#view .error", { hasText: "42501" }).waitFor({ timeout: 5000 }));
  await check("  no write control anywhere", async () => (await page.locator("button[data-write]:enabled").count()) === 0);
  await page.goto(`${base}/#/keyring/default`);
  await page.reload();
  await check("  reloading signs out (the token was in memory only)", () => page.locator("#signin-form").waitFor({ timeout: 5000 }));
  await page.fill("#token", userToken);
  await page.click("#signin-button");
  await page.locator("#who", { hasText: "(read-only)" }).waitFor({ timeout: 5000 });
  await check("  the keyring page: refused, no write control enabled", async () => {
    await page.locator("#view .error").waitFor({ timeout: 5000 });
    return (await page.locator("button[data-write]:enabled").count()) === 0;
  });
  await shot(page, "08-user-read-only");
  console.log("# behind a proxy that sends the token in a header (serve --jwt-header)");
  const proxied = await browser.newContext({ extraHTTPHeaders: { "X-Forwarded-Access-Token": adminToken } });
  const pp = await proxied.newPage({ viewport: { width: 1280, height: 900 } });
  await pp.goto(`${base}/`);
  await check("signed in by itself, without the form", () => pp.locator("#who", { hasText: "signed in by the proxy" }).waitFor({ timeout: 5000 }));
  await check("  the keyrings are listed", () => pp.locator('#keyrings tr[data-row="default"]').waitFor({ timeout: 5000 }));
  await check("  no sign-out button (the proxy's business)", () => pp.locator("#signout").isHidden());
  await shot(pp, "09-behind-a-proxy");
  await proxied.close();
  await check("no script error or CSP violation in the page", () => {
    const real = errors.filter((e) => !/Failed to load resource: the server responded with a status of (401|403)/.test(e));
    if (real.length) throw new Error(real.join(" | "));
  });
} finally {
  await browser.close();
}
console.log(`\nconsole (browser): ${fails === 0 ? "all passed" : `${fails} failed`}`);
process.exit(fails === 0 ? 0 : 1);
