#!/usr/bin/env node
// Upstream-named alias: `overlaybd-create ARGS` is `obd create ARGS` (runtime.md §12).
import { main } from '../main.ts';
import { processIo } from '../io.ts';

process.exitCode = await main(['create', ...process.argv.slice(2)], processIo);
