/** The `resultFile` status protocol (runtime.md §2.6): `success` or `failed:<message>`, no newline. */
import { writeFile } from 'node:fs/promises';

export async function writeResultFile(path: string, error?: unknown): Promise<void> {
  if (path === '') return;
  const text = error === undefined ? 'success' : `failed:${error instanceof Error ? error.message : String(error)}`;
  await writeFile(path, text);
}
