// Upload a file with tus-js-client's parallelUploads option, which sends the
// parts as partial uploads (Upload-Concat: partial) and then creates a final
// upload (Upload-Concat: final;<part URLs>) that the server concatenates.
//
// Usage: node parallel_upload.mjs --endpoint URL --file PATH --parallel N
//          --chunk-size BYTES --filename NAME --filetype TYPE
//
// Prints {"uploadUrl", "size", "partialUrls", "finalConcat"}: the final
// upload's URL, the URLs the server returned for the partial uploads, and the
// Upload-Concat header the client sent to create the final upload.

import { createReadStream, statSync } from 'node:fs'
import { Upload } from 'tus-js-client'

import { requireOptions, runMain } from './common.mjs'

const args = requireOptions(['endpoint', 'file', 'parallel', 'chunk-size', 'filename', 'filetype'])

async function main() {
  const partialUrls = []
  let finalConcat = null

  let upload
  await new Promise((resolve, reject) => {
    upload = new Upload(createReadStream(args.file), {
      endpoint: args.endpoint,
      chunkSize: Number(args['chunk-size']),
      parallelUploads: Number(args.parallel),
      metadata: { filename: args.filename, filetype: args.filetype },
      retryDelays: [0, 250, 1000],
      onBeforeRequest(req) {
        const concat = req.getHeader('Upload-Concat')
        if (req.getMethod() === 'POST' && concat?.startsWith('final;')) {
          finalConcat = concat
        }
      },
      onAfterResponse(req, res) {
        if (req.getMethod() === 'POST' && req.getHeader('Upload-Concat') === 'partial') {
          partialUrls.push(res.getHeader('Location') ?? null)
        }
      },
      onSuccess() {
        resolve()
      },
      onError: reject,
    })
    upload.start()
  })

  return { uploadUrl: upload.url, size: statSync(args.file).size, partialUrls, finalConcat }
}

runMain(main)
