'use strict';
// A CRM back end publishing to crm_im through Redis with the official
// @socket.io/redis-emitter (tests/support/cluster.py, runEmitter).
//
// Usage: node emit.js '{"url": "redis://...", "prefix": "socket.io",
//                       "emits": [{"to": ["user:42"], "except": [], "event": "crm:notify", "args": [...]}]}'
// Publishes every emit in order on one Redis connection, prints one JSON
// line per PUBLISH ({channel, receivers}: how many subscribers Redis handed
// it to), and exits 0 once every PUBLISH was answered (non-zero on error).

const Redis = require('ioredis');
const { Emitter } = require('@socket.io/redis-emitter');

async function main() {
  const spec = JSON.parse(process.argv[2]);
  const redis = new Redis(spec.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  const replies = [];
  const publish = redis.publish.bind(redis);
  // The emitter does not wait for its PUBLISH; keep the replies to report them.
  redis.publish = (channel, message) => {
    const reply = publish(channel, message).then((receivers) => ({ channel: String(channel), receivers }));
    replies.push(reply);
    return reply;
  };
  const emitter = new Emitter(redis, { key: spec.prefix });
  for (const emit of spec.emits) {
    let operator = emitter;
    if (emit.to && emit.to.length) operator = operator.to(emit.to);
    if (emit.except && emit.except.length) operator = operator.except(emit.except);
    operator.emit(emit.event, ...(emit.args || []));
  }
  for (const result of await Promise.all(replies)) {
    process.stdout.write(JSON.stringify(result) + '\n');
  }
  await redis.quit();
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + '\n');
  process.exit(1);
});
