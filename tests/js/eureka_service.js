// A Node.js service that joins Essaim through eureka-js-client (npm, not ours), unchanged.
//
//   NODE_PATH=<where eureka-js-client is installed> node eureka_service.js EUREKA_URL APP PORT
//
// Serves every path with {"from": "node", "app", "path"} on 127.0.0.1:PORT, registers
// with the Eureka API at EUREKA_URL (e.g. http://user:TOKEN@127.0.0.1:8761/eureka/apps/)
// with a 3 s lease renewed every second, prints "registered" once registered, and on
// SIGTERM deregisters, prints "stopped" and exits 0.
'use strict';
const http = require('http');
const { Eureka } = require('eureka-js-client');

const [url, app, portText] = process.argv.slice(2);
const port = Number(portText);
const quiet = { debug() {}, info() {}, warn() {}, error(...args) { console.error(...args); } };

const server = http.createServer((req, res) => {
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify({ from: 'node', app, path: req.url }));
});

server.listen(port, '127.0.0.1', () => {
  const client = new Eureka({
    logger: quiet,
    instance: {
      app: app.toUpperCase(),
      instanceId: `127.0.0.1:${app}:${port}`,
      hostName: '127.0.0.1',
      ipAddr: '127.0.0.1',
      port: { $: port, '@enabled': true },
      vipAddress: app,
      statusPageUrl: `http://127.0.0.1:${port}/info`,
      dataCenterInfo: {
        '@class': 'com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo',
        name: 'MyOwn',
      },
      leaseInfo: { renewalIntervalInSecs: 1, durationInSecs: 3 },
      metadata: { language: 'javascript' },
    },
    eureka: {
      serviceUrls: { default: [url] },
      heartbeatInterval: 1000,
      registryFetchInterval: 1000,
      maxRetries: 0,
    },
  });
  client.start((err) => {
    if (err) {
      console.log(`error ${err.message}`);
      process.exit(1);
    }
    const seen = Object.keys(client.cache.app).sort().join(',');
    console.log(`registered; sees ${seen}`);
  });
  process.on('SIGTERM', () => {
    client.stop(() => {
      console.log('stopped');
      server.close(() => process.exit(0));
    });
  });
});
