#!/usr/bin/env node

import { main } from '../main.ts';
import { processIo } from '../io.ts';
import { restartTuned } from '../malloc-tuning.ts';

restartTuned(); // heavy commands: once, with glibc's heap tuned (malloc-tuning.ts)

process.exitCode = await main([...process.argv.slice(2)], processIo);
