// Opens the service's GraphiQL page in headless Chromium, as a newcomer would, and checks that it works
// with no other host reachable: every request stays on the page's own origin, no page or console error,
// the prefilled example runs, a query typed in shows its result, and (given tokens) a subscription
// authenticated from the Headers tab receives an event over /graphql/ws. Saves screenshots:
// target/browser/graphiql.png (the typed query's result), graphiql-example.png, graphiql-subscription.png.
//
//   GRAPHIQL_URL=http://127.0.0.1:8080/graphql node tests/browser/graphiql.mjs
//
// Environment: GRAPHIQL_URL (required; seeded data: user 1 exists), CHROMIUM (default /usr/bin/chromium),
// GRAPHIQL_SCREENSHOT (default target/browser/graphiql.png at the repository root),
// GRAPHIQL_VIEWER_TOKEN and GRAPHIQL_OTHER_TOKEN (tokens of users 1 and 2; without them the subscription
// is not checked). scripts/browser-test.sh starts a seeded server and runs this with all of them.
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const STEP_TIMEOUT_MS = 15_000;
const WHOLE_TEST_TIMEOUT_MS = 60_000;
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const screenshotPath = path.resolve(
  repoRoot,
  process.env.GRAPHIQL_SCREENSHOT || path.join('target', 'browser', 'graphiql.png'),
);
const failureScreenshotPath = screenshotPath.replace(/\.png$/, '') + '-failure.png';
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const log = (message) => console.log(`[graphiql] ${message}`);

function fail(message) {
  console.error(`[graphiql] FAIL: ${message}`);
  process.exit(1);
}

const pageUrl = process.env.GRAPHIQL_URL;
if (!pageUrl) fail('set GRAPHIQL_URL to the page, e.g. http://127.0.0.1:8080/graphql');
const origin = new URL(pageUrl).origin;
const host = new URL(pageUrl).host;

const watchdog = setTimeout(
  () => fail(`the whole test took more than ${WHOLE_TEST_TIMEOUT_MS / 1000} s`),
  WHOLE_TEST_TIMEOUT_MS,
);

/** Asks the API directly what user 1's handle is, so the page's answer can be recognised. */
async function expectedHandle() {
  const response = await fetch(new URL('/graphql', origin), {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ query: '{ user(id: "1") { handle } }' }),
    signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
  });
  const body = await response.json();
  const handle = body?.data?.user?.handle;
  if (!response.ok || typeof handle !== 'string' || handle === '') {
    throw new Error(`POST /graphql for user 1 answered ${response.status} ${JSON.stringify(body)}: is the database seeded?`);
  }
  return handle;
}

/** POSTs a GraphQL operation with a bearer token; returns its data or throws. */
async function graphql(query, token) {
  const response = await fetch(new URL('/graphql', origin), {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query }),
    signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
  });
  const body = await response.json();
  if (!response.ok || body.errors || !body.data) {
    throw new Error(`${query} answered ${response.status} ${JSON.stringify(body)}`);
  }
  return body.data;
}

/** Replaces an editor's text as a user would: click in it, select all, type (insert) the new text. */
async function typeInto(page, selector, text) {
  await page.click(`${selector} .CodeMirror-code`);
  await page.keyboard.press('Control+A');
  await page.keyboard.insertText(text);
  const inEditor = await editorText(page, selector);
  if (inEditor !== text) throw new Error(`${selector} holds ${JSON.stringify(inEditor)}, not what was typed`);
}

/** The text of a GraphiQL editor (CodeMirror 5 keeps its instance on its element). */
function editorText(page, selector) {
  return page.evaluate((selector) => {
    const element = document.querySelector(selector);
    return element && element.CodeMirror ? element.CodeMirror.getValue() : null;
  }, selector);
}

const QUERY_EDITOR = '.graphiql-query-editor .CodeMirror';
const HEADERS_EDITOR = '.graphiql-editor-tool[aria-label="Headers"] .graphiql-editor:not(.hidden) .CodeMirror';
const RESULT = '.result-window .CodeMirror';

