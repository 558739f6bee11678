/*
 * obd-native: the hot paths of overlaybd-ts that pay for native code.
 *
 *  - raw CRC-32C (Castagnoli, no pre/post inversion), SSE4.2 when the CPU has it;
 *  - LZ4 raw-block compress (LZ4_compress_default) / safe decompress (Debian liblz4);
 *  - zstd one-shot compress (ZSTD_compress) / decompress (Debian libzstd);
 *  - a batch call that verifies and decompresses a run of ZFile blocks in one crossing,
 *    and one that compresses a run of blocks on a libuv pool thread (encodeBlocks);
 *  - a block-by-block compare of two files (diffRanges), on two threads;
 *  - execve, for the CLI's one restart with tuned malloc settings (src/cli/bin);
 *  - mount(2) and a loop-device attach (LOOP_CONFIGURE), without a mount or losetup
 *    process on the device start path;
 *  - a FUSE READ fast path: C threads that read /dev/fuse, answer READ of a read-only
 *    device from a flattened extent table (pread + CRC-32C + decode into the reply) and
 *    hand every other request to JavaScript (fuseServeStart / fuseServeStop).
 *
 * Every function takes Uint8Array views and writes into caller-owned memory: no
 * allocation on the JS heap per call. Errors come back as negative numbers; the
 * TypeScript side (src/native/) turns them into typed errors.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>
#include <lz4.h>
#include <zstd.h>
#include <stdint.h>
#include <string.h>
#include <stdbool.h>
#include <fcntl.h>
#include <unistd.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <math.h>
#include <sys/mount.h>
#include <sys/ioctl.h>
#include <linux/loop.h>

/* ---------- CRC-32C ---------- */

static uint32_t crc_table[8][256];
static bool have_sse42 = false;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : (c >> 1);
    crc_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = crc_table[0][i];
    for (int t = 1; t < 8; t++) {
      c = crc_table[0][c & 0xff] ^ (c >> 8);
      crc_table[t][i] = c;
    }
  }
#if defined(__x86_64__)
  __builtin_cpu_init();
  have_sse42 = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc_sw(uint32_t crc, const uint8_t *p, size_t n) {
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    v ^= crc;
    crc = crc_table[7][v & 0xff] ^ crc_table[6][(v >> 8) & 0xff] ^ crc_table[5][(v >> 16) & 0xff] ^
          crc_table[4][(v >> 24) & 0xff] ^ crc_table[3][(v >> 32) & 0xff] ^ crc_table[2][(v >> 40) & 0xff] ^
          crc_table[1][(v >> 48) & 0xff] ^ crc_table[0][v >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t n) {
  uint64_t c = crc;
  /* Three interleaved streams would be faster still; one stream already runs at ~8 GB/s. */
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = (uint32_t)c;
  while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}
#endif

static uint32_t crc32c_raw(uint32_t seed, const uint8_t *p, size_t n) {
#if defined(__x86_64__)
  if (have_sse42) return crc_hw(seed, p, n);
#endif
  return crc_sw(seed, p, n);
}

/* ---------- N-API helpers ---------- */

static bool get_bytes(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  napi_typedarray_type type;
  size_t length;
  void *ptr;
  napi_value ab;
  size_t off;
  if (napi_get_typedarray_info(env, v, &type, &length, &ptr, &ab, &off) != napi_ok || type != napi_uint8_array) {
    napi_throw_type_error(env, NULL, "Expected a Uint8Array");
    return false;
  }
  *data = (uint8_t *)ptr;
  *len = length;
  return true;
}

static bool get_u32(napi_env env, napi_value v, uint32_t *out) {
  if (napi_get_value_uint32(env, v, out) != napi_ok) {
    napi_throw_type_error(env, NULL, "Expected an unsigned 32-bit integer");
    return false;
  }
  return true;
}

static napi_value make_i64(napi_env env, int64_t v) {
  napi_value r;
  napi_create_int64(env, v, &r);
  return r;
}

static napi_value make_u32(napi_env env, uint32_t v) {
  napi_value r;
  napi_create_uint32(env, v, &r);
  return r;
}

#define ARGS(n)                                                                       \
  size_t argc = n;                                                                    \
  napi_value argv[n];                                                                 \
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < n) { \
    napi_throw_type_error(env, NULL, "Wrong number of arguments");                   \
    return NULL;                                                                      \
  }

/* crc32c(data: Uint8Array, seed: number): number */
static napi_value js_crc32c(napi_env env, napi_callback_info info) {
  ARGS(2);
  uint8_t *p;
  size_t n;
  uint32_t seed;
  if (!get_bytes(env, argv[0], &p, &n) || !get_u32(env, argv[1], &seed)) return NULL;
  return make_u32(env, crc32c_raw(seed, p, n));
}

/* lz4Compress(src, dst): bytes written (0 when dst is too small) */
static napi_value js_lz4_compress(napi_env env, napi_callback_info info) {
  ARGS(2);
  uint8_t *s, *d;
  size_t sn, dn;
  if (!get_bytes(env, argv[0], &s, &sn) || !get_bytes(env, argv[1], &d, &dn)) return NULL;
  if (sn > LZ4_MAX_INPUT_SIZE || dn > INT32_MAX) return make_i64(env, -1);
  return make_i64(env, LZ4_compress_default((const char *)s, (char *)d, (int)sn, (int)dn));
}

/* lz4Decompress(src, dst): bytes written, negative on malformed input */
static napi_value js_lz4_decompress(napi_env env, napi_callback_info info) {
  ARGS(2);
  uint8_t *s, *d;
  size_t sn, dn;
  if (!get_bytes(env, argv[0], &s, &sn) || !get_bytes(env, argv[1], &d, &dn)) return NULL;
  if (sn > INT32_MAX || dn > INT32_MAX) return make_i64(env, -1);
  return make_i64(env, LZ4_decompress_safe((const char *)s, (char *)d, (int)sn, (int)dn));
}

/* zstdCompress(src, dst, level): bytes written, negative on error */
static napi_value js_zstd_compress(napi_env env, napi_callback_info info) {
  ARGS(3);
  uint8_t *s, *d;
  size_t sn, dn;
  uint32_t level;
  if (!get_bytes(env, argv[0], &s, &sn) || !get_bytes(env, argv[1], &d, &dn) || !get_u32(env, argv[2], &level))
    return NULL;
  size_t r = ZSTD_compress(d, dn, s, sn, (int)level);
  return make_i64(env, ZSTD_isError(r) ? -1 : (int64_t)r);
}

/* zstdDecompress(src, dst): bytes written, negative on error */
static napi_value js_zstd_decompress(napi_env env, napi_callback_info info) {
  ARGS(2);
  uint8_t *s, *d;
  size_t sn, dn;
  if (!get_bytes(env, argv[0], &s, &sn) || !get_bytes(env, argv[1], &d, &dn)) return NULL;
  size_t r = ZSTD_decompress(d, dn, s, sn);
  return make_i64(env, ZSTD_isError(r) ? -1 : (int64_t)r);
}

static __thread ZSTD_DCtx *dctx = NULL;

/*
 * decodeBlocks(src, lengths: Uint32Array, count, dst, blockSize, algo, verify): number
 *
 * src holds `count` stored ZFile blocks back to back (their stored lengths in
 * `lengths`); each decodes into dst at i*blockSize. With verify, the trailing 4
 * bytes of each block are checked as raw CRC-32C (seed 100007) of the rest.
 * Returns total bytes decoded, or -(i+1) for the first block i that failed its
 * CRC, or -(1<<20)-(i+1) for the first block that failed to decompress.
 */
