'use strict';
// The client side of bench/churn.py (and tests/integration/test_churn.py):
// connect -> user:login -> one message -> disconnect, many times over, with
// real socket.io-client 4.8 sockets (the copy in tests/interop/node_modules).
//
//   node bench/churn.js --url http://127.0.0.1:8080 --cycles 10000 \
//        --concurrency 100 --prefix churn1 [--abrupt-every 2] [--size 120] [--transport polling]
//
// Every cycle is a user of its own (PREFIX-N), so whatever the server keeps
// per user must go when the user goes. Its message goes to PREFIX-sink, a
// socket kept logged in for the whole run, which counts what it receives.
// Every --abrupt-every'th cycle cuts its TCP connection instead of
// disconnecting (the server sees "transport close" and holds the socket for
// connection state recovery: the recovery window must clean it up); the
// others disconnect cleanly ("client namespace disconnect": nothing held).
//
// Prints one JSON line at the end: cycles done, failures (with the first
// few reasons), elapsed seconds, cycle latency percentiles (ms, connect to
// the message's receipt), messages the sink received.

const path = require('path');
const { io } = require(path.join(__dirname, '..', 'tests', 'interop', 'node_modules', 'socket.io-client'));

function parseArgs(argv) {
  const args = { url: 'http://127.0.0.1:8080', cycles: 1000, concurrency: 50, prefix: 'churn', abruptEvery: 2, size: 120, timeoutMs: 20000, transport: 'websocket' };
  for (let i = 2; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(name in args)) throw new Error(`unknown option ${argv[i]}`);
    args[name] = typeof args[name] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  return args;
}

const args = parseArgs(process.argv);
// --transport polling: long-polling only (no upgrade); its cycles all
// disconnect cleanly (there is no TCP connection of its own to cut).
const options = { transports: [args.transport], forceNew: true, reconnection: false, timeout: args.timeoutMs };
if (args.transport !== 'websocket') args.abruptEvery = 0;
const content = 'x'.repeat(args.size);

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function withTimeout(promise, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: timed out`)), args.timeoutMs); }),
  ]).finally(() => clearTimeout(timer));
}

function connect() {
  const socket = io(args.url, options);
  return withTimeout(new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (error) => { socket.close(); reject(new Error(`connect_error: ${error.message}`)); });
  }), 'connect').catch((error) => { socket.close(); throw error; });
}

function call(socket, event, payload) {
  return withTimeout(socket.emitWithAck(event, payload), event).then((answer) => {
    if (answer && answer.error) throw new Error(`${event}: ${answer.error.code} ${answer.error.message}`);
    return answer;
  });
}

function cut(socket) {
  // The TCP connection under the WebSocket, destroyed: no CLOSE, no
  // WebSocket close frame; the server sees the connection lost.
  const ws = socket.io.engine && socket.io.engine.transport && socket.io.engine.transport.ws;
  const raw = ws && ws._socket;
  return new Promise((resolve) => {
    socket.once('disconnect', () => resolve());
    if (raw) raw.destroy(); else socket.disconnect();
  });
}

async function cycle(n, sinkId) {
  const started = process.hrtime.bigint();
  const socket = await connect();
  try {
    const id = `${args.prefix}-${n}`;
    await call(socket, 'user:login', { id, name: id });
    const receipt = await call(socket, 'message', { id: `m${n}`, toId: sinkId, content, type: 'text' });
    if (receipt.status !== 'delivered') throw new Error(`receipt status ${receipt.status}`);
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (args.abruptEvery > 0 && n % args.abruptEvery === 0) await cut(socket);
    else socket.disconnect();
    return ms;
  } catch (error) {
    socket.disconnect();
    throw error;
  }
}

async function main() {
  const sinkId = `${args.prefix}-sink`;
  const sink = await connect();
  await call(sink, 'user:login', { id: sinkId, name: sinkId });
  let received = 0;
  sink.on('message', () => { received += 1; });
  const latencies = [];
  const failures = [];
  let next = 0;
  const started = Date.now();
  async function worker() {
    while (next < args.cycles) {
      const n = next++;
      try {
        latencies.push(await cycle(n, sinkId));
      } catch (error) {
        failures.push(String(error.message || error));
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(args.concurrency, args.cycles) }, worker));
  const elapsed = (Date.now() - started) / 1000;
  // Every receipt said delivered: wait until the sink has them all.
  const deadline = Date.now() + args.timeoutMs;
  while (received < latencies.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  sink.disconnect();
  if (args.transport !== 'websocket') {
    // Over long-polling a disconnect ends with a POST of the CLOSE packet:
    // give the last ones time to leave before the process exits (a client
    // that vanishes is only noticed by the heartbeat, 45 s later).
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  latencies.sort((a, b) => a - b);
  process.stdout.write(JSON.stringify({
    cycles: args.cycles,
    ok: latencies.length,
    failures: failures.length,
    firstFailures: failures.slice(0, 5),
    elapsed,
    cyclesPerSecond: latencies.length / elapsed,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    max: latencies.length ? latencies[latencies.length - 1] : null,
    sinkReceived: received,
  }) + '\n');
}

main().then(() => process.exit(0), (error) => { process.stderr.write(`${error.stack || error}\n`); process.exit(1); });
