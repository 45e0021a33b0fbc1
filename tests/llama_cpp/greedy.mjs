// Greedy text from llama.cpp (the prebuilt one node-llama-cpp ships) for GGUF files:
//   node greedy.mjs NODE_LLAMA_CPP_DIR MODEL.gguf STEPS [MODEL.gguf STEPS ...]
// For each model, STEPS tokens decoded at temperature 0 from BOS, printed as one JSON string a line
// (the tests compare them with msrnn-generate's text).
import {pathToFileURL} from "node:url";
import path from "node:path";

const [dir, ...pairs] = process.argv.slice(2);
const entry = path.join(dir, "node_modules", "node-llama-cpp", "dist", "index.js");
const {getLlama} = await import(pathToFileURL(entry).href);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
for (let i = 0; i + 1 < pairs.length; i += 2) {
  const steps = Number(pairs[i + 1]);
  const model = await llama.loadModel({modelPath: pairs[i]});
  // One thread: llama.cpp's workers spin, and on a busy two-core machine that is slower by 100x.
  const context = await model.createContext({
    contextSize: Math.max(steps + 1, 64), sequences: 1, threads: 1});
  const tokens = [];
  for await (const token of context.getSequence().evaluate([model.tokens.bos], {temperature: 0})) {
    tokens.push(token);
    if (tokens.length >= steps) break;
  }
  process.stdout.write(JSON.stringify(model.detokenize(tokens)) + "\n");
  await context.dispose();
  await model.dispose();
}
await llama.dispose();