#define DECODE_FAIL_BASE (1 << 20)
static napi_value js_decode_blocks(napi_env env, napi_callback_info info) {
  ARGS(7);
  uint8_t *s, *d, *lb;
  size_t sn, dn, ln;
  uint32_t count, bs, algo, verify;
  if (!get_bytes(env, argv[0], &s, &sn)) return NULL;
  napi_typedarray_type type;
  void *lp;
  napi_value ab;
  size_t off;
  if (napi_get_typedarray_info(env, argv[1], &type, &ln, &lp, &ab, &off) != napi_ok || type != napi_uint32_array) {
    napi_throw_type_error(env, NULL, "Expected a Uint32Array");
    return NULL;
  }
  lb = (uint8_t *)lp;
  if (!get_u32(env, argv[2], &count) || !get_bytes(env, argv[3], &d, &dn) || !get_u32(env, argv[4], &bs) ||
      !get_u32(env, argv[5], &algo) || !get_u32(env, argv[6], &verify))
    return NULL;
  const uint32_t *lens = (const uint32_t *)lb;
  if (count > ln || (uint64_t)count * bs > dn) {
    napi_throw_range_error(env, NULL, "decodeBlocks: buffers too small");
    return NULL;
  }
  if (algo == 2 && dctx == NULL) dctx = ZSTD_createDCtx();
  size_t pos = 0;
  int64_t total = 0;
  for (uint32_t i = 0; i < count; i++) {
    size_t len = lens[i];
    if (pos + len > sn) return make_i64(env, -(int64_t)DECODE_FAIL_BASE - (int64_t)i - 1);
    size_t clen = len;
    if (verify) {
      if (len < 4) return make_i64(env, -(int64_t)i - 1);
      clen = len - 4;
      uint32_t stored;
      memcpy(&stored, s + pos + clen, 4);
      if (crc32c_raw(100007u, s + pos, clen) != stored) return make_i64(env, -(int64_t)i - 1);
    }
    int64_t got;
    uint8_t *out = d + (size_t)i * bs;
    if (algo == 1) {
      got = LZ4_decompress_safe((const char *)(s + pos), (char *)out, (int)clen, (int)bs);
    } else if (algo == 2) {
      size_t r = ZSTD_decompressDCtx(dctx, out, bs, s + pos, clen);
      got = ZSTD_isError(r) ? -1 : (int64_t)r;
    } else {
      got = -1;
    }
    if (got <= 0) return make_i64(env, -(int64_t)DECODE_FAIL_BASE - (int64_t)i - 1);
    total += got;
    pos += len;
  }
  return make_i64(env, total);
}

/* Queues `execute` on a libuv pool thread and returns the promise `complete` settles. */
static napi_value queue_work(napi_env env, const char *name, napi_async_execute_callback execute,
                             napi_async_complete_callback complete, void *data, napi_async_work *work,
                             napi_deferred *deferred) {
  napi_value promise, n;
  napi_create_promise(env, deferred, &promise);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &n);
  napi_create_async_work(env, NULL, n, execute, complete, data, work);
  napi_queue_async_work(env, *work);
  return promise;
}

static __thread ZSTD_CCtx *cctx = NULL;

/*
 * encodeBlock(src, dst, algo, verify): stored length (compressed + CRC) or negative.
 * Compresses one block exactly as upstream does (LZ4_compress_default / ZSTD level 3,
 * single shot) and appends the raw CRC-32C (seed 100007) when verify is set.
 */
static int64_t encode_one(const uint8_t *s, size_t sn, uint8_t *d, size_t dn, uint32_t algo, uint32_t verify) {
  size_t room = verify ? (dn >= 4 ? dn - 4 : 0) : dn;
  int64_t n;
  if (algo == 1) {
    n = LZ4_compress_default((const char *)s, (char *)d, (int)sn, (int)room);
    if (n <= 0) return -1;
  } else if (algo == 2) {
    if (cctx == NULL) cctx = ZSTD_createCCtx();
    size_t r = ZSTD_compressCCtx(cctx, d, room, s, sn, 3);
    if (ZSTD_isError(r)) return -1;
    n = (int64_t)r;
  } else {
    return -1;
  }
  if (verify) {
    uint32_t c = crc32c_raw(100007u, d, (size_t)n);
    memcpy(d + n, &c, 4);
    n += 4;
  }
  return n;
}

static napi_value js_encode_block(napi_env env, napi_callback_info info) {
  ARGS(4);
  uint8_t *s, *d;
  size_t sn, dn;
  uint32_t algo, verify;
  if (!get_bytes(env, argv[0], &s, &sn) || !get_bytes(env, argv[1], &d, &dn) || !get_u32(env, argv[2], &algo) ||
      !get_u32(env, argv[3], &verify))
    return NULL;
  return make_i64(env, encode_one(s, sn, d, dn, algo, verify));
}

/*
 * encodeBlocks(src, blockSize, dst, slot, lengths, algo, verify): Promise<number>.
 * Encodes src as consecutive blocks of blockSize (the last one may be shorter) on a
 * thread of the libuv pool, packing the stored blocks one after the other into dst and
 * their stored lengths into lengths (a Uint32Array). slot is the room one block may
 * take; dst must hold ceil(src / blockSize) * slot bytes. Resolves with the packed byte
 * count, or -(i+1) when block i failed. The caller must not touch the three buffers
 * until the promise settles (they are held by references meanwhile).
 */
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref refs[3];
  const uint8_t *src;
  size_t src_len;
  uint8_t *dst;
  uint32_t *lengths;
  uint32_t block_size, slot, algo, verify;
  int64_t result;
} EncodeJob;

static void encode_execute(napi_env env, void *data) {
  (void)env;
  EncodeJob *j = (EncodeJob *)data;
  int64_t pos = 0;
  uint32_t i = 0;
  for (size_t at = 0; at < j->src_len; at += j->block_size, i++) {
    size_t n = j->src_len - at < j->block_size ? j->src_len - at : j->block_size;
    int64_t r = encode_one(j->src + at, n, j->dst + pos, j->slot, j->algo, j->verify);
    if (r <= 0) {
      j->result = -(int64_t)i - 1;
      return;
    }
    j->lengths[i] = (uint32_t)r;
    pos += r;
  }
  j->result = pos;
}

