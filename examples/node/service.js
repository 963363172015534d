// A Node.js service in an Essaim system, on the registry's and configsvc's plain HTTP APIs.
//
// Nothing but Node's standard library (node 18 or later). It:
//   - serves GET /hello (and /health) on HOST:PORT;
//   - registers with the registry, heartbeats every TTL/3 seconds, registers again when a
//     heartbeat answers 404 (the registry forgot it: expired, or Redis was emptied), and
//     deregisters on SIGTERM or Ctrl-C before it exits;
//   - follows its config (app SERVICE, profile PROFILE) by polling configsvc with
//     If-None-Match: an unchanged config costs a 304, a change is applied at once.
//
// Settings (environment): REGISTRY_URL (http://127.0.0.1:8761), REGISTRY_TOKEN,
// CONFIGSVC_URL (http://127.0.0.1:8888), CONFIGSVC_TOKEN, SERVICE (hello-node),
// PROFILE (default), HOST (127.0.0.1), PORT (0: any free port), TTL (10), CONFIG_POLL (2 s).
// docs/other-languages.md describes the API it uses.
'use strict';
const http = require('http');
const os = require('os');

const env = process.env;
const REGISTRY = env.REGISTRY_URL || 'http://127.0.0.1:8761';
const CONFIGSVC = env.CONFIGSVC_URL || 'http://127.0.0.1:8888';
const SERVICE = env.SERVICE || 'hello-node';
const PROFILE = env.PROFILE || 'default';
const HOST = env.HOST || '127.0.0.1';
const TTL = Number(env.TTL || 10);
const POLL = Number(env.CONFIG_POLL || 2) * 1000;
const ID = env.INSTANCE_ID || `${SERVICE}-${os.hostname()}-${process.pid}`;
const INSTANCE = `${REGISTRY}/v1/services/${SERVICE}/instances/${encodeURIComponent(ID)}`;

let config = {};
let port = Number(env.PORT || 0);

function log(...args) {
  console.log(`${SERVICE} |`, ...args);
}

// One HTTP request with Node's http module: resolves {status, headers, body}.
function call(method, url, { json, token, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const body = json === undefined ? null : Buffer.from(JSON.stringify(json));
    const all = { ...headers };
    if (body) all['Content-Type'] = 'application/json';
    if (token) all.Authorization = `Bearer ${token}`;
    const req = http.request(url, { method, headers: all, timeout: 3000 }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers,
                                    body: Buffer.concat(chunks).toString() }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url}: timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}

async function register() {
  const res = await call('PUT', INSTANCE, {
    token: env.REGISTRY_TOKEN,
    json: { host: HOST, port, ttl: TTL, metadata: { language: 'javascript' } },
  });
  if (res.status !== 200 && res.status !== 201) {
    throw new Error(`registration refused: ${res.status} ${res.body}`);
  }
}

async function heartbeat() {
  try {
    const res = await call('PUT', `${INSTANCE}/heartbeat`, { token: env.REGISTRY_TOKEN });
    if (res.status === 404) {
      // The registry doesn't know us (expired, or its Redis was emptied): register again.
      await register();
      log('registered again after a 404 heartbeat');
    } else if (res.status !== 204) {
      log(`heartbeat answered ${res.status}: ${res.body}`);
    }
  } catch (err) {
    log(`heartbeat failed (${err.message}); next one in ${TTL / 3} s`);
  }
}

let etag = null;
let configWarned = false;
async function pollConfig() {
  try {
    const res = await call('GET', `${CONFIGSVC}/v1/config/${SERVICE}/${PROFILE}`, {
      token: env.CONFIGSVC_TOKEN,
      headers: etag ? { 'If-None-Match': etag } : {},
    });
    if (res.status === 200) {
      const doc = JSON.parse(res.body);
      config = doc.config;
      etag = res.headers.etag;
      log(`config version ${doc.version} applied`);
    } else if (res.status !== 304) {
      log(`configsvc answered ${res.status}: ${res.body}`);
    }
    configWarned = false;
  } catch (err) {
    if (!configWarned) log(`configsvc unreachable (${err.message}): keeping the last config`);
    configWarned = true;
  }
}

const server = http.createServer((req, res) => {
  const send = (status, doc) => {
    res.writeHead(status, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(doc));
  };
  if (req.url === '/health') return send(200, { status: 'UP' });
  if (req.method === 'GET' && req.url.split('?')[0] === '/hello') {
    const greeting = (config.hello && config.hello.greeting) || 'hello';
    return send(200, { service: SERVICE, instance: ID, language: 'javascript', greeting });
  }
  return send(404, { type: 'about:blank', title: 'Not Found', status: 404 });
});

async function main() {
  await new Promise((resolve) => server.listen(port, HOST, resolve));
  port = server.address().port;
  await pollConfig();
  for (;;) {
    try {
      await register();
      break;
    } catch (err) {
      log(`registry not ready (${err.message}); retrying in 1 s`);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  log(`registered ${SERVICE}/${ID} at http://${HOST}:${port}, heartbeat every ${TTL / 3} s`);
  const beats = setInterval(heartbeat, (TTL * 1000) / 3);
  const polls = setInterval(pollConfig, POLL);

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    clearInterval(beats);
    clearInterval(polls);
    try {
      await call('DELETE', INSTANCE, { token: env.REGISTRY_TOKEN });
      log('deregistered');
    } catch (err) {
      log(`could not deregister (${err.message}): the registry drops us after ${TTL} s`);
    }
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  console.error(`${SERVICE} | ${err.stack || err}`);
  process.exit(1);
});
