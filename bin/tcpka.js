#!/usr/bin/env node
// CommonJS (bin/package.json): Node starts a CommonJS entry ~7 ms sooner than an ES module one. The command line
// is dist/bundle/tcpka.cjs, which boot compiles with the code cache of the command's last run (src/cli/boot.ts).
"use strict";

require("../dist/bundle/boot.cjs")
  .boot(process.argv.slice(2))
  .then((code) => {
    process.exitCode = code;
  });
