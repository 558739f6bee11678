/** The terminal streams a command writes to; injected so commands run in tests. */
export interface CliIo {
  out(text: string): void;
  err(text: string): void;
  /** Standard input as a byte stream. */
  stdin(): AsyncIterable<Uint8Array>;
}

export const processIo: CliIo = {
  out: (t) => void process.stdout.write(t),
  err: (t) => void process.stderr.write(t),
  stdin: () => process.stdin,
};

/** Collects output in memory (tests). */
export function memoryIo(input: Uint8Array[] = []): CliIo & { stdout: string; stderr: string } {
  const io = {
    stdout: '',
    stderr: '',
    stdin: async function* () {
      yield* input;
    },
    out(t: string) {
      io.stdout += t;
    },
    err(t: string) {
      io.stderr += t;
    },
  };
  return io;
}
