/* A tar shard's headers walked and settled in one pass: the optional compiled form of tar_headers.walk_shard
 * followed by tar_headers.settle, for one shard.
 *
 * Why C: a reference build walks every tar member of the shards it reads (916,688 members per million demo
 * posts; ~7 M in danbooru2023). In numpy the walk and the header checks cost ~1.6 us per member, more CPU than
 * the whole budget a reference build has over captions alone (issue #20); here they cost ~0.15 us, plus ~0.2 us
 * of the kernel copying the bytes read. The numpy path stays the reference: tar_headers.py uses this module
 * only where it was built (setup.py builds it as optional), and tests/core/test_tar_walk_compiled.py checks that
 * both give the same numbers, or both None, over a seeded fuzz of damaged headers, cut files and odd members.
 *
 * The rules are tar_headers.py's, restated here next to each test; the answer is None (the caller's slower
 * readers then decide the shard) exactly where walk_shard or settle would give None. No name read from a shard
 * is used as anything but numbers: nothing is opened, written or executed from what a header says.
 *
 * walk(fd, file_size, ext_keys, max_pixels) -> bytes | None
 *   fd, file_size: the open shard and its size (fstat'd by the caller)
 *   ext_keys: tar_headers.MEMBER_EXTS as 8-byte little-endian keys (lower-case, NUL-padded), in their order
 *   max_pixels: image_header.MAX_PIXELS
 *   -> the 7 columns of tar_headers.Headers (ids, ext, offset, size, fp, width, height) as n int64 each, one
 *      column after the other; None where the shard is not one the batch reader decides; OSError where a read
 *      fails. The GIL is released while the shard is read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCK 512
#define HEAD 30
#define SMALL (16 * 1024)     /* members below this are read in windows (tar_headers._SMALL) */
#define BIG_READ (64 * 1024)  /* a window's first size (tar_headers._BIG_READ) */
#define MAX_WINDOW (1 << 20)  /* tar_headers._MAX_WINDOW */
#define MAX_EXTS 32
#define COLUMNS 7

enum { OK = 0, UNDECIDED = 1, READ_FAILED = 2, NO_MEMORY = 3 };

typedef struct {
    int fd;
    int64_t file_size;
    unsigned char *buf;
    int64_t buf_at;  /* the file offset of buf[0] */
    int64_t buf_len;
    int64_t window;  /* the next window's size while members are small */
    int err;         /* errno of a failed read */
} Reader;

typedef struct {
    int64_t *col[COLUMNS];
    int64_t n, cap;
} Columns;

static int grow(Columns *c) {
    int64_t cap = c->cap ? c->cap * 2 : 1024;
    for (int i = 0; i < COLUMNS; i++) {
        int64_t *p = realloc(c->col[i], (size_t)cap * sizeof(int64_t));
        if (!p) return NO_MEMORY;
        c->col[i] = p;
    }
    c->cap = cap;
    return OK;
}

/* pread until `len` bytes or the end of the file; the count read, or -1 (errno kept in r->err). */
static int64_t read_at(Reader *r, unsigned char *dst, int64_t len, int64_t at) {
    int64_t got = 0;
    while (got < len) {
        ssize_t n = pread(r->fd, dst + got, (size_t)(len - got), (off_t)(at + got));
        if (n < 0) {
            if (errno == EINTR) continue;
            r->err = errno;
            return -1;
        }
        if (n == 0) break;
        got += n;
    }
    return got;
}

/* Make buf hold the file's bytes [at, at + need) where the file has them; `small` says whether the previous
 * member was small (read a window, growing) or big (read the header and the image's first 30 bytes only: the
 * disk reads the page anyway, but copying 542 bytes instead of a 4 KB page per ~400 KB image is most of the
 * kernel time of walking a real shard). */
static int fill(Reader *r, int64_t at, int64_t need, int small) {
    if (at >= r->buf_at && at + need <= r->buf_at + r->buf_len) return OK;
    if (at >= r->buf_at && r->buf_at + r->buf_len >= r->file_size) return OK;  /* all there is */
    int64_t len = small ? r->window : BLOCK + HEAD;
    if (small && r->window < MAX_WINDOW) r->window *= 4;
    if (!small) r->window = BIG_READ;
    if (len > MAX_WINDOW) len = MAX_WINDOW;
    if (len > r->file_size - at) len = r->file_size - at;
    int64_t got = read_at(r, r->buf, len, at);
    if (got < 0) return READ_FAILED;
    r->buf_at = at;
    r->buf_len = got;
    return OK;
}

