// Run @tus/server with @tus/file-store on 127.0.0.1, as an upstream for the
// agent in tests/test_agent_upstreams.py.
//
// Usage: node tus_node_server.js --port PORT --dir DIR
//
// The tus endpoint is /files/. FileStore keeps each upload in DIR as a file
// named by its upload id, next to a JSON file with its metadata and offset.
// The server stops on SIGTERM or SIGINT.

import { FileStore } from '@tus/file-store'
import { Server } from '@tus/server'

import { requireOptions } from './common.mjs'

const HOST = '127.0.0.1'
// Connections still open on SIGTERM (an agent keeps its connection alive)
// get this long before the process exits anyway.
const STOP_GRACE_MS = 2000

const { port: portText, dir } = requireOptions(['port', 'dir'])
const port = Number(portText)
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  console.error(`invalid --port ${portText}: expected an integer from 1 to 65535`)
  process.exit(2)
}

const tus = new Server({ path: '/files', datastore: new FileStore({ directory: dir }) })
const httpServer = tus.listen({ host: HOST, port }, () => {
  console.log(`@tus/server listening on http://${HOST}:${port}/files/, storing into ${dir}`)
})

function stop(signal) {
  console.log(`@tus/server stopping on ${signal}`)
  httpServer.close(() => process.exit(0))
  httpServer.closeAllConnections()
  setTimeout(() => process.exit(0), STOP_GRACE_MS).unref()
}

process.on('SIGTERM', () => stop('SIGTERM'))
process.on('SIGINT', () => stop('SIGINT'))
