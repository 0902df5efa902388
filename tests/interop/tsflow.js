"use strict";
// Shared by the interop scripts: a TypeScript-library Flow built from the environment.
//   INTEROP_REDIS_URL  redis://host:port/db of the test's private server
//   INTEROP_FLOW       JSON {name, queueOptions: [{queueName, nextQueueName, attributesToGet}],
//                      lookupAttributes} describing the same flow as the Python test's Flow
// Every script prints one JSON object on stdout; anything else goes to stderr.
const { Flow } = require("@guildxyz/queues");

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

// The library logs through this object; warnings and errors are kept so that the Python
// test can assert that the library saw nothing wrong.
const logged = [];
const keep = (level) => (message, meta) => {
  const error = meta && meta.error;
  logged.push({ level, message, error: error ? String(error.stack || error) : undefined });
};
const logger = {
  info() {},
  debug() {},
  verbose() {},
  warn: keep("warn"),
  error: keep("error"),
};
const correlator = {
  withId(id, fn) {
    return fn();
  },
  getId() {
    return "x";
  },
};

function makeFlow() {
  const spec = JSON.parse(required("INTEROP_FLOW"));
  return new Flow({
    name: spec.name,
    queueOptions: spec.queueOptions,
    lookupAttributes: spec.lookupAttributes,
    redisClientOptions: { url: required("INTEROP_REDIS_URL") },
    logger,
    correlator,
  });
}

function run(main) {
  main()
    .then((result) => {
      process.stdout.write(`${JSON.stringify(result)}\n`);
    })
    .catch((error) => {
      process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
      process.exitCode = 1;
    });
}

module.exports = { logged, makeFlow, run };
