"use strict";
// node conventions.js CONFIG_JSON: TypeScript workers (and optionally a FlowMonitor) on the
// flow of INTEROP_FLOW until stdin closes; then Flow.stopAll (and FlowMonitor.stop).
//   CONFIG: {"workers": [QUEUE, ...],              Flow.createWorkers, one worker each
//            "parents": [QUEUE, ...],              Flow.createParentWorkers, one each
//            "children": [[PARENT, CHILD], ...],   Flow.createChildWorkers, one each
//            "workMs": 0,                          how long each worker function takes
//            "checkMs": 50,                        a ParentWorker's poll of its children
//            "monitor": null | {"queues": [QUEUE, ...], "intervalMs": 100}}
// Every worker runs the same function, written the way the library's own flows write theirs:
//   (job) => ({...job.plan[QUEUE], ["seen:" + QUEUE]: the job without id and plan})
// so a job's `plan` option says what each stage returns (done, nextQueue, child params, ...).
// stdout carries one JSON object per line, as things happen:
//   {"event": "ready"}                                   every worker and the monitor started
//   {"event": "completed", "queue", "jobId", "ok"}       a Worker.complete returned
//   {"event": "refresh"}                                 the FlowMonitor started a round (its
//                                                        log line comes before the checks end)
//   {"event": "lockExpired", "queue", "jobId"}           the FlowMonitor failed a job
//   {"event": "monitorLRem", "key", "jobId", "removed"}  its LREM of that job: removed 0 when
//                                                        the job had left processing already
//   {"event": "stopped", "logged": [...]}                last: the library's warnings/errors
const readline = require("readline");
const { FlowMonitor } = require("@guildxyz/queues");
const { logged, makeFlow, run } = require("./tsflow");

const emit = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);
const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function conventionFunction(queue, workMs) {
  return async (job) => {
    const { id, plan, ...seen } = job;
    if (!plan || !plan[queue]) {
      throw new Error(`job ${id} has no plan for ${queue}`);
    }
    if (workMs > 0) {
      await delay(workMs);
    }
    return { ...JSON.parse(JSON.stringify(plan[queue])), [`seen:${queue}`]: seen };
  };
}

async function main() {
  const config = JSON.parse(process.argv[2]);
  const workMs = config.workMs || 0;
  const flow = makeFlow();
  // a short BLMOVE timeout so that stopping does not wait for the default 3 s
  const made = [
    ...(config.workers || []).map((queue) => [
      queue,
      flow.createWorkers(queue, conventionFunction(queue, workMs), 1, 30, 0.1),
    ]),
    ...(config.parents || []).map((queue) => [
      queue,
      flow.createParentWorkers(queue, 1, 30, 0.1),
    ]),
    ...(config.children || []).map(([parent, child]) => [
      `${parent}:${child}`,
      flow.createChildWorkers(
        parent,
        child,
        conventionFunction(`${parent}:${child}`, workMs),
        1,
        30,
        0.1,
      ),
    ]),
  ];
  for (const [queue, workers] of made) {
    for (const worker of workers) {
      worker.checkInterval = config.checkMs || 50; // ParentWorker only
      const complete = worker.complete.bind(worker);
      worker.complete = async (jobId, result) => {
        const ok = await complete(jobId, result);
        emit({ event: "completed", queue, jobId, ok });
        return ok;
      };
    }
  }
  let monitor = null;
  if (config.monitor) {
    const spec = JSON.parse(process.env.INTEROP_FLOW);
    const monitorLogger = {
      info(message, meta) {
        if (message === "Job lock time exceeded") {
          emit({ event: "lockExpired", queue: meta.queueName, jobId: meta.jobId });
        } else if (message === "job lists updated") {
          emit({ event: "refresh" });
        }
      },
      debug() {},
      verbose() {},
      warn(message, meta) {
        logged.push({ level: "warn", message, error: meta && String(meta.error) });
      },
      error(message, meta) {
        logged.push({ level: "error", message, error: meta && String(meta.error) });
      },
    };
    monitor = new FlowMonitor({
      redisClientOptions: { url: process.env.INTEROP_REDIS_URL },
      flowName: spec.name,
      queueNames: config.monitor.queues,
      logger: monitorLogger,
      intervalMs: config.monitor.intervalMs,
    });
    // the monitor fails a job whose lock it did not find whether or not its LREM removed the
    // job from processing (a job completed between its LRANGE and its GET is failed too):
    // the reply tells the two apart
    const lRem = monitor.redis.lRem.bind(monitor.redis);
    monitor.redis.lRem = async (key, count, jobId) => {
      const removed = await lRem(key, count, jobId);
      emit({ event: "monitorLRem", key, jobId, removed });
      return removed;
    };
  }
  await flow.startAll();
  if (monitor) {
    await monitor.start();
  }
  emit({ event: "ready" });
  await new Promise((resolve) => {
    const input = readline.createInterface({ input: process.stdin });
    input.on("close", resolve);
    input.on("line", () => {});
  });
  if (monitor) {
    await monitor.stop();
  }
  await flow.stopAll();
  return { event: "stopped", logged };
}

run(main);
