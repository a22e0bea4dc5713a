// Helpers shared by the tus-js-client scripts that tests/test_interop.py runs.
//
// Each script prints one JSON object on stdout as its last line: the report
// on success, or {"error": ...} with exit code 1 on failure.

import { parseArgs } from 'node:util'

const TUS_VERSION = '1.0.0'

// Parse --name value options. Every name in `names` is required.
export function requireOptions(names) {
  const options = Object.fromEntries(names.map((name) => [name, { type: 'string' }]))
  const { values } = parseArgs({ options, strict: true })
  for (const name of names) {
    if (values[name] === undefined) {
      throw new Error(`missing option --${name}`)
    }
  }
  return values
}

// Convert an upload error (often a DetailedError with the HTTP exchange) into plain JSON.
export function describeError(error) {
  const response = error.originalResponse ?? null
  const request = error.originalRequest ?? null
  return {
    message: String(error.message ?? error),
    method: request ? request.getMethod() : null,
    url: request ? request.getURL() : null,
    status: response ? response.getStatus() : null,
    body: response ? response.getBody() : null,
  }
}

export function printReport(report) {
  process.stdout.write(`${JSON.stringify(report)}\n`)
}

// Run `main` and print its report, or print the error and set exit code 1.
//
// Node.js exits with code 0 when nothing is left to wait for, even if `main`
// never settled (a client that stalls without a timer or request pending),
// so that case is reported as an error too.
export function runMain(main) {
  let settled = false
  process.on('exit', () => {
    if (!settled) {
      printReport({ error: { message: 'the upload stalled: Node.js ran out of work before it finished' } })
      process.exitCode = 1
    }
  })
  main().then(
    (report) => {
      settled = true
      printReport(report)
    },
    (error) => {
      settled = true
      printReport({ error: describeError(error) })
      process.exitCode = 1
    },
  )
}

// Send HEAD to an upload URL and return its Upload-Offset, or throw on a non-200 status.
export async function headOffset(url) {
  const response = await fetch(url, { method: 'HEAD', headers: { 'Tus-Resumable': TUS_VERSION } })
  if (response.status !== 200) {
    throw new Error(`HEAD ${url} returned ${response.status}`)
  }
  return Number(response.headers.get('Upload-Offset'))
}

// Return the upload's offset once two HEAD requests 100 ms apart agree.
//
// After a client aborts a PATCH the server may still be writing the bytes
// it had received, so a single HEAD could be taken mid-write.
export async function settledOffset(url, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs
  let previous = await headOffset(url)
  while (Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    const current = await headOffset(url)
    if (current === previous) {
      return current
    }
    previous = current
  }
  throw new Error(`the offset of ${url} was still changing after ${timeoutMs} ms`)
}