/* tar_headers._field_masks: mode uid gid size mtime (octal digits, then NUL or space) and the checksum (six
 * octal digits, NUL, space); devmajor/devminor are the same form or all NUL; no ustar prefix. As there, each
 * byte is tested by a mask and an expected value, a word (8 bytes) at a time: an octal digit is
 * `byte & 0xF8 == 0x30`, a NUL or space `byte & 0xDF == 0`. */
static uint64_t field_mask[7], field_want[7], dev_mask, dev_want;

static uint64_t load64(const unsigned char *p) {
    uint64_t w;
    memcpy(&w, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

static void init_masks(void) {
    static const int spans[6][2] = {{100, 107}, {108, 115}, {116, 123}, {124, 135}, {136, 147}, {148, 154}};
    unsigned char mask[56] = {0}, want[56] = {0};
    for (int f = 0; f < 6; f++) {
        for (int i = spans[f][0]; i < spans[f][1]; i++) mask[i - 100] = 0xF8, want[i - 100] = 0x30;
        if (spans[f][1] < 148) mask[spans[f][1] - 100] = 0xDF;
    }
    mask[54] = mask[55] = 0xFF, want[55] = 32;
    for (int k = 0; k < 7; k++) field_mask[k] = load64(mask + 8 * k), field_want[k] = load64(want + 8 * k);
    unsigned char dmask[8] = {0xF8, 0xF8, 0xF8, 0xF8, 0xF8, 0xF8, 0xF8, 0xDF};
    unsigned char dwant[8] = {0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0x30, 0};
    dev_mask = load64(dmask), dev_want = load64(dwant);
}

static int octal_digit(unsigned char c) { return (c & 0xF8) == 0x30; }

static int fields_ok(const unsigned char *h) {
    for (int k = 0; k < 7; k++)
        if ((load64(h + 100 + 8 * k) & field_mask[k]) != field_want[k]) return 0;
    for (int d = 329; d < 345; d += 8) {
        uint64_t w = load64(h + d);
        if (w && (w & dev_mask) != dev_want) return 0;
    }
    return h[345] == 0;
}

/* The byte sum (`byte_sum`, from `scan_block`) with the checksum field counted as eight spaces, or tarfile's
 * signed-char sum. */
static int checksum_ok(const unsigned char *h, int64_t byte_sum) {
    int64_t total = 256 + byte_sum, stored = 0, high = 0;
    for (int i = 148; i < 156; i++) total -= h[i];
    for (int i = 148; i < 154; i++) stored = stored * 8 + (h[i] - 48);
    if (total == stored) return 1;
    for (int i = 0; i < BLOCK; i++)
        if (h[i] >= 128 && !(i >= 148 && i < 156)) high++;
    return total - 256 * high == stored;
}

/* No non-ASCII byte before the name's NUL, and no old-style "name/" directory (a NUL type whose name ends in a
 * slash): settle cannot decide a shard holding either. */
static int name_ok(const unsigned char *h, int kind, int *nul_out) {
    int nul = 24;
    for (int i = 0; i < 24; i++)
        if (h[i] == 0) {
            nul = i;
            break;
        }
    *nul_out = nul;
    int end = nul;
    if (nul == 24) {
        end = 100;
        for (int i = 0; i < 100; i++)
            if (h[i] == 0) {
                end = i;
                break;
            }
    }
    for (int i = 0; i < end; i++)
        if (h[i] >= 128) return 0;
    return !(kind == 0 && end > 0 && h[end - 1] == '/');
}

static int is_digit(unsigned char c) { return (unsigned char)(c - 48) < 10; }

/* (post id, extension code) as settle reads `(./)<1-12 digits>.<1-8 alphanumerics>`; the code is computed for
 * every header (the index keeps it), the id only for a regular file with an image extension (else -1). */
static void member(const unsigned char *h, int kind, int nul, const uint64_t *keys, int n_keys, int64_t *id,
                   int64_t *code) {
    int start = (h[0] == '.' && h[1] == '/') ? 2 : 0;
    int ndig = 0;
    while (ndig < 13 && is_digit(h[start + ndig])) ndig++;
    int dot = start + ndig;
    int valid = nul < 24 && ndig >= 1 && ndig <= 12 && h[dot < 23 ? dot : 23] == '.';
    int ext_len = nul - dot - 1;
    valid &= ext_len >= 1 && ext_len <= 8;
    uint64_t key = 0;
    for (int i = 0; i < 8; i++) {
        int at = dot + 1 + i;
        unsigned char e = h[at < 23 ? at : 23];
        if (i >= ext_len) continue;
        unsigned char folded = e | 32;
        valid &= is_digit(e) || (unsigned char)(folded - 97) < 26;
        unsigned char lower = (unsigned char)(e - 65) < 26 ? folded : e;
        key |= (uint64_t)lower << (8 * i);
    }
    *code = -1;
    for (int k = 0; k < n_keys; k++)
        if (keys[k] == key) {
            *code = k;
            break;
        }
    *id = -1;
    if (valid && *code >= 0 && (kind == 48 || kind == 0)) {
        int64_t v = 0;
        for (int i = 0; i < ndig; i++) v = v * 10 + (h[start + i] - 48);
        *id = v;
    }
}

static uint64_t fp_weights[64];

static void init_weights(void) {
    for (uint64_t i = 0; i < 64; i++) fp_weights[i] = (i * 0x9E3779B97F4A7C15ULL + 0xBF58476D1CE4E5B9ULL) | 1ULL;
}

/* One pass over a block's 64 words: its fingerprint (image_refs.header_fingerprints) and the sum of its bytes
 * (the checksum's, and 0 only for a zero block). The bytes are summed in four 16-bit lanes per word pair
 * (64 words x 2 x 255 < 65,536): a byte loop was a third of the walk's time. */
static int64_t scan_block(const unsigned char *h, int64_t *byte_sum) {
    const uint64_t lo = 0x00FF00FF00FF00FFULL;
    uint64_t sum = 0, lanes = 0;
    for (int i = 0; i < 64; i++) {
        uint64_t w = load64(h + 8 * i);
        sum += w * fp_weights[i];
        lanes += (w & lo) + ((w >> 8) & lo);
    }
    *byte_sum = (int64_t)((lanes & 0xFFFF) + ((lanes >> 16) & 0xFFFF) + ((lanes >> 32) & 0xFFFF) + (lanes >> 48));
    sum ^= sum >> 31;
    sum *= 0x94D049BB133111EBULL;
    sum ^= sum >> 29;
    return (int64_t)sum;
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* image_header.simple_webp_sizes for one image: `head` its first 30 bytes (NUL-padded), `size` its bytes. */
static void webp_size(const unsigned char *head, int64_t size, int64_t max_pixels, int64_t *wout, int64_t *hout) {
    unsigned char p[32] = {0};
    memcpy(p, head, HEAD);
    int64_t w[8];
    for (int i = 0; i < 8; i++) w[i] = le32(p + 4 * i);
    int64_t riff_end = w[1] + 8, chunk = w[4];
    int ok = size >= 30 && w[0] == 0x46464952 /* RIFF */ && w[2] == 0x50424557 /* WEBP */ && riff_end >= 16 &&
             riff_end <= size && 20 + chunk + (chunk & 1) == riff_end;
    int64_t tag = w[5] & 0xFFFFFF;
    int64_t lw = (w[6] >> 16) & 0x3FFF, lh = w[7] & 0x3FFF;
    int lossy = ok && w[3] == 0x20385056 /* "VP8 " */ && chunk >= 10 && (w[5] >> 24) == 0x9D &&
                (w[6] & 0xFFFF) == 0x2A01 && (tag & 1) == 0 && ((tag >> 1) & 7) <= 3 && ((tag >> 4) & 1) == 1 &&
                (tag >> 5) < chunk && lw > 0 && lh > 0;
    int64_t bits = (w[5] >> 8) | ((w[6] & 0xFF) << 24);
    int lossless = ok && w[3] == 0x4C385056 /* VP8L */ && chunk >= 5 && (w[5] & 0xFF) == 0x2F && (bits >> 29) == 0;
    int64_t width = lossy ? lw : lossless ? (bits & 0x3FFF) + 1 : 0;
    int64_t height = lossy ? lh : lossless ? ((bits >> 14) & 0x3FFF) + 1 : 0;
    int fits = width * height <= max_pixels;
    *wout = fits ? width : 0;
    *hout = fits ? height : 0;
}

static int walk_shard(Reader *r, const uint64_t *keys, int n_keys, int64_t max_pixels, Columns *out) {
    int64_t pos = 0;
    int small = 1;
    unsigned char head[HEAD];
    if (r->file_size <= 0) return UNDECIDED; /* an empty file: tarfile's "empty file" error */
    r->window = r->file_size <= MAX_WINDOW ? r->file_size : BIG_READ; /* a small shard: one read */
    while (pos < r->file_size) {
        int64_t left = r->file_size - pos;
        int64_t need = left < BLOCK + HEAD ? left : BLOCK + HEAD;
        int rc = fill(r, pos, need, small);
        if (rc != OK) return rc;
        int64_t rel = pos - r->buf_at, have = r->buf_len - rel;
        if (have < BLOCK) return UNDECIDED; /* a short header block */
        const unsigned char *h = r->buf + rel;
        int64_t byte_sum;
        int64_t fp = scan_block(h, &byte_sum);
        if (byte_sum == 0) break; /* the end-of-archive zero block */
        int kind = h[156];
        for (int i = 124; i < 135; i++)
            if (!octal_digit(h[i])) return UNDECIDED; /* the size is not 11 octal digits */
        int64_t size = 0;
        for (int i = 124; i < 135; i++) size = size * 8 + (h[i] - 48);
        int64_t data = pos + BLOCK, step;
        if (kind == 48 || kind == 0)
            step = (size + BLOCK - 1) / BLOCK * BLOCK;
        else if (kind >= 49 && kind <= 54)
            step = 0; /* links, devices, directories, fifos: tarfile skips no data */
        else
            return UNDECIDED; /* pax, GNU long names, sparse, contiguous, unknown */
        if (data + step > r->file_size) return UNDECIDED; /* data cut off */
        int nul;
        if (!fields_ok(h) || !checksum_ok(h, byte_sum) || !name_ok(h, kind, &nul)) return UNDECIDED;
        if (out->n == out->cap && grow(out) != OK) return NO_MEMORY;
        int64_t i = out->n++;
        member(h, kind, nul, keys, n_keys, &out->col[0][i], &out->col[1][i]);
        out->col[2][i] = data;
        out->col[3][i] = size;
        out->col[4][i] = fp;
        /* the image's first 30 bytes, NUL-padded past the end of the file */
        memset(head, 0, HEAD);
        int64_t want = r->file_size - data < HEAD ? r->file_size - data : HEAD;
        if (have >= BLOCK + want) {
            memcpy(head, h + BLOCK, (size_t)want);
        } else if (want > 0 && read_at(r, head, want, data) < 0) {
            return READ_FAILED;
        }
        webp_size(head, size, max_pixels, &out->col[5][i], &out->col[6][i]);
        small = size < SMALL;
        pos = data + step;
    }
    return OK;
}

static PyObject *walk(PyObject *self, PyObject *args) {
    int fd;
    long long file_size, max_pixels;
    Py_buffer ext_keys;
    if (!PyArg_ParseTuple(args, "iLy*L", &fd, &file_size, &ext_keys, &max_pixels)) return NULL;
    if (ext_keys.len % 8 || ext_keys.len / 8 > MAX_EXTS) {
        PyBuffer_Release(&ext_keys);
        PyErr_SetString(PyExc_ValueError, "ext_keys must hold at most 32 8-byte keys");
        return NULL;
    }
    uint64_t keys[MAX_EXTS];
    int n_keys = (int)(ext_keys.len / 8);
    for (int k = 0; k < n_keys; k++) {
        const unsigned char *p = (const unsigned char *)ext_keys.buf + 8 * k;
        uint64_t v = 0;
        for (int b = 7; b >= 0; b--) v = v << 8 | p[b];
        keys[k] = v;
    }
    PyBuffer_Release(&ext_keys);

    Reader r = {fd, file_size, NULL, 0, 0, BIG_READ, 0};
    Columns out;
    memset(&out, 0, sizeof out);
    int rc;
    /* (glibc serves a freed 1 MB block again from its heap: a buffer per call costs no fresh pages; one kept per
     * thread would be lost with each walk thread the build ends) */
    r.buf = malloc(MAX_WINDOW);
    if (!r.buf) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS rc = walk_shard(&r, keys, n_keys, (int64_t)max_pixels, &out);
    Py_END_ALLOW_THREADS free(r.buf);

    PyObject *result = NULL;
    if (rc == OK) {
        result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(COLUMNS * out.n * 8));
        if (result) {
            char *dst = PyBytes_AS_STRING(result);
            for (int c = 0; c < COLUMNS; c++) {
                if (out.n) memcpy(dst + c * out.n * 8, out.col[c], (size_t)out.n * 8);
            }
        }
    } else if (rc == UNDECIDED) {
        result = Py_NewRef(Py_None);
    } else if (rc == READ_FAILED) {
        errno = r.err;
        PyErr_SetFromErrno(PyExc_OSError);
    } else {
        PyErr_NoMemory();
    }
    for (int c = 0; c < COLUMNS; c++) free(out.col[c]);
    return result;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS, "A shard's settled tar headers as 7 int64 columns, or None (see the source)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tar_walk", NULL, -1, methods};

PyMODINIT_FUNC PyInit__tar_walk(void) {
    init_weights();
    init_masks();
    return PyModule_Create(&module);
}
