/**
 * The snapshotter daemon (upstream `overlaybd-snapshotter`, snapshotter.md §1): reads
 * the config file, opens the snapshotter, serves it to containerd on the configured
 * unix socket (plus the Prometheus exporter when enabled, and `rpull.sock` for `obd
 * rpull` when given a pull handler) and runs until SIGTERM/SIGINT
 * or an abort signal, then stops gracefully. The CLI's `obd snapshotter [CONFIG]` calls
 * it; the device mounter (src/attach) is injected by the caller.
 *
 * @example
 * ```ts
 * await runSnapshotterDaemon('/etc/overlaybd-snapshotter/config.json', { deviceMounter });
 * ```
 */
import { dirname, join } from 'node:path';
import { debuglog } from 'node:util';
import { InvalidArgumentError, UnsupportedError } from '../io/errors.ts';
import { DEFAULT_CONFIG_PATH, loadSnapshotterConfig, snapshotterOptionsFromConfig, type SnapshotterConfig } from './config.ts';
import type { DeviceMounter } from './device-mounter.ts';
import { startSnapshotterServer } from './grpc-service.ts';
import { SnapshotterMetrics } from './metrics.ts';
import { PULL_SOCKET_NAME, servePullSocket, type PullHandler } from './pull-socket.ts';
import { createSnapshotter } from './snapshotter.ts';

const log = debuglog('obd');

/** Options of {@link runSnapshotterDaemon}. */
export interface SnapshotterDaemonOptions {
  /** Attaches and mounts overlaybd devices (src/attach); without it overlaybd rootfs requests fail. */
  deviceMounter?: DeviceMounter;
  /** Stops the daemon when aborted (in addition to SIGTERM/SIGINT). */
  signal?: AbortSignal;
  /** Listen for SIGTERM and SIGINT (default true). */
  handleSignals?: boolean;
  /** Interface of the metrics endpoint (default: all interfaces, as upstream). */
  metricsHost?: string;
  /**
   * Serves `obd rpull` requests on `rpull.sock` beside the gRPC socket (see
   * `pull-socket.ts`) with this handler; no pull socket without it.
   */
  pullHandler?: PullHandler;
  /** Called once the socket accepts calls. */
  onReady?: (info: { root: string; address: string; pullAddress?: string; metricsPort?: number }) => void;
}

/** Checks the config fields the daemon needs and the features it does not implement. */
export function validateDaemonConfig(cfg: SnapshotterConfig): void {
  if (cfg.address === '') throw new InvalidArgumentError('Cannot start the snapshotter: config address is empty');
  if (cfg.root === '') throw new InvalidArgumentError('Cannot start the snapshotter: config root is empty');
  if (cfg.runtimeType === 'docker') throw new UnsupportedError('Cannot start the snapshotter: runtimeType "docker" is not supported');
  if (cfg.rootfsQuota !== '') throw new UnsupportedError(`Cannot start the snapshotter: rootfsQuota ${JSON.stringify(cfg.rootfsQuota)} is not supported`);
}

/**
 * Runs the daemon until stopped. `config` is a config file path (default
 * `/etc/overlaybd-snapshotter/config.json`) or an already parsed config. Resolves after
 * a graceful stop; rejects when startup fails (missing/invalid config, empty address).
 */
export async function runSnapshotterDaemon(config: string | SnapshotterConfig = DEFAULT_CONFIG_PATH, options: SnapshotterDaemonOptions = {}): Promise<void> {
  const cfg = typeof config === 'string' ? await loadSnapshotterConfig(config) : config;
  validateDaemonConfig(cfg);
  const snapshotter = await createSnapshotter(cfg.root, {
    ...snapshotterOptionsFromConfig(cfg),
    ...(options.deviceMounter === undefined ? {} : { deviceMounter: options.deviceMounter }),
  });
  const mounter = options.deviceMounter;
  const stops: (() => Promise<void>)[] = [async () => mounter?.close?.(), () => snapshotter.close()];
  const stopAll = async (): Promise<void> => {
    for (const stop of stops.reverse()) await stop().catch((e: unknown) => log('snapshotter: stop failed: %s', String(e)));
  };
  let metricsPort: number | undefined;
  let pullAddress: string | undefined;
  try {
    const metrics = cfg.exporterConfig.enable ? new SnapshotterMetrics() : undefined;
    if (metrics !== undefined) {
      const http = await metrics.listen({
        port: cfg.exporterConfig.port,
        uriPrefix: cfg.exporterConfig.uriPrefix,
        ...(options.metricsHost === undefined ? {} : { host: options.metricsHost }),
      });
      metricsPort = http.port;
      stops.push(() => http.close());
    }
    const server = await startSnapshotterServer({ snapshotter, address: cfg.address, ...(metrics === undefined ? {} : { observe: metrics.observe }) });
    stops.push(() => server.close());
    if (options.pullHandler !== undefined) {
      const pulls = await servePullSocket(join(dirname(cfg.address), PULL_SOCKET_NAME), options.pullHandler);
      pullAddress = pulls.path;
      stops.push(() => pulls.close());
    }
  } catch (e) {
    await stopAll();
    throw e;
  }
  await new Promise<void>((resolve) => {
    const signals: NodeJS.Signals[] = options.handleSignals === false ? [] : ['SIGTERM', 'SIGINT'];
    const stop = (): void => {
      for (const s of signals) process.off(s, stop);
      options.signal?.removeEventListener('abort', stop);
      resolve();
    };
    for (const s of signals) process.on(s, stop);
    if (options.signal?.aborted === true) stop();
    else options.signal?.addEventListener('abort', stop);
    log('snapshotter: serving %s (root %s)', cfg.address, cfg.root);
    options.onReady?.({
      root: cfg.root,
      address: cfg.address,
      ...(pullAddress === undefined ? {} : { pullAddress }),
      ...(metricsPort === undefined ? {} : { metricsPort }),
    });
  });
  await stopAll();
}
