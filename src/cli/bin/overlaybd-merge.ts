#!/usr/bin/env node
// Upstream-named alias: `overlaybd-merge ARGS` is `obd merge ARGS` (runtime.md §12).
import { main } from '../main.ts';
import { processIo } from '../io.ts';

process.exitCode = await main(['merge', ...process.argv.slice(2)], processIo);
