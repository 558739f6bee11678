/**
 * Starts a FUSE reader thread (`_fuse-worker`).
 *
 * Compiled (dist/), the worker is the .js file beside this one. Run from source
 * (`node --import tsx`: tests, development), Node 20 does not apply the TypeScript
 * loader to worker threads, and registering tsx inside each worker costs about half a
 * second of CPU per thread. So from source the worker is bundled once per process with
 * esbuild (which tsx itself runs on) into one CommonJS script and started with
 * `eval: true`; if esbuild cannot be loaded, each worker registers tsx itself.
 */
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { WorkerInit } from './_channel.ts';

interface Esbuild {
  build(options: Record<string, unknown>): Promise<{ outputFiles?: Array<{ text: string }> }>;
}

let bundled: Promise<string | undefined> | undefined;

async function bundle(entry: string): Promise<string | undefined> {
  try {
    const esbuild = (await import('esbuild' as string)) as Esbuild;
    const out = await esbuild.build({ entryPoints: [entry], bundle: true, format: 'cjs', platform: 'node', target: 'node20', write: false, logLevel: 'silent' });
    return out.outputFiles?.[0]?.text;
  } catch {
    return undefined;
  }
}

/** Prepares what starting a reader needs (from source: the bundle), so that later starts are quick. */
export async function prepareWorkers(): Promise<void> {
  if (!import.meta.url.endsWith('.ts')) return;
  bundled ??= bundle(fileURLToPath(new URL('./_fuse-worker.ts', import.meta.url)));
  await bundled;
}

/** Starts one reader with `workerData`. */
export async function startWorker(workerData: WorkerInit): Promise<Worker> {
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL('./_fuse-worker.js', import.meta.url), { workerData });
  const entry = new URL('./_fuse-worker.ts', import.meta.url);
  bundled ??= bundle(fileURLToPath(entry));
  const code = await bundled;
  if (code !== undefined) return new Worker(code, { eval: true, workerData });
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(entry.href)}); });`;
  return new Worker(bootstrap, { eval: true, workerData });
}
