// Serve a directory as a tus 1.0 upload endpoint at /files/ with @tus/server
// and @tus/file-store, for the benchmark in run.py.
//
// Usage: node tus_node_server.js --dir DIR --port PORT [--host 127.0.0.1]
//
// Upload bytes and their JSON info files go straight into DIR. The server
// prints "listening" on standard output once it accepts connections.

import { parseArgs } from "node:util";
import { Server } from "@tus/server";
import { FileStore } from "@tus/file-store";

const { values } = parseArgs({
  options: {
    dir: { type: "string" },
    port: { type: "string" },
    host: { type: "string", default: "127.0.0.1" },
  },
});

if (!values.dir || !values.port) {
  console.error("missing option: run as node tus_node_server.js --dir DIR --port PORT");
  process.exit(2);
}
const port = Number(values.port);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`invalid --port ${values.port}: expected an integer from 1 to 65535`);
  process.exit(2);
}

const server = new Server({
  path: "/files",
  datastore: new FileStore({ directory: values.dir }),
  // The same limit as the benchmark gives boothsync: 64 GiB.
  maxSize: 64 * 1024 ** 3,
  relativeLocation: true,
});

const httpServer = server.listen({ host: values.host, port }, () => {
  console.log(`listening on http://${values.host}:${port}/files/ dir=${values.dir}`);
});

function stop(signal) {
  console.log(`stopping on ${signal}`);
  httpServer.close(() => process.exit(0));
  // close() waits for open keep-alive connections, so they are closed now,
  // and the process exits after 2 s even if a request is still running.
  httpServer.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}

process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));
