// Upload a file with tus-js-client, abort it mid-way at given fractions, and
// resume it each time with a new Upload found through the URL storage.
//
// Usage: node resume_upload.mjs --endpoint URL --file PATH --url-storage PATH
//          --chunk-size BYTES --abort-at 0.3,0.6 --filename NAME --filetype TYPE
//
// Prints {"uploadUrl", "size", "attempts": [...]} where each attempt records
// the URL it resumed, the offset from its HEAD request, the Upload-Offset of
// each PATCH it sent, and, for an aborted attempt, the server's offset after
// the abort, read with a separate HEAD request.

import { createReadStream, statSync } from 'node:fs'
import { FileUrlStorage, Upload } from 'tus-js-client'

import { requireOptions, runMain, settledOffset } from './common.mjs'

const args = requireOptions(['endpoint', 'file', 'url-storage', 'chunk-size', 'abort-at', 'filename', 'filetype'])
const chunkSize = Number(args['chunk-size'])
const abortFractions = args['abort-at'].split(',').map(Number)
const urlStorage = new FileUrlStorage(args['url-storage'])

// Delay between the progress event that triggers an abort and the abort itself.
const ABORT_DELAY_MS = 5

// Run one start of the upload, and abort it once `abortFraction` of the bytes are sent unless that is null.
async function runAttempt(abortFraction) {
  const attempt = {
    previousUploads: 0,
    resumedUrl: null,
    createdUrl: null,
    headOffset: null,
    patchOffsets: [],
    abortedAtBytes: null,
    serverOffsetAfterAbort: null,
    outcome: null,
  }

  let upload
  const finished = new Promise((resolve, reject) => {
    let aborting = false
    upload = new Upload(createReadStream(args.file), {
      endpoint: args.endpoint,
      chunkSize,
      metadata: { filename: args.filename, filetype: args.filetype },
      urlStorage,
      retryDelays: [0, 250, 1000],
      onBeforeRequest(req) {
        if (req.getMethod() === 'PATCH') {
          attempt.patchOffsets.push(Number(req.getHeader('Upload-Offset')))
        }
      },
      onAfterResponse(req, res) {
        if (req.getMethod() === 'HEAD' && attempt.headOffset === null) {
          attempt.headOffset = Number(res.getHeader('Upload-Offset'))
        }
        if (req.getMethod() === 'POST') {
          attempt.createdUrl = res.getHeader('Location') ?? null
        }
      },
      onProgress(bytesSent, bytesTotal) {
        // Abort only on a progress event inside a PATCH body, and a few
        // milliseconds later, so that the server has received part of it.
        const chunkStart = attempt.patchOffsets.at(-1)
        const insideChunk = chunkStart !== undefined && bytesSent > chunkStart && bytesSent < chunkStart + chunkSize
        if (abortFraction === null || aborting || !insideChunk || bytesSent < abortFraction * bytesTotal) {
          return
        }
        aborting = true
        attempt.abortedAtBytes = bytesSent
        setTimeout(() => upload.abort().then(() => resolve('aborted'), reject), ABORT_DELAY_MS)
      },
      onSuccess() {
        resolve('success')
      },
      onError: reject,
    })
  })

  const previous = await upload.findPreviousUploads()
  attempt.previousUploads = previous.length
  if (previous.length > 0) {
    attempt.resumedUrl = previous[0].uploadUrl
    upload.resumeFromPreviousUpload(previous[0])
  }
  upload.start()

  attempt.outcome = await finished
  if (attempt.outcome === 'aborted') {
    attempt.serverOffsetAfterAbort = await settledOffset(upload.url)
  }
  return { attempt, url: upload.url }
}

async function main() {
  const attempts = []
  let uploadUrl = null
  for (const fraction of [...abortFractions, null]) {
    const { attempt, url } = await runAttempt(fraction)
    attempts.push(attempt)
    uploadUrl = url
  }
  return { uploadUrl, size: statSync(args.file).size, attempts }
}

runMain(main)
