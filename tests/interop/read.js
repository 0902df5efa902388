"use strict";
// node read.js QUERIES_JSON -> {"results": [[job, ...], ...]}: for each [key, value] query,
// what Flow.getJobsByKey(key, value, true) returns.
const { makeFlow, run } = require("./tsflow");

run(async () => {
  const queries = JSON.parse(process.argv[2]);
  const flow = makeFlow();
  await flow.connect();
  try {
    const results = [];
    for (const [key, value] of queries) {
      results.push(await flow.getJobsByKey(key, value, true));
    }
    return { results };
  } finally {
    await flow.disconnect();
  }
});
