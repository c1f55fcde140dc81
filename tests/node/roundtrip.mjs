// MQTT.js against a running rookery over ws:// or wss://: two clients, one subscribes,
// the other publishes (QoS 1, and a message for a TCP client the caller watches), and
// the subscriber must receive its message. Exits 0 on success, 1 otherwise.
//
//   node roundtrip.mjs --url ws://127.0.0.1:PORT/mqtt [--ca ca.pem] [--version 4|5]
//                      [--to-tcp TOPIC]

import fs from 'node:fs';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';

const { values } = parseArgs({
  options: {
    url: { type: 'string' },
    ca: { type: 'string' },
    version: { type: 'string', default: '4' },
    'to-tcp': { type: 'string' },
  },
});
if (!values.url) {
  console.error('--url is required');
  process.exit(2);
}

const tag = `${process.pid}-${Date.now()}`;
const topic = `mqttjs/${tag}/greeting`;
const options = {
  protocolVersion: Number(values.version),
  reconnectPeriod: 0, // a failure is a failure, not a retry
  connectTimeout: 5000,
  ...(values.ca ? { ca: fs.readFileSync(values.ca), rejectUnauthorized: true } : {}),
};

function connect(clientId) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(values.url, { ...options, clientId });
    client.once('connect', () => resolve(client));
    client.once('error', reject);
    client.once('close', () => reject(new Error(`${clientId}: closed before CONNACK`)));
  });
}

const timer = setTimeout(() => {
  console.error('timed out');
  process.exit(1);
}, 10000);

try {
  const subscriber = await connect(`sub-${tag}`);
  const publisher = await connect(`pub-${tag}`);
  const received = new Promise((resolve) => {
    subscriber.on('message', (t, payload) => resolve([t, payload.toString()]));
  });
  await subscriber.subscribeAsync(topic, { qos: 1 });
  await publisher.publishAsync(topic, 'hello from mqtt.js', { qos: 1 });
  const [gotTopic, gotPayload] = await received;
  if (gotTopic !== topic || gotPayload !== 'hello from mqtt.js') {
    throw new Error(`unexpected message ${gotTopic}: ${gotPayload}`);
  }
  if (values['to-tcp']) {
    await publisher.publishAsync(values['to-tcp'], `over ${new URL(values.url).protocol}`, { qos: 1 });
  }
  await Promise.all([subscriber.endAsync(), publisher.endAsync()]);
  clearTimeout(timer);
  console.log(`ok: ${values.url} MQTT v${options.protocolVersion}`);
  process.exit(0);
} catch (error) {
  console.error(`failed: ${error.message ?? error}`);
  process.exit(1);
}
