#!/usr/bin/env node
// Upstream-named alias: `overlaybd-commit ARGS` is `obd commit ARGS` (runtime.md §12).
import { main } from '../main.ts';
import { processIo } from '../io.ts';

process.exitCode = await main(['commit', ...process.argv.slice(2)], processIo);
