"use strict";
// node create.js OPTIONS_LIST_JSON -> {"ids": [...]}: one Flow.createJob per options object,
// in order.
const { makeFlow, run } = require("./tsflow");

run(async () => {
  const many = JSON.parse(process.argv[2]);
  const flow = makeFlow();
  await flow.connect();
  try {
    const ids = [];
    for (const options of many) {
      ids.push(await flow.createJob(options));
    }
    return { ids };
  } finally {
    await flow.disconnect();
  }
});
