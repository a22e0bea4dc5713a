// Upload a file as a stream of unknown size with tus-js-client's
// uploadLengthDeferred option: the upload is created with
// Upload-Defer-Length: 1 and the last PATCH declares Upload-Length.
//
// Usage: node deferred_upload.mjs --endpoint URL --file PATH --chunk-size BYTES
//          --filename NAME --filetype TYPE
//
// Prints {"uploadUrl", "deferLengthOnCreate", "declaredLength"}: the upload's
// URL, the Upload-Defer-Length header of the creation request, and the
// Upload-Length header sent on a PATCH.

import { createReadStream } from 'node:fs'
import { PassThrough } from 'node:stream'
import { Upload } from 'tus-js-client'

import { requireOptions, runMain } from './common.mjs'

const args = requireOptions(['endpoint', 'file', 'chunk-size', 'filename', 'filetype'])

async function main() {
  let deferLengthOnCreate = null
  let declaredLength = null

  // A PassThrough hides the file path, so tus-js-client reads a plain stream
  // and cannot learn the size up front.
  const stream = createReadStream(args.file).pipe(new PassThrough())
  let upload
  await new Promise((resolve, reject) => {
    upload = new Upload(stream, {
      endpoint: args.endpoint,
      chunkSize: Number(args['chunk-size']),
      uploadLengthDeferred: true,
      metadata: { filename: args.filename, filetype: args.filetype },
      retryDelays: [0, 250, 1000],
      onBeforeRequest(req) {
        if (req.getMethod() === 'POST') {
          deferLengthOnCreate = req.getHeader('Upload-Defer-Length') ?? null
        }
        if (req.getMethod() === 'PATCH' && req.getHeader('Upload-Length') !== undefined) {
          declaredLength = Number(req.getHeader('Upload-Length'))
        }
      },
      onSuccess() {
        resolve()
      },
      onError: reject,
    })
    upload.start()
  })

  return { uploadUrl: upload.url, deferLengthOnCreate, declaredLength }
}

runMain(main)
