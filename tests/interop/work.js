"use strict";
// node work.js QUEUE RESULT_JSON COUNT -> {"leased": [...], "completed": [...], "logged": [...]}
// One TypeScript Worker (Flow.createWorkers) on QUEUE, started with Flow.startAll: its worker
// function records the job it was handed and returns RESULT_JSON. Once COUNT jobs went
// through Worker.complete (or INTEROP_TIMEOUT_MS passed: exit status 1) the flow stops
// (Flow.stopAll: the workers stop, disconnect, then the flow disconnects).
const { logged, makeFlow, run } = require("./tsflow");

run(async () => {
  const [queue, resultJson, countText] = process.argv.slice(2);
  const count = Number(countText || "1");
  const timeoutMs = Number(process.env.INTEROP_TIMEOUT_MS || "10000");
  const flow = makeFlow();
  const leased = [];
  const completed = [];
  let allDone;
  const finished = new Promise((resolve) => {
    allDone = resolve;
  });
  // a short BLMOVE timeout so that stopping does not wait for the default 3 s
  const workers = flow.createWorkers(
    queue,
    async (job) => {
      leased.push(job);
      return JSON.parse(resultJson);
    },
    1,
    30,
    0.1,
  );
  for (const worker of workers) {
    const complete = worker.complete.bind(worker);
    worker.complete = async (jobId, result) => {
      const ok = await complete(jobId, result);
      completed.push({ jobId, ok });
      if (completed.length >= count) {
        allDone();
      }
      return ok;
    };
  }
  await flow.startAll();
  let timer;
  const timedOut = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`no ${count} completion(s) within ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  try {
    await Promise.race([finished, timedOut]);
  } finally {
    clearTimeout(timer);
    await flow.stopAll();
  }
  return { leased, completed, logged };
});