static void encode_complete(napi_env env, napi_status status, void *data) {
  EncodeJob *j = (EncodeJob *)data;
  napi_value v;
  if (status == napi_ok) {
    napi_create_int64(env, j->result, &v);
    napi_resolve_deferred(env, j->deferred, v);
  } else {
    napi_value msg;
    napi_create_string_utf8(env, "encodeBlocks was cancelled", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &v);
    napi_reject_deferred(env, j->deferred, v);
  }
  for (int k = 0; k < 3; k++) napi_delete_reference(env, j->refs[k]);
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value js_encode_blocks(napi_env env, napi_callback_info info) {
  ARGS(7);
  uint8_t *s, *d;
  size_t sn, dn;
  uint32_t bs, slot, algo, verify;
  napi_typedarray_type lt;
  size_t ln;
  void *lp;
  napi_value lab;
  size_t loff;
  if (!get_bytes(env, argv[0], &s, &sn) || !get_u32(env, argv[1], &bs) || !get_bytes(env, argv[2], &d, &dn) ||
      !get_u32(env, argv[3], &slot) || !get_u32(env, argv[5], &algo) || !get_u32(env, argv[6], &verify))
    return NULL;
  if (napi_get_typedarray_info(env, argv[4], &lt, &ln, &lp, &lab, &loff) != napi_ok || lt != napi_uint32_array) {
    napi_throw_type_error(env, NULL, "Expected a Uint32Array of lengths");
    return NULL;
  }
  size_t count = bs == 0 ? 0 : (sn + bs - 1) / bs;
  if (bs == 0 || ln < count || dn < count * (size_t)slot || (algo != 1 && algo != 2)) {
    napi_throw_range_error(env, NULL, "encodeBlocks: bad block size, algorithm, or output too small");
    return NULL;
  }
  EncodeJob *j = (EncodeJob *)calloc(1, sizeof(EncodeJob));
  if (j == NULL) {
    napi_throw_error(env, NULL, "encodeBlocks: out of memory");
    return NULL;
  }
  j->src = s;
  j->src_len = sn;
  j->dst = d;
  j->lengths = (uint32_t *)lp;
  j->block_size = bs;
  j->slot = slot;
  j->algo = algo;
  j->verify = verify;
  napi_create_reference(env, argv[0], 1, &j->refs[0]);
  napi_create_reference(env, argv[2], 1, &j->refs[1]);
  napi_create_reference(env, argv[4], 1, &j->refs[2]);
  return queue_work(env, "obd:encodeBlocks", encode_execute, encode_complete, j, &j->work, &j->deferred);
}

/*
 * diffRanges(diskFd, shadowFd, ranges, update): Promise<Float64Array>.
 * Compares the two files over `ranges` ([start, end) byte pairs, 4 KiB aligned) block by
 * block (4 KiB) on pool threads (the ranges split in two halves, one per thread), and
 * resolves with the ranges of blocks that differ, adjacent ones merged, in order. With
 * `update`, each differing run is also written from the disk into the shadow. A read
 * past the end of a file reads zeros. Rejects with the errno text of a failed read or
 * write.
 */
#define DIFF_BLOCK 4096
#define DIFF_CHUNK (1u << 20)

typedef struct {
  int disk, shadow, update;
  const double *ranges; /* pairs */
  size_t nranges;
  double from, to; /* byte window of this part */
  double *out;
  size_t nout, cap;
  int err; /* errno of the first failure */
  const char *what;
} DiffPart;

static int diff_push(DiffPart *p, double s, double e) {
  if (p->nout > 0 && p->out[2 * p->nout - 1] == s) {
    p->out[2 * p->nout - 1] = e;
    return 0;
  }
  if (p->nout == p->cap) {
    size_t cap = p->cap ? p->cap * 2 : 256;
    double *n = (double *)realloc(p->out, cap * 2 * sizeof(double));
    if (n == NULL) return ENOMEM;
    p->out = n;
    p->cap = cap;
  }
  p->out[2 * p->nout] = s;
  p->out[2 * p->nout + 1] = e;
  p->nout++;
  return 0;
}

static int read_full(int fd, uint8_t *buf, size_t n, off_t at) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = pread(fd, buf + done, n - done, at + (off_t)done);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (r == 0) {
      memset(buf + done, 0, n - done);
      return 0;
    }
    done += (size_t)r;
  }
  return 0;
}

static int write_full(int fd, const uint8_t *buf, size_t n, off_t at) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = pwrite(fd, buf + done, n - done, at + (off_t)done);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    done += (size_t)r;
  }
  return 0;
}

/*
 * The compare buffers are kept for the next call: on the VMs this runs on, first-touch
 * page faults cost ~16 us per 4 KiB page (4 ms per fresh MiB), more than the compare.
 */
static pthread_mutex_t diff_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *diff_pool[4];
static int diff_pool_n = 0;

static uint8_t *diff_buf_get(void) {
  uint8_t *b = NULL;
  pthread_mutex_lock(&diff_pool_lock);
  if (diff_pool_n > 0) b = diff_pool[--diff_pool_n];
  pthread_mutex_unlock(&diff_pool_lock);
  return b != NULL ? b : (uint8_t *)malloc(DIFF_CHUNK);
}

static void diff_buf_put(uint8_t *b) {
  if (b == NULL) return;
  pthread_mutex_lock(&diff_pool_lock);
  if (diff_pool_n < 4) {
    diff_pool[diff_pool_n++] = b;
    b = NULL;
  }
  pthread_mutex_unlock(&diff_pool_lock);
  free(b);
}

static void *diff_part_run(void *arg) {
  DiffPart *p = (DiffPart *)arg;
  uint8_t *a = diff_buf_get(), *b = diff_buf_get();
  if (a == NULL || b == NULL) {
    p->err = ENOMEM;
    p->what = "allocate";
    goto done;
  }
  for (size_t i = 0; i < p->nranges && p->err == 0; i++) {
    double s = p->ranges[2 * i] < p->from ? p->from : p->ranges[2 * i];
    double e = p->ranges[2 * i + 1] > p->to ? p->to : p->ranges[2 * i + 1];
    for (double at = s; at < e && p->err == 0; at += DIFF_CHUNK) {
      size_t n = (size_t)((e - at) < DIFF_CHUNK ? (e - at) : DIFF_CHUNK);
      int r = read_full(p->disk, a, n, (off_t)at);
      if (r == 0) r = read_full(p->shadow, b, n, (off_t)at);
      if (r != 0) {
        p->err = r;
        p->what = "read";
        break;
      }
      size_t run = (size_t)-1;
      for (size_t k = 0;; k += DIFF_BLOCK) {
        bool end = k >= n;
        size_t stop = end ? n : k;
        bool d = !end && memcmp(a + k, b + k, n - k < DIFF_BLOCK ? n - k : DIFF_BLOCK) != 0;
        if (d && run == (size_t)-1) run = k;
        if (!d && run != (size_t)-1) {
          if (p->update && (r = write_full(p->shadow, a + run, stop - run, (off_t)at + (off_t)run)) != 0) {
            p->err = r;
            p->what = "write";
            break;
          }
          if ((r = diff_push(p, at + (double)run, at + (double)stop)) != 0) {
            p->err = r;
            p->what = "allocate";
            break;
          }
          run = (size_t)-1;
        }
        if (end) break;
      }
    }
  }
done:
  diff_buf_put(a);
  diff_buf_put(b);
  return NULL;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  double *ranges;
  size_t nranges;
  DiffPart parts[2];
} DiffJob;

static void diff_execute(napi_env env, void *data) {
  (void)env;
  DiffJob *j = (DiffJob *)data;
  pthread_t t;
  bool threaded = pthread_create(&t, NULL, diff_part_run, &j->parts[1]) == 0;
  diff_part_run(&j->parts[0]);
  if (threaded) pthread_join(t, NULL);
  else diff_part_run(&j->parts[1]);
}

