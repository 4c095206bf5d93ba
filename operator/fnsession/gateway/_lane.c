/* The lane's two scans in C: what fnsession.gateway.lane and http.py read requests and answers by when
 * this module is built (without it, lane.Lane.parse, llhttp with Python callbacks, and
 * http.whole_answer apply the same rules; a differential unit test holds all of them to one reference
 * reading). The module only scans and returns what it read: every decision that follows and all
 * bookkeeping (the pool, the requests in flight, the flights) is Python's, in lane.py and http.py.
 *
 * scan(data, want, forwarded) reads one whole HTTP/1.1 request of a strict form for
 * /fn/{function}/... and returns
 *   (function, credential, namespace, wanted, upstream)
 * or None for anything else, which the full path (llhttp) then parses. With a fourth argument
 * ``last``, a tuple of what an earlier scan returned as its first four (or None), the same four read
 * again return ``upstream`` alone: the lane's check that a connection's request names what its last
 * one did, without making the four objects only to compare them. ``want`` is a lower-case
 * header name whose value is returned as ``wanted`` (a request that repeats it is left to the full
 * path, which refuses it); ``credential`` and ``namespace`` are the Authorization and
 * x-fnsession-namespace values (None when absent); ``upstream`` is the request as it goes to the
 * instance: the function's own path and query (http.target_of's split), the header lines as they
 * came without the caller's Authorization and a "Connection: keep-alive", ``forwarded`` (the
 * X-Forwarded-For and -Proto lines), X-Forwarded-Host (the Host), the body. A function name with a
 * '%' is left to the full path, which decodes it.
 *
 * The form accepted is a subset of what llhttp accepts, so that the lane never takes a request the
 * full path would read differently: a method of GET, POST, PUT, DELETE, PATCH or OPTIONS; an
 * origin-form target of visible ASCII; exactly "HTTP/1.1"; header names of token characters right
 * before the colon; values of visible characters, spaces and tabs; CRLF line ends only; one Host;
 * at most one Content-Length of digits and exactly that many bytes after the head, then nothing;
 * no hop-by-hop header (HOP below, http.HOP_BY_HOP) but "Connection: keep-alive", no Proxy-*, no
 * X-Forwarded-* (FWD, http.FORWARDED), no Expect; no second Authorization.
 *
 * whole(data, extra) is http.whole_answer: ``data`` with the header lines ``extra`` after its status
 * line when ``data`` is exactly one whole final answer that can go to the client as it came:
 * "HTTP/1.1 " and a status from 200 to 599 other than 204 and 304, one Content-Length and exactly
 * that many bytes after the head, no hop-by-hop or Proxy-* header, the same strict lines (no
 * obs-fold); None for anything else.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

static unsigned char TOKEN[256];  /* RFC 9110 tchar */
static unsigned char VALUE[256];  /* field-vchar, SP, HTAB (obs-text included, as llhttp) */

static void init_tables(void) {
    const char *extra = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        TOKEN[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                   (c != 0 && strchr(extra, c) != NULL);
        VALUE[c] = c == '\t' || (c >= 0x20 && c != 0x7f);
    }
}

/* a header name (any case) equals a lower-case literal */
static int name_is(const char *name, Py_ssize_t len, const char *lower, Py_ssize_t lower_len) {
    if (len != lower_len) return 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 'A' && c <= 'Z') c += 32;
        if (c != (unsigned char)lower[i]) return 0;
    }
    return 1;
}
#define IS(lit) name_is(name, name_len, lit, (Py_ssize_t)sizeof(lit) - 1)

static int value_is(const char *v, Py_ssize_t len, const char *lower, Py_ssize_t lower_len) {
    return name_is(v, len, lower, lower_len);
}

/* The hop-by-hop names (http.HOP_BY_HOP; a unit test holds the two equal, as HOP_BY_HOP below) and
 * the X-Forwarded-* ones the gateway sets itself (http.FORWARDED): a request or an answer carrying one
 * (or any Proxy-* header) is never forwarded as it came, but by the full path, which drops them. */
