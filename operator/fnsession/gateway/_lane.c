/* The lane's two scans in C (fnsession.gateway.lane uses them when this module is built; it falls
 * back to llhttp's parser with Python callbacks when not).
 *
 * scan(data, want, forwarded) reads one whole HTTP/1.1 request of a strict form for
 * /fn/{function}/... and returns
 *   (function, credential, namespace, wanted, upstream)
 * or None for anything else, which the full path (llhttp) then parses. ``want`` is a lower-case
 * header name whose last value is returned as ``wanted``; ``credential`` and ``namespace`` are the
 * Authorization and x-fnsession-namespace values (None when absent); ``upstream`` is the request as
 * it goes to the instance: the function's own path and query, the header lines as they came without
 * the caller's Authorization and a "Connection: keep-alive", ``forwarded`` (an X-Forwarded-For line),
 * the body. A function name with a '%' is left to the full path, which decodes it.
 *
 * The form accepted is a subset of what llhttp accepts, so that the lane never takes a request the
 * full path would read differently: a method of GET, POST, PUT, DELETE, PATCH or OPTIONS; an
 * origin-form target of visible ASCII; exactly "HTTP/1.1"; header names of token characters right
 * before the colon; values of visible characters, spaces and tabs; CRLF line ends only; one Host;
 * at most one Content-Length of digits and exactly that many bytes after the head, then nothing;
 * no Transfer-Encoding, Expect, Upgrade, Keep-Alive, TE, Trailer or Proxy-Authorization header; no
 * Connection header but "keep-alive"; no second Authorization.
 *
 * whole(data, extra) returns ``data`` with the header lines ``extra`` after its status line when
 * ``data`` is exactly one whole final answer that can go to the client as it came: "HTTP/1.1 " and
 * a status from 200 to 599 other than 204 and 304, one Content-Length and exactly that many bytes
 * after the head, no Transfer-Encoding or Connection header, the same strict lines; None for
 * anything else.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

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

typedef struct {
    const char *name; Py_ssize_t name_len;
    const char *value; Py_ssize_t value_len;
    Py_ssize_t start, end;  /* the whole line, CRLF included */
} Header;

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
    while (i < n && VALUE[(unsigned char)d[i]]) i++;
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

static PyObject *scan(PyObject *self, PyObject *args) {
    const char *d, *want, *fwd;
    Py_ssize_t n, want_len, fwd_len;
    if (!PyArg_ParseTuple(args, "y#y#y#", &d, &n, &want, &want_len, &fwd, &fwd_len)) return NULL;

    Py_ssize_t p = 0;
    while (p < n && d[p] >= 'A' && d[p] <= 'Z') p++;
    Py_ssize_t method_len = p;
    int known = 0;
    for (const char **m = METHODS; *m; m++)
        if ((Py_ssize_t)strlen(*m) == method_len && memcmp(d, *m, method_len) == 0) known = 1;
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

    Header h, cred = {0}, conn = {0}, ns = {0}, wanted = {0};
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
        } else if (IS("transfer-encoding") || IS("expect") || IS("upgrade") || IS("keep-alive") || IS("te") ||
                   IS("trailer") || IS("proxy-authorization")) {
            Py_RETURN_NONE;
        } else if (IS("content-length")) {
            if (length >= 0 || (length = digits(h.value, h.value_len)) < 0) Py_RETURN_NONE;
        } else if (IS("host")) {
            if (hosts++) Py_RETURN_NONE;
        } else if (IS("x-fnsession-namespace")) {
            if (have_ns++) Py_RETURN_NONE;
            ns = h;
        }
        if (want_len && name_is(name, name_len, want, want_len)) {
            wanted = h;
            have_wanted = 1;
        }
    }
    if (r < 0 || hosts != 1) Py_RETURN_NONE;
    Py_ssize_t head_end = p - 2;  /* before the empty line */
    if (n - p != (length < 0 ? 0 : length)) Py_RETURN_NONE;

    /* the request for the instance: its line, the head without the credential and connection
     * lines (in order, at most two), the X-Forwarded-For line, the end of the head, the body */
    Header *cut[2];
    int cuts = 0;
    if (have_cred) cut[cuts++] = &cred;
    if (have_conn) cut[cuts++] = &conn;
    if (cuts == 2 && cut[0]->start > cut[1]->start) { Header *t = cut[0]; cut[0] = cut[1]; cut[1] = t; }
    Py_ssize_t head = head_end - head_start;
    for (int i = 0; i < cuts; i++) head -= cut[i]->end - cut[i]->start;
    Py_ssize_t size = method_len + 1 + target_slash + target_len + 11 + head + fwd_len + 2 + (n - p);
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
    PUT("\r\n", 2);
    PUT(d + p, n - p);
#undef PUT

    PyObject *none = Py_None;
    return Py_BuildValue("(y#NNNN)", u + 4, name_end - 4,
                         have_cred ? PyBytes_FromStringAndSize(cred.value, cred.value_len) : (Py_INCREF(none), none),
                         have_ns ? PyBytes_FromStringAndSize(ns.value, ns.value_len) : (Py_INCREF(none), none),
                         have_wanted ? PyBytes_FromStringAndSize(wanted.value, wanted.value_len) : (Py_INCREF(none), none),
                         upstream);
}

static PyObject *whole(PyObject *self, PyObject *args) {
    const char *d, *extra;
    Py_ssize_t n, extra_len, p;
    if (!PyArg_ParseTuple(args, "y#y#", &d, &n, &extra, &extra_len)) return NULL;
    if (n < 14 || memcmp(d, "HTTP/1.1 ", 9) != 0 || d[9] < '2' || d[9] > '5' || d[10] < '0' || d[10] > '9' ||
        d[11] < '0' || d[11] > '9' || (d[12] != ' ' && d[12] != '\r'))
        Py_RETURN_NONE;
    int status = (d[9] - '0') * 100 + (d[10] - '0') * 10 + (d[11] - '0');
    if (status == 204 || status == 304) Py_RETURN_NONE;
    p = 12;
    while (p < n && VALUE[(unsigned char)d[p]]) p++;
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
        } else if (IS("transfer-encoding") || IS("connection")) {
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

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "scan(data, want, forwarded) -> (function, credential, namespace, wanted, upstream) or None"},
    {"whole", whole, METH_VARARGS, "whole(answer, extra) -> the answer with the extra header lines after its status line, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lane", "The lane's scans in C (see lane.py).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__lane(void) {
    init_tables();
    return PyModule_Create(&module);
}