static void diff_complete(napi_env env, napi_status status, void *data) {
  DiffJob *j = (DiffJob *)data;
  napi_value v;
  DiffPart *p0 = &j->parts[0], *p1 = &j->parts[1];
  int err = p0->err ? p0->err : p1->err;
  const char *what = p0->err ? p0->what : p1->what;
  if (status != napi_ok || err != 0) {
    char text[160];
    snprintf(text, sizeof text, "diffRanges: cannot %s: %s", status != napi_ok ? "run" : what, status != napi_ok ? "cancelled" : strerror(err));
    napi_value msg;
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &v);
    napi_reject_deferred(env, j->deferred, v);
  } else {
    /* Join the halves, merging a run that crosses the split. */
    for (size_t i = 0; i < p1->nout; i++) {
      if (diff_push(p0, p1->out[2 * i], p1->out[2 * i + 1]) != 0) break;
    }
    napi_value ab;
    void *mem;
    napi_create_arraybuffer(env, p0->nout * 2 * sizeof(double), &mem, &ab);
    if (p0->nout > 0) memcpy(mem, p0->out, p0->nout * 2 * sizeof(double));
    napi_create_typedarray(env, napi_float64_array, p0->nout * 2, ab, 0, &v);
    napi_resolve_deferred(env, j->deferred, v);
  }
  free(p0->out);
  free(p1->out);
  free(j->ranges);
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value js_diff_ranges(napi_env env, napi_callback_info info) {
  ARGS(4);
  int32_t disk, shadow;
  uint32_t update;
  napi_typedarray_type rt;
  size_t rn;
  void *rp;
  napi_value rab;
  size_t roff;
  if (napi_get_value_int32(env, argv[0], &disk) != napi_ok || napi_get_value_int32(env, argv[1], &shadow) != napi_ok) {
    napi_throw_type_error(env, NULL, "Expected file descriptors");
    return NULL;
  }
  if (napi_get_typedarray_info(env, argv[2], &rt, &rn, &rp, &rab, &roff) != napi_ok || rt != napi_float64_array || rn % 2 != 0) {
    napi_throw_type_error(env, NULL, "Expected a Float64Array of [start, end) pairs");
    return NULL;
  }
  if (!get_u32(env, argv[3], &update)) return NULL;
  const double *r = (const double *)rp;
  double total = 0;
  for (size_t i = 0; i < rn; i += 2) {
    if (!(r[i] >= 0 && r[i + 1] >= r[i] && fmod(r[i], DIFF_BLOCK) == 0 && (i == 0 || r[i] >= r[i - 1]))) {
      napi_throw_range_error(env, NULL, "diffRanges: ranges must be sorted, disjoint and start on 4 KiB blocks");
      return NULL;
    }
    total += r[i + 1] - r[i];
  }
  DiffJob *j = (DiffJob *)calloc(1, sizeof(DiffJob));
  double *copy = (double *)malloc(rn ? rn * sizeof(double) : 1);
  if (j == NULL || copy == NULL) {
    free(j);
    free(copy);
    napi_throw_error(env, NULL, "diffRanges: out of memory");
    return NULL;
  }
  if (rn) memcpy(copy, r, rn * sizeof(double));
  j->ranges = copy;
  j->nranges = rn / 2;
  /* The split: the block boundary at which half of the bytes lie before. */
  double half = total / 2, split = rn ? copy[rn - 1] : 0, seen = 0;
  for (size_t i = 0; i < rn; i += 2) {
    double len = copy[i + 1] - copy[i];
    if (seen + len >= half) {
      split = copy[i] + floor((half - seen) / DIFF_BLOCK) * DIFF_BLOCK;
      break;
    }
    seen += len;
  }
  for (int k = 0; k < 2; k++) {
    DiffPart *p = &j->parts[k];
    p->disk = disk;
    p->shadow = shadow;
    p->update = update != 0;
    p->ranges = copy;
    p->nranges = rn / 2;
    p->from = k == 0 ? 0 : split;
    p->to = k == 0 ? split : INFINITY;
  }
  return queue_work(env, "obd:diffRanges", diff_execute, diff_complete, j, &j->work, &j->deferred);
}

/*
 * execve(path, argv, envp): replaces this process image (same PID). Standard input,
 * output and error are handed on (Node marks them close-on-exec at start-up; that mark
 * is cleared first); other descriptors follow their close-on-exec flag. Returns -errno
 * only when it fails.
 */
static char **string_array(napi_env env, napi_value arr, bool *ok) {
  uint32_t n = 0;
  *ok = false;
  if (napi_get_array_length(env, arr, &n) != napi_ok) return NULL;
  char **out = (char **)calloc((size_t)n + 1, sizeof(char *));
  if (out == NULL) return NULL;
  for (uint32_t i = 0; i < n; i++) {
    napi_value v;
    size_t len = 0;
    if (napi_get_element(env, arr, i, &v) != napi_ok || napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) goto fail;
    out[i] = (char *)malloc(len + 1);
    if (out[i] == NULL || napi_get_value_string_utf8(env, v, out[i], len + 1, &len) != napi_ok) goto fail;
  }
  *ok = true;
  return out;
fail:
  for (uint32_t i = 0; i < n; i++) free(out[i]);
  free(out);
  return NULL;
}

static void free_strings(char **a) {
  if (a == NULL) return;
  for (char **p = a; *p != NULL; p++) free(*p);
  free(a);
}

static napi_value js_execve(napi_env env, napi_callback_info info) {
  ARGS(3);
  char path[4096];
  size_t len = 0;
  if (napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len) != napi_ok || len == 0 || len >= sizeof path - 1) {
    napi_throw_type_error(env, NULL, "execve: expected a path");
    return NULL;
  }
  bool ok_a, ok_e;
  char **a = string_array(env, argv[1], &ok_a);
  char **e = string_array(env, argv[2], &ok_e);
  if (!ok_a || !ok_e) {
    free_strings(a);
    free_strings(e);
    napi_throw_type_error(env, NULL, "execve: expected arrays of strings");
    return NULL;
  }
  for (int fd = 0; fd <= 2; fd++) {
    int flags = fcntl(fd, F_GETFD);
    if (flags >= 0 && (flags & FD_CLOEXEC)) fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
  }
  execve(path, a, e);
  int err = errno;
  free_strings(a);
  free_strings(e);
  return make_i64(env, -err);
}

/*
 * mount(source, target, fstype, flags, data) and loopAttach(file, readOnly, directIo):
 * Promise<number>, run on a pool thread. Both calls may read the device they mount or
 * attach, and that device may be served by this very process (an in-process NBD server
 * behind nbdfuse): a call on the JavaScript thread would wait for itself.
 *
 * mount: mount(2), 0 or -errno (the caller parses the option string,
 * src/native/mount.ts). loopAttach: attaches a free loop device to `file` as
 * `losetup -f [--direct-io=on] [-r]` does (LOOP_CTL_GET_FREE, LOOP_CONFIGURE, retried
 * when another process takes the same device first; direct I/O the file does not
 * support is left off); the device number, or -errno.
 */
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int kind; /* 0 mount, 1 loop */
  char a[4096], b[4096], c[256], d[4096];
  unsigned long flags;
  bool ro, dio;
  int64_t result;
} SysJob;

static bool get_string(napi_env env, napi_value v, char *buf, size_t cap) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, buf, cap, &len) != napi_ok || len >= cap - 1) {
    napi_throw_type_error(env, NULL, "Expected a string shorter than the buffer");
    return false;
  }
  return true;
}

static int64_t loop_attach(const char *file, bool ro, bool dio) {
  int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) return -errno;
  int mode = (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  int back = open(file, mode | (dio ? O_DIRECT : 0));
  if (back < 0 && dio && errno == EINVAL) back = open(file, mode);
  if (back < 0) {
    int e = errno;
    close(ctl);
    return -e;
  }
  int64_t result = -EBUSY;
  for (int attempt = 0; attempt < 16; attempt++) {
    int n = ioctl(ctl, LOOP_CTL_GET_FREE);
    if (n < 0) {
      result = -errno;
      break;
    }
    char dev[64];
    snprintf(dev, sizeof dev, "/dev/loop%d", n);
    int lfd = -1;
    for (int wait = 0; wait < 100; wait++) {
      lfd = open(dev, mode);
      if (lfd >= 0 || errno != ENOENT) break;
      usleep(1000); /* the node appears a moment after GET_FREE */
    }
    if (lfd < 0) {
      result = -errno;
      break;
    }
    struct loop_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.fd = (uint32_t)back;
    cfg.info.lo_flags = (ro ? LO_FLAGS_READ_ONLY : 0) | (dio ? LO_FLAGS_DIRECT_IO : 0);
    size_t fl = strlen(file);
    memcpy(cfg.info.lo_file_name, file, fl < LO_NAME_SIZE - 1 ? fl : LO_NAME_SIZE - 1);
    int r = ioctl(lfd, LOOP_CONFIGURE, &cfg);
    if (r < 0 && errno == EINVAL && dio) {
      cfg.info.lo_flags &= ~LO_FLAGS_DIRECT_IO;
      r = ioctl(lfd, LOOP_CONFIGURE, &cfg);
    }
    int e = errno;
    close(lfd);
    if (r == 0) {
      result = n;
      break;
    }
    if (e != EBUSY) {
      result = -e;
      break;
    }
  }
  close(back);
  close(ctl);
  return result;
}

