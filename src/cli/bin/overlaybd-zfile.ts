#!/usr/bin/env node
// Upstream-named alias: `overlaybd-zfile ARGS` is `obd zfile ARGS` (runtime.md §12).
import { main } from '../main.ts';
import { processIo } from '../io.ts';

process.exitCode = await main(['zfile', ...process.argv.slice(2)], processIo);
