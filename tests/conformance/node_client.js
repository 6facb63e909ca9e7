// A second language's client: Node's @grpc/grpc-js loading OUR protos with `-I protos`
// semantics (@grpc/proto-loader, includeDirs = [protos]). Usage:
//   node node_client.js HOST:PORT PROTOS_DIR
// Prints one JSON line with what the server answered; the pytest side asserts on it.
"use strict";
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [url, protos] = process.argv.slice(2);
const definition = loader.loadSync("grpc_service.proto", {
  includeDirs: [protos],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const inference = grpc.loadPackageDefinition(definition).inference;
const client = new inference.GRPCInferenceService(url, grpc.credentials.createInsecure());

function call(method, request) {
  return new Promise((resolve) => {
    client[method](request, (err, response) =>
      resolve(err ? { code: err.code, details: err.details } : { response }));
  });
}

function int32s(values) {
  const buf = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buf.writeInt32LE(v, i * 4));
  return buf;
}

(async () => {
  const out = {};
  out.metadata = (await call("ServerMetadata", {})).response;
  out.unknown = await call("ModelInfer", { model_name: "no_such_model" });
  out.bad_version = await call("ModelInfer", { model_name: "simple", model_version: "abc" });
  const a = Array.from({ length: 16 }, (_, i) => i);
  const infer = await call("ModelInfer", {
    model_name: "simple",
    id: "node",
    inputs: ["INPUT0", "INPUT1"].map((name) => ({ name, datatype: "INT32", shape: [1, 16] })),
    raw_input_contents: [int32s(a), int32s(a.map(() => 1))],
  });
  const raw = infer.response.raw_output_contents[0];
  out.infer = {
    id: infer.response.id,
    output0: Array.from({ length: 16 }, (_, i) => raw.readInt32LE(i * 4)),
  };
  out.config = (await call("ModelConfig", { name: "simple" })).response.config.max_batch_size;
  console.log(JSON.stringify(out));
  client.close();
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
