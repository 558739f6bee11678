/**
 * Starts a FUSE reader thread (`_fuse-worker`).
 *
 * Compiled (dist/), the worker is the .js file beside this one. Run from source
 * (`node --import tsx`: tests, development), Node 20 does not apply the TypeScript
 * loader to worker threads, and registering tsx inside each worker costs about half a
 * second of CPU per thread. So from source the worker is bundled once per process with
 * esbuild (which tsx itself runs on) into one CommonJS script and started with
 * `eval: true`; if esbuild cannot be loaded, each worker registers tsx itself.
 *
 * A local-reads module (the device opener each reader loads, see `_channel.ts`) is
 * bundled the same way from source, with every module's `import.meta.url` kept as its
 * own file URL (the native binding finds its `.node` file from it).
 */
import { Worker } from 'node:worker_threads';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { readFile } from 'node:fs/promises';
import type { WorkerData } from './_channel.ts';

interface Esbuild {
  build(options: Record<string, unknown>): Promise<{ outputFiles?: Array<{ text: string }> }>;
}

interface OnLoadArgs {
  path: string;
}

let bundled: Promise<string | undefined> | undefined;
const modules = new Map<string, Promise<string | undefined>>();

/** esbuild plugin: `import.meta.url` becomes the literal URL of the file it is in. */
const keepImportMetaUrl = {
  name: 'keep-import-meta-url',
  setup(build: { onLoad(options: { filter: RegExp }, fn: (args: OnLoadArgs) => Promise<{ contents: string; loader: string }>): void }) {
    build.onLoad({ filter: /\.[cm]?[jt]s$/ }, async (args) => {
      const text = await readFile(args.path, 'utf8');
      const loader = args.path.endsWith('ts') ? 'ts' : 'js';
      return { contents: text.replaceAll('import.meta.url', JSON.stringify(pathToFileURL(args.path).href)), loader };
    });
  },
};

async function bundle(entry: string, plugins: unknown[] = []): Promise<string | undefined> {
  try {
    const esbuild = (await import('esbuild' as string)) as Esbuild;
    const out = await esbuild.build({ entryPoints: [entry], bundle: true, format: 'cjs', platform: 'node', target: 'node20', write: false, logLevel: 'silent', plugins });
    return out.outputFiles?.[0]?.text;
  } catch {
    return undefined;
  }
}

/**
 * From source: the CommonJS bundle of the module at `url` (a .ts file), or undefined
 * when it is compiled JavaScript (workers import it) or esbuild is missing.
 */
export function bundleModule(url: string): Promise<string | undefined> {
  if (!url.endsWith('.ts')) return Promise.resolve(undefined);
  let code = modules.get(url);
  if (code === undefined) {
    code = bundle(fileURLToPath(url), [keepImportMetaUrl]);
    modules.set(url, code);
  }
  return code;
}

/** Prepares what starting a reader needs (from source: the bundle), so that later starts are quick. */
export async function prepareWorkers(): Promise<void> {
  if (!import.meta.url.endsWith('.ts')) return;
  bundled ??= bundle(fileURLToPath(new URL('./_fuse-worker.ts', import.meta.url)));
  await bundled;
}

/** Starts one reader with `workerData` (what to serve, or parked). */
export async function startWorker(workerData: WorkerData): Promise<Worker> {
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL('./_fuse-worker.js', import.meta.url), { workerData });
  const entry = new URL('./_fuse-worker.ts', import.meta.url);
  bundled ??= bundle(fileURLToPath(entry));
  const code = await bundled;
  if (code !== undefined) return new Worker(code, { eval: true, workerData });
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(entry.href)}); });`;
  return new Worker(bootstrap, { eval: true, workerData });
}
