// A Node.js service in an Essaim system, on the registry's and configsvc's plain HTTP APIs.
//
// Nothing but Node's standard library (node 18 or later). It:
//   - serves GET /hello (and /health) on HOST:PORT;
//   - registers with the registry, heartbeats every TTL/3 seconds, registers again when a
//     heartbeat answers 404 (the registry forgot it: expired, or Redis was emptied), and
//     deregisters on SIGTERM or Ctrl-C before it exits;
//   - follows its config (app SERVICE, profile PROFILE): it reads it at start, then
//     listens to configsvc's change stream (GET /v1/events, Server-Sent Events) and reads
//     it again (If-None-Match: a 304 when nothing it uses changed) on a change to one of
//     its documents, on a resync, after a reconnect, and every CONFIG_RESYNC seconds.
//
// Settings (environment): REGISTRY_URL (http://127.0.0.1:8761), REGISTRY_TOKEN,
// CONFIGSVC_URL (http://127.0.0.1:8888), CONFIGSVC_TOKEN, SERVICE (hello-node),
// PROFILE (default), HOST (127.0.0.1), PORT (0: any free port), TTL (10),
// CONFIG_RESYNC (30 s).
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
const RESYNC = Number(env.CONFIG_RESYNC || 30) * 1000;
const DOCUMENTS = new Set(['application', SERVICE, `${SERVICE}-${PROFILE}`]);
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
async function readConfig() {
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

// configsvc's change stream: {rev, document, version} per change, or a resync.
let lastEventId = null;
let stream = null;
function followChanges() {
  const headers = { Accept: 'text/event-stream' };
  if (lastEventId !== null) headers['Last-Event-ID'] = lastEventId;
  const req = http.request(`${CONFIGSVC}/v1/events`, { headers }, (res) => {
    if (res.statusCode !== 200) {
      res.resume();
      return reconnect(`answered ${res.statusCode}`);
    }
    readConfig(); // whatever changed while no stream was open
    let buffer = '';
    res.setEncoding('utf8');
    res.on('data', (chunk) => {
      buffer += chunk.replace(/\r\n/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        onEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    });
    res.on('end', () => reconnect('ended'));
    res.on('error', (err) => reconnect(err.message));
  });
  req.on('error', (err) => reconnect(err.message));
  req.end();
  stream = req;
}

function onEvent(text) {
  let type = 'message';
  let data = '';
  for (const line of text.split('\n')) {
    if (line.startsWith('id:')) lastEventId = line.slice(3).trim();
    else if (line.startsWith('event:')) type = line.slice(6).trim();
    else if (line.startsWith('data:')) data += line.slice(5).trim();
  }
  if (type === 'resync') return readConfig();
  if (type === 'change' && DOCUMENTS.has(JSON.parse(data).document)) return readConfig();
  return undefined;
}

let reconnecting = null;
function reconnect(why) {
  if (stopping || reconnecting) return;
  log(`config stream ${why}; reconnecting in 1 s`);
  reconnecting = setTimeout(() => {
    reconnecting = null;
    followChanges();
  }, 1000);
}

let stopping = false;

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
  await readConfig();
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
  followChanges();
  const resyncs = setInterval(readConfig, RESYNC);

  const stop = async () => {
    if (stopping) return;
    stopping = true;
    clearInterval(beats);
    clearInterval(resyncs);
    clearTimeout(reconnecting);
    if (stream) stream.destroy();
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