static const char *HOP[] = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
                            "proxy-connection", "proxy-authenticate", "proxy-authorization", NULL};
static const char *FWD[] = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", NULL};

static int name_in(const char *name, Py_ssize_t len, const char **table) {
    if (len == 0) return 0;
    unsigned char first = (unsigned char)name[0];
    if (first >= 'A' && first <= 'Z') first += 32;
    for (const char **t = table; *t; t++)  /* (the first letter first: most names differ there, no strlen) */
        if ((unsigned char)(*t)[0] == first && name_is(name, len, *t, (Py_ssize_t)strlen(*t))) return 1;
    return 0;
}

static int proxy_name(const char *name, Py_ssize_t len) {  /* Proxy-* */
    return len >= 6 && name_is(name, 6, "proxy-", 6);
}

typedef struct {
    const char *name; Py_ssize_t name_len;
    const char *value; Py_ssize_t value_len;
    Py_ssize_t start, end;  /* the whole line, CRLF included */
} Header;

/* The end of a field value from d[i]: the first byte that is not VALUE's. A value is mostly long
 * runs of visible characters (a bearer token is a kilobyte), so eight bytes are looked at a time:
 * a word with no byte below 0x20 and none equal to 0x7f (obs-text, 0x80 and up, is VALUE's too) is
 * skipped whole; the word holding the end, or a tab, is read byte by byte. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
static Py_ssize_t value_end(const char *d, Py_ssize_t i, Py_ssize_t n) {
    for (;;) {
#ifdef __SSE2__
        /* sixteen at a time where SSE2 is (every x86-64): a byte below 0x20 (compared signed, after
         * flipping the top bit, so that obs-text is not taken for one) or equal to 0x7f stops it */
        const __m128i flip = _mm_set1_epi8((char)0x80), below = _mm_set1_epi8((char)(0x20 ^ 0x80)),
                      del = _mm_set1_epi8(0x7f);
        while (i + 16 <= n) {
            __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(d + i));
            __m128i stop = _mm_or_si128(_mm_cmplt_epi8(_mm_xor_si128(x, flip), below), _mm_cmpeq_epi8(x, del));
            if (_mm_movemask_epi8(stop)) break;
            i += 16;
        }
#endif
        while (i + 8 <= n) {
            uint64_t x;
            memcpy(&x, d + i, 8);
            uint64_t below = (x - 0x20 * ONES) & ~x & HIGHS;    /* some byte < 0x20 (no false alarm before it) */
            uint64_t del = ((x ^ 0x7f * ONES) - ONES) & ~(x ^ 0x7f * ONES) & HIGHS;  /* some byte == 0x7f */
            if (below | del) break;
            i += 8;
        }
        Py_ssize_t stop = i + 8 < n ? i + 8 : n;
        while (i < stop && VALUE[(unsigned char)d[i]]) i++;
        if (i < stop || i >= n) return i;  /* the end found, or the data's */
    }
}

/* One header line at d[*p]: 1 read, 0 the end of the head (the empty line), -1 malformed. */
static int header_line(const char *d, Py_ssize_t n, Py_ssize_t *p, Header *h) {
    Py_ssize_t i = *p;
    if (i + 1 < n && d[i] == '\r' && d[i + 1] == '\n') { *p = i + 2; return 0; }
    h->start = i;
    h->name = d + i;
    while (i < n && TOKEN[(unsigned char)d[i]]) i++;
    h->name_len = d + i - h->name;
    if (h->name_len == 0 || i >= n || d[i] != ':') return -1;
    i++;
    while (i < n && (d[i] == ' ' || d[i] == '\t')) i++;
    Py_ssize_t v = i;
    i = value_end(d, i, n);
    if (i + 1 >= n || d[i] != '\r' || d[i + 1] != '\n') return -1;
    Py_ssize_t e = i;
    while (e > v && (d[e - 1] == ' ' || d[e - 1] == '\t')) e--;
    h->value = d + v;
    h->value_len = e - v;
    h->end = i + 2;
    *p = i + 2;
    return 1;
}