static void sys_execute(napi_env env, void *data) {
  (void)env;
  SysJob *j = (SysJob *)data;
  if (j->kind == 0) {
    int r = mount(j->a, j->b, j->c, j->flags, j->d[0] ? j->d : NULL);
    j->result = r == 0 ? 0 : -errno;
  } else {
    j->result = loop_attach(j->a, j->ro, j->dio);
  }
}

static void sys_complete(napi_env env, napi_status status, void *data) {
  SysJob *j = (SysJob *)data;
  napi_value v;
  napi_create_int64(env, status == napi_ok ? j->result : -ECANCELED, &v);
  napi_resolve_deferred(env, j->deferred, v);
  napi_delete_async_work(env, j->work);
  free(j);
}


static napi_value js_mount(napi_env env, napi_callback_info info) {
  ARGS(5);
  SysJob *j = (SysJob *)calloc(1, sizeof(SysJob));
  double flags;
  if (j == NULL) {
    napi_throw_error(env, NULL, "mount: out of memory");
    return NULL;
  }
  if (!get_string(env, argv[0], j->a, sizeof j->a) || !get_string(env, argv[1], j->b, sizeof j->b) ||
      !get_string(env, argv[2], j->c, sizeof j->c) || !get_string(env, argv[4], j->d, sizeof j->d) ||
      napi_get_value_double(env, argv[3], &flags) != napi_ok) {
    free(j);
    return NULL;
  }
  j->kind = 0;
  j->flags = (unsigned long)flags;
  return queue_work(env, "obd:mount", sys_execute, sys_complete, j, &j->work, &j->deferred);
}

static napi_value js_loop_attach(napi_env env, napi_callback_info info) {
  ARGS(3);
  SysJob *j = (SysJob *)calloc(1, sizeof(SysJob));
  if (j == NULL) {
    napi_throw_error(env, NULL, "loopAttach: out of memory");
    return NULL;
  }
  if (!get_string(env, argv[0], j->a, sizeof j->a)) {
    free(j);
    return NULL;
  }
  if (napi_get_value_bool(env, argv[1], &j->ro) != napi_ok || napi_get_value_bool(env, argv[2], &j->dio) != napi_ok) {
    free(j);
    napi_throw_type_error(env, NULL, "loopAttach: expected (file, readOnly, directIo)");
    return NULL;
  }
  j->kind = 1;
  return queue_work(env, "obd:loopAttach", sys_execute, sys_complete, j, &j->work, &j->deferred);
}

/* isAllZero(buf): whether every byte is zero (used by sparse export) */
static napi_value js_is_all_zero(napi_env env, napi_callback_info info) {
  ARGS(1);
  uint8_t *p;
  size_t n;
  if (!get_bytes(env, argv[0], &p, &n)) return NULL;
  bool zero = true;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    memcpy(&v, p + i, 8);
    if (v) { zero = false; break; }
  }
  if (zero) for (; i < n; i++) if (p[i]) { zero = false; break; }
  napi_value r;
  napi_get_boolean(env, zero, &r);
  return r;
}

/* seekData(fd, offset) / seekHole(fd, offset): lseek SEEK_DATA / SEEK_HOLE.
 * Returns the offset, -1 for ENXIO (no more data), or -(errno)-1000 on other errors. */
static napi_value seek_common(napi_env env, napi_callback_info info, int whence) {
  ARGS(2);
  int32_t fd;
  int64_t off;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &off) != napi_ok) {
    napi_throw_type_error(env, NULL, "Expected (fd, offset)");
    return NULL;
  }
  off_t r = lseek(fd, (off_t)off, whence);
  if (r < 0) return make_i64(env, errno == ENXIO ? -1 : -(int64_t)errno - 1000);
  return make_i64(env, (int64_t)r);
}
static napi_value js_seek_data(napi_env env, napi_callback_info info) { return seek_common(env, info, SEEK_DATA); }
static napi_value js_seek_hole(napi_env env, napi_callback_info info) { return seek_common(env, info, SEEK_HOLE); }

/* punchHole(fd, offset, length): fallocate(PUNCH_HOLE|KEEP_SIZE). 0 or -errno. */
static napi_value js_punch_hole(napi_env env, napi_callback_info info) {
  ARGS(3);
  int32_t fd;
  int64_t off, len;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int64(env, argv[1], &off) != napi_ok ||
      napi_get_value_int64(env, argv[2], &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "Expected (fd, offset, length)");
    return NULL;
  }
  int r = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len);
  return make_i64(env, r < 0 ? -(int64_t)errno : 0);
}

/* ---------- FUSE READ fast path ----------
 *
 * fuseServeStart(params, extents, sources, starts, callback) starts `threads` C threads
 * that read requests from a /dev/fuse fd. A READ of the served file (node 2) whose
 * offset and size are multiples of 512 is answered here: the extent table (the merged
 * LSMT index of a read-only stack: sorted, non-overlapping sector ranges, each zeros or
 * a range of one source) says where each piece lives, a source is either plain bytes
 * at `base` of a file or a ZFile (jump table `starts`), and the data is pread, checked
 * (block CRC-32C), decoded into the reply buffer and written with the out header in one
 * write(2). Everything else — other opcodes, unaligned reads, and any read that fails
 * here (short file, CRC mismatch, decode error) — is copied and handed to JavaScript
 * through a thread-safe function: callback(0, requestBytes). JavaScript answers those
 * itself (with retries and typed errors on its own device), so a failure here costs
 * speed, never correctness. callback(1, reason) once when the last thread exits
 * (0 unmounted: ENODEV; 1 stopped; 2 failed); callback(2, text) for a log line.
 *
 * Threads block in read(2); they leave on ENODEV, or on the stop flag while the fd is
 * not mounted yet (EPERM, polled every 2 ms), like the JavaScript readers.
 */
#define FS_SECTOR 512u
#define FS_OP_READ 15u
#define FS_FILE_NODE 2u
#define FS_IN_HEADER 40u
#define FS_READ_IN 40u
#define FS_OUT_HEADER 16u
#define FS_PAGE 4096u
#define FS_MAX_BLOCK 65536u
/* Stored bytes read in one pread when decoding a run of ZFile blocks. */
#define FS_BATCH (1u << 20)
/*
 * Runs of stored blocks at least this long are read with O_DIRECT: the disk writes them
 * straight into the scratch buffer. Measured on 1 MiB sequential reads: half of the
 * CPU time went to copying the stored bytes out of the page cache (a cold copy: the
 * pages had just been read). Small (random) reads stay buffered: readahead and the
 * page cache serve their neighbours.
 */
#define FS_DIRECT_MIN (64u * 1024)
#define FS_ALIGN 4096u

typedef struct {
  int fd;
  uint64_t base;    /* file offset of the source's byte 0 */
  uint32_t algo;    /* 0 plain, 1 lz4, 2 zstd */
  uint32_t bs;      /* ZFile block size */
  uint32_t verify;  /* blocks end with a CRC-32C */
  uint64_t usize;   /* decoded size (ZFile) */
  uint64_t nblocks;
  uint64_t *starts; /* nblocks + 1 absolute file offsets (ZFile) */
  int dfd;          /* the same file opened O_DIRECT for large reads, or -1 */
  atomic_int direct; /* 0 once the file system refused an O_DIRECT read */
} fs_source;

