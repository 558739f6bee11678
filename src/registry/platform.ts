/**
 * Platforms (`os/architecture[/variant]`) and choosing one manifest of an image index,
 * following containerd's `platforms` rules:
 *
 * - normalisation: `x86_64`/`x86-64` → `amd64`, `aarch64` → `arm64` (variant `v8` is the
 *   default and dropped), `armhf` → `arm/v7`, `armel` → `arm/v6`, `arm` alone → `arm/v7`,
 *   `i386` → `386`, numeric variants get a `v`;
 * - selection: an exact match wins; otherwise a compatible lower variant (`arm/v7` runs
 *   `arm/v6` and `arm/v5`; `amd64/v3` runs `v2` and plain `amd64`; `amd64` runs `386`),
 *   best first; ties go to the first entry of the index;
 * - entries without a platform, with `unknown` os/architecture, or marked as BuildKit
 *   attestations (`vnd.docker.reference.type: attestation-manifest`) are never chosen.
 *
 * @example
 * ```ts
 * selectManifest(index.manifests, parsePlatform('linux/arm64'))?.digest;
 * ```
 */
import { endianness } from 'node:os';
import { InvalidArgumentError } from '../io/errors.ts';

export interface Platform {
  readonly os: string;
  readonly architecture: string;
  readonly variant?: string;
}

/** The parts of an index entry that selection reads. */
export interface PlatformDescriptor {
  readonly platform?: { readonly os?: string; readonly architecture?: string; readonly variant?: string };
  readonly annotations?: Readonly<Record<string, string>>;
}

const ARCH_ALIASES: Record<string, Platform['architecture']> = {
  x86_64: 'amd64',
  'x86-64': 'amd64',
  aarch64: 'arm64',
  i386: '386',
  i686: '386',
  armhf: 'arm',
  armel: 'arm',
};

function withVariant(os: string, architecture: string, variant: string | undefined): Platform {
  return variant === undefined || variant === '' ? { os, architecture } : { os, architecture, variant };
}

/** Normalises os, architecture and variant (see the module comment). */
export function normalizePlatform(p: { os?: string; architecture?: string; variant?: string }): Platform {
  let os = (p.os ?? '').toLowerCase();
  if (os === 'macos') os = 'darwin';
  const rawArch = (p.architecture ?? '').toLowerCase();
  const architecture = ARCH_ALIASES[rawArch] ?? rawArch;
  let variant = p.variant?.toLowerCase();
  if (variant !== undefined && /^\d+(\.\d+)?$/.test(variant)) variant = `v${variant}`;
  if (architecture === 'arm') {
    if (rawArch === 'armhf') variant = 'v7';
    else if (rawArch === 'armel') variant = 'v6';
    else variant ??= 'v7';
  } else if (architecture === 'arm64') {
    if (variant === 'v8' || variant === 'v8.0') variant = undefined;
  } else if (architecture === 'amd64') {
    if (variant === 'v1') variant = undefined;
  }
  return withVariant(os, architecture, variant);
}

/** Parses `os/arch[/variant]`. */
export function parsePlatform(text: string): Platform {
  const parts = text.split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((s) => s === '')) {
    throw new InvalidArgumentError(`Cannot parse platform ${JSON.stringify(text)}: expected os/arch[/variant]`);
  }
  return normalizePlatform({ os: parts[0] as string, architecture: parts[1] as string, ...(parts[2] === undefined ? {} : { variant: parts[2] }) });
}

/** `os/arch[/variant]`. */
export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant === undefined ? '' : `/${p.variant}`}`;
}

/** The platform of this process (Linux container images for the host CPU). */
export function currentPlatform(): Platform {
  const os = process.platform === 'win32' ? 'windows' : process.platform;
  const map: Record<string, string> = { x64: 'amd64', ia32: '386', ppc64: endianness() === 'LE' ? 'ppc64le' : 'ppc64' };
  const architecture = map[process.arch] ?? process.arch;
  const armVersion = (process.config.variables as { arm_version?: string }).arm_version;
  return normalizePlatform({ os, architecture, ...(architecture === 'arm' && armVersion !== undefined ? { variant: armVersion } : {}) });
}

/** The platforms `want` can run, best first (exact match first). */
export function compatiblePlatforms(want: Platform): Platform[] {
  const p = normalizePlatform(want);
  const out: Platform[] = [p];
  const n = Number(/^v(\d+)/.exec(p.variant ?? '')?.[1] ?? NaN);
  if (p.architecture === 'arm' && Number.isFinite(n)) {
    for (let v = n - 1; v >= 5; v--) out.push(withVariant(p.os, 'arm', `v${v}`));
  }
  if (p.architecture === 'amd64') {
    if (Number.isFinite(n)) for (let v = n - 1; v >= 2; v--) out.push(withVariant(p.os, 'amd64', `v${v}`));
    if (p.variant !== undefined) out.push(withVariant(p.os, 'amd64', undefined));
    out.push(withVariant(p.os, '386', undefined));
  }
  return out;
}

function samePlatform(a: Platform, b: Platform): boolean {
  return a.os === b.os && a.architecture === b.architecture && (a.variant ?? '') === (b.variant ?? '');
}

/** Whether an index entry is a real image for some platform (not an attestation). */
function selectable(d: PlatformDescriptor): boolean {
  if (d.platform === undefined) return false;
  if (d.annotations?.['vnd.docker.reference.type'] === 'attestation-manifest') return false;
  return d.platform.os !== 'unknown' && d.platform.architecture !== 'unknown';
}

/** The best entry of `manifests` for `want`, or undefined when none can run there. */
export function selectManifest<D extends PlatformDescriptor>(manifests: readonly D[], want: Platform): D | undefined {
  const candidates = manifests.filter(selectable).map((d) => ({ d, p: normalizePlatform(d.platform ?? {}) }));
  for (const acceptable of compatiblePlatforms(want)) {
    const hit = candidates.find((c) => samePlatform(c.p, acceptable));
    if (hit !== undefined) return hit.d;
  }
  return undefined;
}