static Py_ssize_t digits(const char *v, Py_ssize_t len) {
    if (len == 0 || len > 15) return -1;
    Py_ssize_t x = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        x = x * 10 + (v[i] - '0');
    }
    return x;
}

static const char *METHODS[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", NULL};

/* METH_FASTCALL's arguments, each a bytes object */
static int bytes_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *fn,
                      const char **ptr, Py_ssize_t *len) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", fn, want, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        if (!PyBytes_Check(args[i])) {
            PyErr_Format(PyExc_TypeError, "%s() argument %zd must be bytes, not %.50s", fn, i + 1,
                         Py_TYPE(args[i])->tp_name);
            return -1;
        }
        ptr[i] = PyBytes_AS_STRING(args[i]);
        len[i] = PyBytes_GET_SIZE(args[i]);
    }
    return 0;
}

static PyObject *bytes_or_none(int have, const char *v, Py_ssize_t len) {
    if (have) return PyBytes_FromStringAndSize(v, len);
    Py_RETURN_NONE;
}

static int same(PyObject *last, int i, int have, const char *v, Py_ssize_t len);

static PyObject *scan_impl(const char *d, Py_ssize_t n, const char *want, Py_ssize_t want_len, const char *fwd,
                           Py_ssize_t fwd_len, PyObject *last) {

    Py_ssize_t p = 0;
    while (p < n && d[p] >= 'A' && d[p] <= 'Z') p++;
    Py_ssize_t method_len = p;
    int known = 0;
    for (const char **m = METHODS; *m && method_len; m++)
        if ((*m)[0] == d[0] && (Py_ssize_t)strlen(*m) == method_len && memcmp(d, *m, method_len) == 0) known = 1;
    if (!known || p >= n || d[p] != ' ') Py_RETURN_NONE;
    Py_ssize_t url = ++p;
    while (p < n && d[p] > 0x20 && d[p] < 0x7f) p++;
    Py_ssize_t url_len = p - url;
    if (url_len < 5 || memcmp(d + url, "/fn/", 4) != 0 || n - p < 11 || memcmp(d + p, " HTTP/1.1\r\n", 11) != 0)
        Py_RETURN_NONE;
    /* /fn/{name}[/path][?query] -> the name, and the instance's target (what server.invocation() makes of it) */
    const char *u = d + url;
    Py_ssize_t slash = -1, query = -1;
    for (Py_ssize_t i = 4; i < url_len; i++) {
        if (u[i] == '/' && slash < 0 && query < 0) slash = i;
        else if (u[i] == '?' && query < 0) query = i;
    }
    Py_ssize_t name_end = slash >= 0 ? slash : (query >= 0 ? query : url_len);
    if (name_end == 4 || memchr(u + 4, '%', name_end - 4) != NULL) Py_RETURN_NONE;
    const char *target = slash >= 0 ? u + slash : u + name_end;  /* without a path: "/" then the query */
    Py_ssize_t target_len = u + url_len - target;
    int target_slash = slash < 0;
    p += 11;
    Py_ssize_t head_start = p;

    Header h, cred = {0}, conn = {0}, ns = {0}, wanted = {0}, host = {0};
    int hosts = 0, have_cred = 0, have_conn = 0, have_ns = 0, have_wanted = 0, r;
    Py_ssize_t length = -1;
    while ((r = header_line(d, n, &p, &h)) == 1) {
        const char *name = h.name;
        Py_ssize_t name_len = h.name_len;
        if (IS("authorization")) {
            if (have_cred++) Py_RETURN_NONE;
            cred = h;
        } else if (IS("connection")) {
            if (have_conn++ || !value_is(h.value, h.value_len, "keep-alive", 10)) Py_RETURN_NONE;
            conn = h;
        } else if (IS("expect") || name_in(name, name_len, HOP) || name_in(name, name_len, FWD) ||
                   proxy_name(name, name_len)) {
            Py_RETURN_NONE;
        } else if (IS("content-length")) {
            if (length >= 0 || (length = digits(h.value, h.value_len)) < 0) Py_RETURN_NONE;
        } else if (IS("host")) {
            if (hosts++) Py_RETURN_NONE;
            host = h;
        } else if (IS("x-fnsession-namespace")) {
            if (have_ns++) Py_RETURN_NONE;
            ns = h;
        }
        if (want_len && name_is(name, name_len, want, want_len)) {
            if (have_wanted++) Py_RETURN_NONE;  /* twice (cookies the full path joins): the full path */
            wanted = h;
        }
    }
    if (r < 0 || hosts != 1) Py_RETURN_NONE;
    Py_ssize_t head_end = p - 2;  /* before the empty line */
    if (n - p != (length < 0 ? 0 : length)) Py_RETURN_NONE;

    /* the request for the instance: its line, the head without the credential and connection
     * lines (in order, at most two), the X-Forwarded-For and -Proto lines, X-Forwarded-Host (the
     * Host), the end of the head, the body */
    Header *cut[2];
    int cuts = 0;
    if (have_cred) cut[cuts++] = &cred;
    if (have_conn) cut[cuts++] = &conn;
    if (cuts == 2 && cut[0]->start > cut[1]->start) { Header *t = cut[0]; cut[0] = cut[1]; cut[1] = t; }
    Py_ssize_t head = head_end - head_start;
    for (int i = 0; i < cuts; i++) head -= cut[i]->end - cut[i]->start;
    Py_ssize_t xfh = host.value_len ? 18 + host.value_len + 2 : 0;
    Py_ssize_t size = method_len + 1 + target_slash + target_len + 11 + head + fwd_len + xfh + 2 + (n - p);
    PyObject *upstream = PyBytes_FromStringAndSize(NULL, size);
    if (upstream == NULL) return NULL;
    char *out = PyBytes_AS_STRING(upstream);
#define PUT(src, len) do { memcpy(out, (src), (len)); out += (len); } while (0)
    PUT(d, method_len);
    PUT(" /", 1 + target_slash);
    PUT(target, target_len);
    PUT(" HTTP/1.1\r\n", 11);
    Py_ssize_t from = head_start;
    for (int i = 0; i < cuts; i++) {
        PUT(d + from, cut[i]->start - from);
        from = cut[i]->end;
    }
    PUT(d + from, head_end - from);
    PUT(fwd, fwd_len);
    if (xfh) {
        PUT("X-Forwarded-Host: ", 18);
        PUT(host.value, host.value_len);
        PUT("\r\n", 2);
    }
    PUT("\r\n", 2);
    PUT(d + p, n - p);
#undef PUT

    if (last != NULL && same(last, 0, 1, u + 4, name_end - 4) && same(last, 1, have_cred, cred.value, cred.value_len) &&
        same(last, 2, have_ns, ns.value, ns.value_len) && same(last, 3, have_wanted, wanted.value, wanted.value_len))
        return upstream;  /* the same four as ``last``: the request for the instance alone */
    PyObject *result = PyTuple_New(5);
    if (result == NULL) {
        Py_DECREF(upstream);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 4, upstream);  /* the tuple owns each item from here, NULL ones included */
    PyObject *item;
    if ((item = PyBytes_FromStringAndSize(u + 4, name_end - 4)) == NULL) goto fail;
    PyTuple_SET_ITEM(result, 0, item);
    if ((item = bytes_or_none(have_cred, cred.value, cred.value_len)) == NULL) goto fail;
    PyTuple_SET_ITEM(result, 1, item);
    if ((item = bytes_or_none(have_ns, ns.value, ns.value_len)) == NULL) goto fail;
    PyTuple_SET_ITEM(result, 2, item);
    if ((item = bytes_or_none(have_wanted, wanted.value, wanted.value_len)) == NULL) goto fail;
    PyTuple_SET_ITEM(result, 3, item);
    return result;
fail:
    Py_DECREF(result);
    return NULL;
}