typedef struct {
  uint64_t off, end, moff; /* sectors */
  uint32_t zeroed, src;
} fs_extent;

typedef struct {
  int fd;
  uint64_t size;
  uint32_t max_io;
  fs_extent *ext;
  size_t next;
  fs_source *src;
  size_t nsrc;
  napi_threadsafe_function tsfn;
  atomic_int stop;
  atomic_int running;
  atomic_int refs;
  atomic_int ended[3];
  atomic_uint_fast64_t served, forwarded;
} fs_server;

typedef struct {
  int kind;
  size_t n;
  uint8_t data[];
} fs_item;

typedef struct {
  uint8_t *out;     /* reply: out header + data */
  uint8_t *scratch; /* stored ZFile blocks */
  uint8_t *block;   /* one decoded block */
  uint8_t *direct;  /* FS_ALIGN-aligned: stored blocks read with O_DIRECT */
  ZSTD_DCtx *zstd;
} fs_ctx;

static void fs_free_tables(fs_server *S) {
  for (size_t i = 0; i < S->nsrc; i++) {
    if (S->src[i].fd >= 0) close(S->src[i].fd);
    if (S->src[i].dfd >= 0) close(S->src[i].dfd);
    free(S->src[i].starts);
  }
  free(S->src);
  free(S->ext);
  S->src = NULL;
  S->ext = NULL;
  S->nsrc = 0;
  S->next = 0;
}

static void fs_unref(fs_server *S) {
  if (atomic_fetch_sub(&S->refs, 1) == 1) {
    fs_free_tables(S);
    free(S);
  }
}

static void fs_post(fs_server *S, int kind, const void *data, size_t n) {
  fs_item *it = malloc(sizeof(fs_item) + n);
  if (it == NULL) return;
  it->kind = kind;
  it->n = n;
  if (n) memcpy(it->data, data, n);
  if (napi_call_threadsafe_function(S->tsfn, it, napi_tsfn_blocking) != napi_ok) free(it);
}

static void fs_log(fs_server *S, const char *text) { fs_post(S, 2, text, strlen(text)); }

static void fs_call_js(napi_env env, napi_value cb, void *context, void *data) {
  (void)context;
  fs_item *it = data;
  if (env != NULL && cb != NULL) {
    napi_value argv[2], undef;
    napi_create_int32(env, it->kind, &argv[0]);
    if (it->kind == 0) {
      void *copy;
      napi_create_buffer_copy(env, it->n, it->data, &copy, &argv[1]);
    } else if (it->kind == 1) {
      napi_create_int32(env, it->n ? it->data[0] : 2, &argv[1]);
    } else {
      napi_create_string_utf8(env, (const char *)it->data, it->n, &argv[1]);
    }
    napi_get_undefined(env, &undef);
    napi_call_function(env, undef, cb, 2, argv, NULL);
  }
  free(it);
}

/* pread exactly n bytes; returns bytes read (< n only at end of file) or -1. */
static int64_t fs_pread_full(int fd, uint8_t *dst, size_t n, uint64_t at) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = pread(fd, dst + done, n - done, (off_t)(at + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    done += (size_t)r;
  }
  return (int64_t)done;
}

/* `len` bytes of ZFile source `s` at decoded position `pos` into dst; 0 or -1. */
static int fs_read_zfile(fs_source *s, fs_ctx *T, uint8_t *dst, uint64_t pos, uint64_t len) {
  const uint64_t bs = s->bs, end = pos + len;
  if (end > s->usize) return -1;
  uint64_t b = pos / bs;
  const uint64_t last = (end - 1) / bs;
  while (b <= last) {
    uint64_t e = b + 1;
    while (e <= last && s->starts[e + 1] - s->starts[b] <= FS_BATCH) e++;
    const uint64_t stored = s->starts[e] - s->starts[b];
    if (stored > FS_BATCH + FS_MAX_BLOCK + 1024) return -1;
    const uint8_t *p = NULL;
    if (stored >= FS_DIRECT_MIN && atomic_load(&s->direct)) {
      const uint64_t from = s->starts[b] / FS_ALIGN * FS_ALIGN;
      const uint64_t to = (s->starts[e] + FS_ALIGN - 1) / FS_ALIGN * FS_ALIGN;
      int64_t got = fs_pread_full(s->dfd, T->direct, (size_t)(to - from), from);
      if (got >= (int64_t)(s->starts[e] - from)) {
        p = T->direct + (s->starts[b] - from);
      } else if (got < 0 && errno == EINVAL) {
        atomic_store(&s->direct, 0); /* the file system refuses O_DIRECT here: stay buffered */
      }
    }
    if (p == NULL) {
      if (fs_pread_full(s->fd, T->scratch, stored, s->starts[b]) != (int64_t)stored) return -1;
      p = T->scratch;
    }
    for (uint64_t i = b; i < e; i++) {
      size_t L = (size_t)(s->starts[i + 1] - s->starts[i]);
      size_t clen = L;
      if (s->verify) {
        if (L < 5) return -1;
        clen = L - 4;
        uint32_t want;
        memcpy(&want, p + clen, 4);
        if (crc32c_raw(100007u, p, clen) != want) return -1;
      }
      const uint64_t bstart = i * bs;
      const uint64_t ulen = s->usize - bstart < bs ? s->usize - bstart : bs;
      const uint64_t from = pos > bstart ? pos : bstart;
      const uint64_t to = end < bstart + ulen ? end : bstart + ulen;
      const bool whole = from == bstart && to == bstart + ulen && end - bstart >= bs;
      uint8_t *out = whole ? dst + (bstart - pos) : T->block;
      int64_t got;
      if (s->algo == 1) {
        got = LZ4_decompress_safe((const char *)p, (char *)out, (int)clen, (int)bs);
      } else {
        if (T->zstd == NULL) T->zstd = ZSTD_createDCtx();
        size_t r = T->zstd == NULL ? (size_t)-1 : ZSTD_decompressDCtx(T->zstd, out, bs, p, clen);
        got = ZSTD_isError(r) ? -1 : (int64_t)r;
      }
      if (got != (int64_t)ulen) return -1;
      if (!whole) memcpy(dst + (from - pos), T->block + (from - bstart), (size_t)(to - from));
      p += L;
    }
    b = e;
  }
  return 0;
}

static int fs_read_source(fs_source *s, fs_ctx *T, uint8_t *dst, uint64_t pos, uint64_t len) {
  if (s->algo != 0) return fs_read_zfile(s, T, dst, pos, len);
  int64_t got = fs_pread_full(s->fd, dst, (size_t)len, s->base + pos);
  if (got < 0) return -1;
  /* Past the end of a layer file reads as zeros, as the LSMT reader does. */
  if ((uint64_t)got < len) memset(dst + got, 0, (size_t)(len - (uint64_t)got));
  return 0;
}

