// Subscribes to a Cooper node's GraphQL `changes` subscription with a real client and prints
// one JSON line per event on stdout, until it has seen N changes; then it exits 0.
//
//   node subscribe.mjs <http-url> <modern|legacy> <barrel> <N> [token]
//
// modern: the `graphql-ws` package (subprotocol graphql-transport-ws).
// legacy: the `subscriptions-transport-ws` package (Apollo's legacy subprotocol graphql-ws).
// With a token, it is sent in the connection_init payload as {"token": "..."}.
//
// Exit codes: 0 after N changes; 2 when the server answers with errors or closes the
// connection; 3 on a LAGGED event; 4 after a generous hang guard; 64 on bad arguments.
// Every failure writes one line starting with "error:" on stderr; once connected, the
// subprotocol the server agreed to is written on stderr as "protocol: <name>".

import WebSocket from 'ws';
import { createClient } from 'graphql-ws';
import subscriptionsTransportWs from 'subscriptions-transport-ws';

const { SubscriptionClient } = subscriptionsTransportWs;

const HANG_GUARD_MS = 60_000;

const [httpUrl, protocol, barrel, nArg, token] = process.argv.slice(2);
const n = Number.parseInt(nArg, 10);
if (!httpUrl || !['modern', 'legacy'].includes(protocol) || !barrel || !(n > 0)) {
  console.error('error: usage: node subscribe.mjs <http-url> <modern|legacy> <barrel> <N> [token]');
  process.exit(64);
}

const wsUrl = `${httpUrl.replace(/^http/, 'ws').replace(/\/$/, '')}/graphql/ws`;
const query = `subscription ($barrel: String!) {
  changes(barrel: $barrel, since: "0", includeDocs: true) { kind seq docId rev doc }
}`;
const variables = { barrel };
const connectionParams = token === undefined ? {} : { token };

let seen = 0;
let finished = false;
let cleanup = () => {};

function fail(code, message) {
  if (finished) return;
  finished = true;
  console.error(`error: ${message}`);
  cleanup();
  process.exit(code);
}

const guard = setTimeout(
  () => fail(4, `only ${seen} of ${n} changes after ${HANG_GUARD_MS} ms`),
  HANG_GUARD_MS,
);

function onResult(result) {
  if (finished) return;
  if (result.errors && result.errors.length > 0) {
    fail(2, `the server answered with errors: ${JSON.stringify(result.errors)}`);
  }
  const change = result.data && result.data.changes;
  if (!change) {
    fail(2, `a result without data.changes: ${JSON.stringify(result)}`);
  }
  console.log(JSON.stringify(change));
  if (change.kind === 'LAGGED') {
    fail(3, `lagged; resume from ${change.seq}`);
  }
  seen += 1;
  if (seen >= n) {
    finished = true;
    clearTimeout(guard);
    cleanup();
    // Let stdout drain before exiting.
    process.stdout.write('', () => process.exit(0));
  }
}

function describe(err) {
  if (err === undefined || err === null) return String(err);
  // A CloseEvent (graphql-ws), an Error, an array of GraphQL errors or a plain object.
  if (typeof err.code === 'number' && 'reason' in err) {
    return `connection closed with code ${err.code}: ${err.reason}`;
  }
  if (typeof err.message === 'string' && err.message !== '') return err.message;
  return JSON.stringify(err);
}

if (protocol === 'modern') {
  const client = createClient({
    url: wsUrl,
    webSocketImpl: WebSocket,
    connectionParams,
    lazy: false,
    retryAttempts: 0,
    onNonLazyError: (err) => fail(2, describe(err)),
    on: {
      connected: (socket) => console.error(`protocol: ${socket.protocol}`),
    },
  });
  cleanup = () => client.dispose();
  client.subscribe(
    { query, variables },
    {
      next: onResult,
      error: (err) => fail(2, describe(err)),
      complete: () => fail(2, `the subscription completed after ${seen} of ${n} changes`),
    },
  );
} else {
  const client = new SubscriptionClient(
    wsUrl,
    {
      connectionParams,
      reconnect: false,
      lazy: false,
      connectionCallback: (err) => {
        if (err) fail(2, `connection refused: ${describe(err)}`);
      },
    },
    WebSocket,
  );
  cleanup = () => client.close(true);
  client.onConnected(() => console.error(`protocol: ${client.client.protocol}`));
  client.onDisconnected(() => fail(2, `disconnected after ${seen} of ${n} changes`));
  client.request({ query, variables }).subscribe({
    next: onResult,
    error: (err) => fail(2, describe(err)),
    complete: () => fail(2, `the subscription completed after ${seen} of ${n} changes`),
  });
}