/* ``last`` (a tuple of four, bytes or None each) holds what scan returned before for this connection:
 * the request read now names the same function, credential, namespace and wanted value exactly when
 * each of the four read equals last's item (absent equals None) */
static int same(PyObject *last, int i, int have, const char *v, Py_ssize_t len) {
    PyObject *item = PyTuple_GET_ITEM(last, i);
    if (!have) return item == Py_None;
    return PyBytes_Check(item) && PyBytes_GET_SIZE(item) == len && memcmp(PyBytes_AS_STRING(item), v, len) == 0;
}

static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    const char *ptr[3];
    Py_ssize_t len[3];
    PyObject *last = NULL;
    if (nargs == 4) {  /* scan(data, want, forwarded, last) */
        last = args[3];
        if (last == Py_None) last = NULL;
        else if (!PyTuple_Check(last) || PyTuple_GET_SIZE(last) != 4) {
            PyErr_SetString(PyExc_TypeError, "scan() argument 4 must be a tuple of four or None");
            return NULL;
        }
        nargs = 3;
    }
    if (bytes_args(args, nargs, 3, "scan", ptr, len) < 0) return NULL;
    return scan_impl(ptr[0], len[0], ptr[1], len[1], ptr[2], len[2], last);
}

static PyObject *whole_impl(const char *d, Py_ssize_t n, const char *extra, Py_ssize_t extra_len) {
    Py_ssize_t p;
    if (n < 14 || memcmp(d, "HTTP/1.1 ", 9) != 0 || d[9] < '2' || d[9] > '5' || d[10] < '0' || d[10] > '9' ||
        d[11] < '0' || d[11] > '9' || (d[12] != ' ' && d[12] != '\r'))
        Py_RETURN_NONE;
    int status = (d[9] - '0') * 100 + (d[10] - '0') * 10 + (d[11] - '0');
    if (status == 204 || status == 304) Py_RETURN_NONE;
    p = value_end(d, 12, n);
    if (p + 1 >= n || d[p] != '\r' || d[p + 1] != '\n') Py_RETURN_NONE;
    p += 2;
    Py_ssize_t first = p, length = -1;
    Header h;
    int r;
    while ((r = header_line(d, n, &p, &h)) == 1) {
        const char *name = h.name;
        Py_ssize_t name_len = h.name_len;
        if (IS("content-length")) {
            if (length >= 0 || (length = digits(h.value, h.value_len)) < 0) Py_RETURN_NONE;
        } else if (name_in(name, name_len, HOP) || proxy_name(name, name_len)) {
            Py_RETURN_NONE;
        }
    }
    if (r < 0 || length < 0 || n - p != length) Py_RETURN_NONE;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n + extra_len);
    if (out == NULL) return NULL;
    char *o = PyBytes_AS_STRING(out);
    memcpy(o, d, first);
    memcpy(o + first, extra, extra_len);
    memcpy(o + first + extra_len, d + first, n - first);
    return out;
}