/** Clicks the run button, calls `afterClick`, and waits until the result pane holds `expected`; returns the result. */
async function run(page, expected, afterClick = async () => {}) {
  // Clear the previous result first, so the wait below sees only this run's answer.
  await page.evaluate((selector) => document.querySelector(selector)?.CodeMirror?.setValue(''), RESULT);
  await page.click('.graphiql-execute-button');
  await afterClick();
  try {
    await page.waitForFunction(
      ({ selector, expected }) => {
        const text = document.querySelector(selector)?.CodeMirror?.getValue() ?? '';
        return text.includes(expected);
      },
      { selector: RESULT, expected },
      { timeout: STEP_TIMEOUT_MS },
    );
  } catch (error) {
    const shown = await editorText(page, RESULT);
    throw new Error(`the result pane never showed ${JSON.stringify(expected)}; it shows: ${shown}`);
  }
  const result = await editorText(page, RESULT);
  if (result.includes('"errors"')) throw new Error(`the result has errors: ${result}`);
  return result;
}

const problems = [];
let browser;
try {
  const handle = await expectedHandle();
  log(`user 1's handle is ${JSON.stringify(handle)}`);

  browser = await chromium.launch({
    executablePath,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    timeout: STEP_TIMEOUT_MS,
  });
  log(`launched ${executablePath} (Chromium ${browser.version()})`);
  // A new context: empty storage, so GraphiQL shows its default operation, not one saved earlier.
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);

  const requests = [];
  page.on('request', (request) => {
    const url = new URL(request.url());
    requests.push(`${request.method()} ${request.url()}`);
    if (!['data:', 'blob:', 'about:'].includes(url.protocol) && url.host !== host) {
      problems.push(`request to another host: ${request.method()} ${request.url()}`);
    }
  });
  page.on('websocket', (socket) => {
    requests.push(`WS ${socket.url()}`);
    if (new URL(socket.url()).host !== host) problems.push(`websocket to another host: ${socket.url()}`);
  });
  page.on('requestfailed', (request) =>
    problems.push(`request failed: ${request.url()}: ${request.failure()?.errorText}`),
  );
  const responseChecks = [];
  page.on('response', (response) => {
    if (response.status() < 400) return;
    const request = response.request();
    responseChecks.push(
      response
        .text()
        .catch(() => '')
        .then((body) =>
          problems.push(
            `HTTP ${response.status()} for ${request.method()} ${response.url()}` +
              `${request.postData() ? ` (sent ${request.postData().slice(0, 200)})` : ''}: ${body.slice(0, 300)}`,
          ),
        ),
    );
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });

  const response = await page.goto(pageUrl, { waitUntil: 'load' });
  const contentType = response?.headers()['content-type'] ?? '';
  if (response?.status() !== 200 || !contentType.startsWith('text/html')) {
    throw new Error(`GET ${pageUrl} answered ${response?.status()} ${contentType}, not an HTML page`);
  }
  await page.waitForSelector(QUERY_EDITOR, { state: 'visible' });
  await page.waitForSelector('.graphiql-execute-button', { state: 'visible' });
  log('GraphiQL rendered');

  // The schema came through introspection: the documentation explorer lists the three root types.
  await page.click('button[aria-label="Show Documentation Explorer"]');
  await page.waitForFunction(
    () =>
      document.querySelectorAll('.graphiql-doc-explorer-root-type').length >= 3 ||
      document.querySelector('.graphiql-doc-explorer-error'),
  );
  const docsError = await page.$('.graphiql-doc-explorer-error');
  if (docsError) throw new Error(`the documentation explorer says: ${await docsError.innerText()}`);
  const rootTypes = await page.$$eval('.graphiql-doc-explorer-root-type', (nodes) =>
    nodes.map((node) => node.textContent.trim()),
  );
  log(`the schema loaded; root types: ${rootTypes.join(', ')}`);
  await page.click('button[aria-label="Hide Documentation Explorer"]');

  const example = await editorText(page, QUERY_EDITOR);
  if (!example?.includes('query Example') || !example.includes('token --user 1')) {
    throw new Error(`the editor does not hold the example operation: ${example}`);
  }
  const exampleResult = await run(page, '"followerCount"');
  log(`the prefilled example ran: ${exampleResult.replace(/\s+/g, ' ').slice(0, 100)}…`);
  await mkdir(path.dirname(screenshotPath), { recursive: true });
  const exampleShot = screenshotPath.replace(/\.png$/, '') + '-example.png';
  await page.screenshot({ path: exampleShot });
  log(`screenshot: ${path.relative(repoRoot, exampleShot)}`);

  const typed = '{ user(id: "1") { handle } }';
  await typeInto(page, QUERY_EDITOR, typed);
  // GraphiQL takes in an edit 100 ms later (debounced), saving the operation to localStorage then.
  await page.waitForFunction((typed) => localStorage.getItem('graphiql:query') === typed, typed);
  await run(page, `"handle": ${JSON.stringify(handle)}`);
  log(`a typed query ran and shows "handle": ${JSON.stringify(handle)}`);
  await page.screenshot({ path: screenshotPath });
  log(`screenshot: ${path.relative(repoRoot, screenshotPath)}`);

  // A subscription over /graphql/ws, authenticated by the Headers tab as the example's comment says:
  // user 1 subscribes, user 2 follows (or unfollows) user 1 over HTTP, the event shows up in the page.
  const viewerToken = process.env.GRAPHIQL_VIEWER_TOKEN;
  const otherToken = process.env.GRAPHIQL_OTHER_TOKEN;
  if (viewerToken && otherToken) {
    if (!(await page.isVisible(HEADERS_EDITOR))) throw new Error('the Headers tab is not open at start');
    await typeInto(page, HEADERS_EDITOR, JSON.stringify({ Authorization: `Bearer ${viewerToken}` }));
    const subscription = 'subscription Events { followEvents { kind follower { handle } followee { handle } } }';
    await typeInto(page, QUERY_EDITOR, subscription);
    await page.waitForFunction((text) => localStorage.getItem('graphiql:query') === text, subscription);
    let subscribed;
    const subscribeSent = new Promise((resolve) => (subscribed = resolve));
    page.on('websocket', (socket) =>
      socket.on('framesent', (frame) => String(frame.payload).includes('"subscribe"') && subscribed()),
    );
    let kind;
    let follower;
    const result = await run(page, '"followEvents"', async () => {
      await Promise.race([
        subscribeSent,
        new Promise((_, reject) =>
          setTimeout(() => reject(new Error('the page sent no subscribe message over a websocket')), STEP_TIMEOUT_MS),
        ),
      ]);
      const followed = await graphql('mutation { follow(userId: "1") { changed viewer { handle } } }', otherToken);
      follower = followed.follow.viewer.handle;
      kind = 'FOLLOW';
      if (!followed.follow.changed) {
        await graphql('mutation { unfollow(userId: "1") { changed } }', otherToken);
        kind = 'UNFOLLOW';
      }
    });
    if (!result.includes(`"kind": "${kind}"`) || !result.includes(`"handle": ${JSON.stringify(follower)}`)) {
      throw new Error(`the subscription's result is not the ${kind} by ${follower}: ${result}`);
    }
    log(`a subscription over ${origin.replace(/^http/, 'ws')}/graphql/ws showed the ${kind} event by ${follower}`);
    const subscriptionShot = screenshotPath.replace(/\.png$/, '') + '-subscription.png';
    await page.screenshot({ path: subscriptionShot });
    log(`screenshot: ${path.relative(repoRoot, subscriptionShot)}`);
  } else {
    log('no GRAPHIQL_VIEWER_TOKEN and GRAPHIQL_OTHER_TOKEN: subscription not checked');
  }

  await Promise.all(responseChecks);
  if (problems.length > 0) {
    throw new Error(`the page misbehaved:\n  ${problems.join('\n  ')}\nrequests:\n  ${requests.join('\n  ')}`);
  }
  log(`${requests.length} requests, all to ${origin}`);
} catch (error) {
  if (browser) {
    const [page] = browser.contexts().flatMap((context) => context.pages());
    if (page) {
      await mkdir(path.dirname(failureScreenshotPath), { recursive: true });
      await page.screenshot({ path: failureScreenshotPath }).catch(() => {});
      console.error(`[graphiql] screenshot of the failure: ${path.relative(repoRoot, failureScreenshotPath)}`);
    }
  }
  for (const problem of problems) console.error(`[graphiql] also: ${problem}`);
  await browser?.close().catch(() => {});
  fail(error instanceof Error ? error.message : String(error));
}
await browser.close();
clearTimeout(watchdog);
log('1 passed, 0 failed');