/* Device bytes [off, off+len) (multiples of 512) into dst; 0 or -1. */
static int fs_fill(fs_server *S, fs_ctx *T, uint8_t *dst, uint64_t off, uint64_t len) {
  const uint64_t s = off / FS_SECTOR, e = (off + len) / FS_SECTOR;
  size_t lo = 0, hi = S->next;
  while (lo < hi) { /* first extent ending after s */
    size_t mid = lo + (hi - lo) / 2;
    if (S->ext[mid].end <= s) lo = mid + 1;
    else hi = mid;
  }
  uint64_t cur = s;
  for (size_t i = lo; cur < e; i++) {
    if (i >= S->next || S->ext[i].off >= e) {
      memset(dst + (cur - s) * FS_SECTOR, 0, (size_t)((e - cur) * FS_SECTOR));
      break;
    }
    const fs_extent *x = &S->ext[i];
    if (x->off > cur) {
      memset(dst + (cur - s) * FS_SECTOR, 0, (size_t)((x->off - cur) * FS_SECTOR));
      cur = x->off;
    }
    const uint64_t pe = x->end < e ? x->end : e;
    uint8_t *d = dst + (cur - s) * FS_SECTOR;
    const uint64_t n = (pe - cur) * FS_SECTOR;
    if (x->zeroed) {
      memset(d, 0, (size_t)n);
    } else {
      if (x->src >= S->nsrc) return -1;
      if (fs_read_source(&S->src[x->src], T, d, (x->moff + (cur - x->off)) * FS_SECTOR, n) != 0) return -1;
    }
    cur = pe;
  }
  return 0;
}

/* 1: answered; 0: hand to JavaScript; -1: the connection is gone. */
static int fs_serve_read(fs_server *S, fs_ctx *T, const uint8_t *in) {
  uint64_t unique, off;
  uint32_t size;
  memcpy(&unique, in + 8, 8);
  memcpy(&off, in + FS_IN_HEADER + 8, 8);
  memcpy(&size, in + FS_IN_HEADER + 16, 4);
  uint64_t len = size < S->max_io ? size : S->max_io;
  const uint64_t avail = off < S->size ? S->size - off : 0;
  if (len > avail) len = avail;
  if ((off | len) % FS_SECTOR != 0) return 0;
  if (len > 0 && fs_fill(S, T, T->out + FS_OUT_HEADER, off, len) != 0) return 0;
  const uint32_t total = (uint32_t)(FS_OUT_HEADER + len);
  const int32_t error = 0;
  memcpy(T->out, &total, 4);
  memcpy(T->out + 4, &error, 4);
  memcpy(T->out + 8, &unique, 8);
  for (;;) {
    ssize_t w = write(S->fd, T->out, total);
    if (w >= 0) break;
    if (errno == EINTR) continue;
    if (errno == ENODEV) return -1;
    if (errno != ENOENT) fs_log(S, "fuse: cannot write a READ reply");
    break;
  }
  atomic_fetch_add(&S->served, 1);
  return 1;
}

static void *fs_thread(void *arg) {
  fs_server *S = arg;
  const size_t inlen = (size_t)S->max_io + FS_PAGE;
  uint8_t *in = malloc(inlen);
  fs_ctx T = {malloc(FS_OUT_HEADER + (size_t)S->max_io), malloc(FS_BATCH + FS_MAX_BLOCK + 1024), malloc(FS_MAX_BLOCK), NULL, NULL};
  void *direct = NULL;
  if (posix_memalign(&direct, FS_ALIGN, FS_BATCH + FS_MAX_BLOCK + 3 * FS_ALIGN) == 0) T.direct = direct;
  int reason = 2;
  if (in == NULL || T.out == NULL || T.scratch == NULL || T.block == NULL || T.direct == NULL) {
    fs_log(S, "fuse: a native reader cannot allocate its buffers");
  } else {
    for (;;) {
      ssize_t n = read(S->fd, in, inlen);
      if (n < 0) {
        const int e = errno;
        if (e == ENODEV) {
          reason = 0;
          break;
        }
        if (e == EPERM) { /* not mounted yet */
          if (atomic_load(&S->stop)) {
            reason = 1;
            break;
          }
          struct timespec ts = {0, 2000000};
          nanosleep(&ts, NULL);
          continue;
        }
        if (e == ENOENT || e == EINTR || e == EAGAIN) continue;
        char text[96];
        snprintf(text, sizeof text, "fuse: a native reader cannot read a request: errno %d", e);
        fs_log(S, text);
        break;
      }
      if ((size_t)n < FS_IN_HEADER) continue;
      uint32_t opcode;
      uint64_t nodeid;
      memcpy(&opcode, in + 4, 4);
      memcpy(&nodeid, in + 16, 8);
      if (opcode == FS_OP_READ && nodeid == FS_FILE_NODE && (size_t)n >= FS_IN_HEADER + FS_READ_IN) {
        const int r = fs_serve_read(S, &T, in);
        if (r < 0) {
          reason = 0;
          break;
        }
        if (r > 0) continue;
      }
      atomic_fetch_add(&S->forwarded, 1);
      fs_post(S, 0, in, (size_t)n);
    }
  }
  free(in);
  free(T.out);
  free(T.scratch);
  free(T.block);
  free(T.direct);
  if (T.zstd != NULL) ZSTD_freeDCtx(T.zstd);
  atomic_fetch_add(&S->ended[reason], 1);
  if (atomic_fetch_sub(&S->running, 1) == 1) {
    const uint8_t end = atomic_load(&S->ended[0]) ? 0 : atomic_load(&S->ended[1]) ? 1 : 2;
    fs_free_tables(S); /* every loop has ended: nobody reads the tables any more */
    fs_post(S, 1, &end, 1);
  }
  napi_release_threadsafe_function(S->tsfn, napi_tsfn_release);
  fs_unref(S);
  return NULL;
}

static void fs_handle_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  fs_unref((fs_server *)data);
}

static bool get_f64s(napi_env env, napi_value v, double **data, size_t *len) {
  napi_typedarray_type type;
  void *ptr;
  napi_value ab;
  size_t off;
  if (napi_get_typedarray_info(env, v, &type, len, &ptr, &ab, &off) != napi_ok || type != napi_float64_array) {
    napi_throw_type_error(env, NULL, "Expected a Float64Array");
    return false;
  }
  *data = (double *)ptr;
  return true;
}

#define FS_PARAMS 4
#define FS_EXTENT_FIELDS 5
#define FS_SOURCE_FIELDS 7

/*
 * fuseServeStart(params, extents, sources, starts, callback): handle
 *   params  Float64Array [fd, threads, device size, max io]
 *   extents Float64Array, 5 per extent: [offset, length, moffset (sectors), zeroed, source]
 *   sources Float64Array, 7 per source: [fd, base, algo (0 plain, 1 lz4, 2 zstd),
 *           block size, verify, decoded size, block count]; the fd is duplicated
 *   starts  Float64Array: per ZFile source in order, block count + 1 offsets from base
 * Throws on malformed tables; the handle goes to fuseServeStop / fuseServeStats.
 */