static PyObject *whole(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    const char *ptr[2];
    Py_ssize_t len[2];
    if (bytes_args(args, nargs, 2, "whole", ptr, len) < 0) return NULL;
    return whole_impl(ptr[0], len[0], ptr[1], len[1]);
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, want, forwarded[, last]) -> (function, credential, namespace, wanted, upstream) or None; "
     "upstream alone when the first four equal last's"},
    {"whole", (PyCFunction)(void (*)(void))whole, METH_FASTCALL, "whole(answer, extra) -> the answer with the extra header lines after its status line, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lane", "The lane's scans in C (see lane.py).", -1, methods,
                                    NULL, NULL, NULL, NULL};

/* a table of names as a tuple of bytes, for the test that holds it equal to http.py's */
static int add_table(PyObject *m, const char *name, const char **table) {
    Py_ssize_t n = 0;
    while (table[n]) n++;
    PyObject *t = PyTuple_New(n);
    if (t == NULL) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyBytes_FromString(table[i]);
        if (b == NULL) {
            Py_DECREF(t);
            return -1;
        }
        PyTuple_SET_ITEM(t, i, b);
    }
    if (PyModule_AddObject(m, name, t) < 0) {
        Py_DECREF(t);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__lane(void) {
    init_tables();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (add_table(m, "HOP_BY_HOP", HOP) < 0 || add_table(m, "FORWARDED", FWD) < 0))
        Py_CLEAR(m);
    return m;
}
