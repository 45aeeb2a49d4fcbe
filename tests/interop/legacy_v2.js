'use strict';
// Drives the real socket.io-client 2.x (Engine.IO v3, Socket.IO protocol v4)
// through one scripted session against a server with allowEIO3, for
// tests/test_sio_legacy.py.  Usage: node legacy_v2.js URL TRANSPORTS
// (TRANSPORTS: "default", "websocket" or "polling").  Prints one JSON line
// per step, then {"step":"done"}; any failure prints {"step":"error"}.
//
// The server is expected to answer "echo" with its arguments as the ack,
// to emit "echoed" with them to the sender, to register "/custom" (whose
// connect handler emits "welcome" with the namespace) and not "/nope".

const io = require('socket.io-client-v2');
const version = require('socket.io-client-v2/package.json').version;

const [url, mode] = process.argv.slice(2);
const opts = { forceNew: true, reconnection: false };
if (mode === 'websocket') opts.transports = ['websocket'];
if (mode === 'polling') opts.transports = ['polling'];

function report(step, extra) {
  process.stdout.write(JSON.stringify(Object.assign({ step }, extra || {})) + '\n');
}

function fail(err) {
  report('error', { message: String(err && err.stack ? err.stack : err) });
  process.exit(1);
}

process.on('uncaughtException', fail);
setTimeout(() => fail('timed out'), 15000).unref();

function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));
}

function ack(socket, ...args) {
  return new Promise((resolve) => socket.emit(...args, (...reply) => resolve(reply)));
}

async function main() {
  report('version', { version });
  const socket = io(url, opts);
  await once(socket, 'connect');
  report('connect', { transport: socket.io.engine.transport.name });

  const echoed = once(socket, 'echoed');
  const reply = await ack(socket, 'echo', 'hello', { a: [1, 'é😀'] });
  report('ack', { args: reply, echoed: await echoed });

  const binary = await ack(socket, 'echo', Buffer.from([0, 1, 2, 255]), 'tail');
  report('binaryAck', {
    isBuffer: Buffer.isBuffer(binary[0]),
    bytes: Array.from(binary[0]),
    tail: binary[1],
  });

  const custom = io(url + '/custom', Object.assign({}, opts, { forceNew: false, query: { x: '1' } }));
  const [welcome] = await once(custom, 'welcome');
  report('custom', { welcome });

  const nope = io(url + '/nope', Object.assign({}, opts, { forceNew: false }));
  const [error] = await once(nope, 'error');
  report('nope', { error });

  // Outlive several heartbeats (the client pings every pingInterval).
  const disconnected = [];
  socket.on('disconnect', (reason) => disconnected.push(reason));
  await new Promise((resolve) => setTimeout(resolve, 1200));
  const late = await ack(socket, 'echo', 'still');
  report('heartbeat', { disconnected, late, transport: socket.io.engine.transport.name });

  socket.close();
  report('done');
  process.exit(0);
}

main().catch(fail);