static napi_value js_fuse_serve_start(napi_env env, napi_callback_info info) {
  ARGS(5);
  double *pa, *xa, *sa, *ta;
  size_t pn, xn, sn, tn;
  if (!get_f64s(env, argv[0], &pa, &pn) || !get_f64s(env, argv[1], &xa, &xn) || !get_f64s(env, argv[2], &sa, &sn) ||
      !get_f64s(env, argv[3], &ta, &tn))
    return NULL;
  if (pn < FS_PARAMS || xn % FS_EXTENT_FIELDS != 0 || sn % FS_SOURCE_FIELDS != 0) {
    napi_throw_range_error(env, NULL, "fuseServeStart: malformed tables");
    return NULL;
  }
  const int threads = (int)pa[1];
  if (threads < 1 || threads > 256 || pa[3] < FS_PAGE || pa[3] > (1 << 24)) {
    napi_throw_range_error(env, NULL, "fuseServeStart: bad thread count or max io");
    return NULL;
  }
  fs_server *S = calloc(1, sizeof(fs_server));
  if (S == NULL) return NULL;
  S->fd = (int)pa[0];
  S->size = (uint64_t)pa[2];
  S->max_io = (uint32_t)pa[3];
  S->next = xn / FS_EXTENT_FIELDS;
  S->nsrc = sn / FS_SOURCE_FIELDS;
  S->ext = calloc(S->next ? S->next : 1, sizeof(fs_extent));
  S->src = calloc(S->nsrc ? S->nsrc : 1, sizeof(fs_source));
  const char *bad = S->ext == NULL || S->src == NULL ? "out of memory" : NULL;
  for (size_t i = 0; i < S->nsrc; i++) {
    S->src[i].fd = -1;
    S->src[i].dfd = -1;
  }
  uint64_t prev_end = 0;
  for (size_t i = 0; bad == NULL && i < S->next; i++) {
    const double *f = xa + i * FS_EXTENT_FIELDS;
    fs_extent *x = &S->ext[i];
    x->off = (uint64_t)f[0];
    x->end = x->off + (uint64_t)f[1];
    x->moff = (uint64_t)f[2];
    x->zeroed = f[3] != 0;
    x->src = (uint32_t)f[4];
    if (f[1] <= 0 || x->off < prev_end || (!x->zeroed && x->src >= S->nsrc)) bad = "extents unsorted, empty or naming no source";
    prev_end = x->end;
  }
  size_t t = 0;
  for (size_t i = 0; bad == NULL && i < S->nsrc; i++) {
    const double *f = sa + i * FS_SOURCE_FIELDS;
    fs_source *s = &S->src[i];
    s->fd = fcntl((int)f[0], F_DUPFD_CLOEXEC, 3);
    s->base = (uint64_t)f[1];
    s->algo = (uint32_t)f[2];
    s->bs = (uint32_t)f[3];
    s->verify = f[4] != 0;
    s->usize = (uint64_t)f[5];
    s->nblocks = (uint64_t)f[6];
    if (s->fd >= 0) {
      char path[64];
      snprintf(path, sizeof path, "/proc/self/fd/%d", s->fd);
      s->dfd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
      atomic_store(&s->direct, s->dfd >= 0);
    }
    if (s->fd < 0) bad = "cannot duplicate a source fd";
    else if (s->algo > 2) bad = "unknown algorithm";
    else if (s->algo != 0) {
      if (s->bs < 512 || s->bs > FS_MAX_BLOCK || s->nblocks * (uint64_t)s->bs < s->usize || t + s->nblocks + 1 > tn) {
        bad = "bad ZFile source";
        break;
      }
      s->starts = malloc((s->nblocks + 1) * sizeof(uint64_t));
      if (s->starts == NULL) {
        bad = "out of memory";
        break;
      }
      for (uint64_t k = 0; k <= s->nblocks; k++) {
        s->starts[k] = s->base + (uint64_t)ta[t + k];
        if (k > 0 && s->starts[k] < s->starts[k - 1]) bad = "ZFile block starts decrease";
      }
      t += s->nblocks + 1;
    }
  }
  if (bad != NULL) {
    fs_free_tables(S);
    free(S);
    napi_throw_range_error(env, NULL, bad);
    return NULL;
  }
  napi_value name;
  napi_create_string_utf8(env, "obd-fuse-native", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[4], NULL, name, 0, (size_t)threads, NULL, NULL, NULL, fs_call_js, &S->tsfn) != napi_ok) {
    fs_free_tables(S);
    free(S);
    napi_throw_error(env, NULL, "fuseServeStart: cannot create the thread-safe function");
    return NULL;
  }
  atomic_store(&S->refs, threads + 1);
  atomic_store(&S->running, threads);
  for (int i = 0; i < threads; i++) {
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int rc = pthread_create(&th, &attr, fs_thread, S);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
      /* Account for the thread as one that failed at once. */
      atomic_store(&S->stop, 1);
      atomic_fetch_add(&S->ended[2], 1);
      if (atomic_fetch_sub(&S->running, 1) == 1) {
        const uint8_t end = atomic_load(&S->ended[0]) ? 0 : atomic_load(&S->ended[1]) ? 1 : 2;
        fs_free_tables(S);
        fs_post(S, 1, &end, 1);
      }
      napi_release_threadsafe_function(S->tsfn, napi_tsfn_release);
      fs_unref(S);
    }
  }
  napi_value handle;
  napi_create_external(env, S, fs_handle_finalize, NULL, &handle);
  return handle;
}

static fs_server *fs_handle(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || p == NULL) {
    napi_throw_type_error(env, NULL, "Expected a fuseServeStart handle");
    return NULL;
  }
  return p;
}

/* fuseServeStop(handle): threads waiting for the mount leave; others leave on ENODEV. */
static napi_value js_fuse_serve_stop(napi_env env, napi_callback_info info) {
  ARGS(1);
  fs_server *S = fs_handle(env, argv[0]);
  if (S == NULL) return NULL;
  atomic_store(&S->stop, 1);
  return NULL;
}

/* fuseServeStats(handle): [READs answered natively, requests handed to JavaScript]. */
static napi_value js_fuse_serve_stats(napi_env env, napi_callback_info info) {
  ARGS(1);
  fs_server *S = fs_handle(env, argv[0]);
  if (S == NULL) return NULL;
  napi_value arr, a, b;
  napi_create_array_with_length(env, 2, &arr);
  napi_create_double(env, (double)atomic_load(&S->served), &a);
  napi_create_double(env, (double)atomic_load(&S->forwarded), &b);
  napi_set_element(env, arr, 0, a);
  napi_set_element(env, arr, 1, b);
  return arr;
}

static napi_value init(napi_env env, napi_value exports) {
  crc_init();
  napi_property_descriptor props[] = {
      {"crc32c", NULL, js_crc32c, NULL, NULL, NULL, napi_default, NULL},
      {"lz4Compress", NULL, js_lz4_compress, NULL, NULL, NULL, napi_default, NULL},
      {"lz4Decompress", NULL, js_lz4_decompress, NULL, NULL, NULL, napi_default, NULL},
      {"zstdCompress", NULL, js_zstd_compress, NULL, NULL, NULL, napi_default, NULL},
      {"zstdDecompress", NULL, js_zstd_decompress, NULL, NULL, NULL, napi_default, NULL},
      {"decodeBlocks", NULL, js_decode_blocks, NULL, NULL, NULL, napi_default, NULL},
      {"encodeBlock", NULL, js_encode_block, NULL, NULL, NULL, napi_default, NULL},
      {"encodeBlocks", NULL, js_encode_blocks, NULL, NULL, NULL, napi_default, NULL},
      {"diffRanges", NULL, js_diff_ranges, NULL, NULL, NULL, napi_default, NULL},
      {"execve", NULL, js_execve, NULL, NULL, NULL, napi_default, NULL},
      {"mount", NULL, js_mount, NULL, NULL, NULL, napi_default, NULL},
      {"loopAttach", NULL, js_loop_attach, NULL, NULL, NULL, napi_default, NULL},
      {"isAllZero", NULL, js_is_all_zero, NULL, NULL, NULL, napi_default, NULL},
      {"seekData", NULL, js_seek_data, NULL, NULL, NULL, napi_default, NULL},
      {"seekHole", NULL, js_seek_hole, NULL, NULL, NULL, napi_default, NULL},
      {"punchHole", NULL, js_punch_hole, NULL, NULL, NULL, napi_default, NULL},
      {"fuseServeStart", NULL, js_fuse_serve_start, NULL, NULL, NULL, napi_default, NULL},
      {"fuseServeStop", NULL, js_fuse_serve_stop, NULL, NULL, NULL, napi_default, NULL},
      {"fuseServeStats", NULL, js_fuse_serve_stats, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  napi_value v;
  napi_get_boolean(env, have_sse42, &v);
  napi_set_named_property(env, exports, "hardwareCrc", v);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
