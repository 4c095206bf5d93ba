/* The lane's two scans in C (fnsession.gateway.lane uses them when this module is built; it falls
 * back to llhttp's parser with Python callbacks when not).
 *
 * scan(data, want, forwarded) reads one whole HTTP/1.1 request of a strict form for
 * /fn/{function}/... and returns
 *   (function, credential, namespace, wanted, upstream)
 * or None for anything else, which the full path (llhttp) then parses. ``want`` is a lower-case
 * header name whose value is returned as ``wanted`` (a request that repeats it is left to the full
 * path, which joins repeated cookies); ``credential`` and ``namespace`` are the
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
#include <stdint.h>
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

/* The hop-by-hop names (http.HOP_BY_HOP; a unit test holds the two equal, as HOP_BY_HOP below) and
 * the X-Forwarded-* ones the gateway sets itself (http.FORWARDED): a request or an answer carrying one
 * (or any Proxy-* header) is never forwarded as it came, but by the full path, which drops them. */
static const char *HOP[] = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
                            "proxy-connection", "proxy-authenticate", "proxy-authorization", NULL};
static const char *FWD[] = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", NULL};

static int name_in(const char *name, Py_ssize_t len, const char **table) {
    for (const char **t = table; *t; t++)
        if (name_is(name, len, *t, (Py_ssize_t)strlen(*t))) return 1;
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

static PyObject *scan_impl(const char *d, Py_ssize_t n, const char *want, Py_ssize_t want_len, const char *fwd,
                           Py_ssize_t fwd_len) {

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

static PyObject *scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    const char *ptr[3];
    Py_ssize_t len[3];
    if (bytes_args(args, nargs, 3, "scan", ptr, len) < 0) return NULL;
    return scan_impl(ptr[0], len[0], ptr[1], len[1], ptr[2], len[2]);
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

/* ---------------------------------------------------------------------------------------------------
 * The lane's steady state in C: the connections' read callbacks.
 *
 * http.py's ServerConnection and UpstreamConnection are subclasses of Client and Upstream below, which
 * keep the attributes the steady state reads (the rest stay in the instance's __dict__) and define
 * data_received. uvloop calls it for every read; it does in C what lane.Lane.__call__ and
 * lane.Flight.answer do in Python, on the same objects and with the same rules (lane.py's docstring),
 * and hands anything else to the Python method (data_received_py): a read it does not take, a
 * connection's first request or a memo gone stale (Lane.refresh decides, in Python), an answer that is
 * not whole. The Python path stays whole beside it: it runs where this module is not built, and in the
 * tests, which run both.
 *
 * Fast holds what the steady state needs of the Lane: its routing table, Invoker, Pool and request
 * ids, and where the slots of _Memo, Route and Flight (lane.py, routes.py) sit in their objects, so
 * that reading a session's route costs a load, not an attribute lookup.
 */
#include <structmember.h>
#include <time.h>

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

typedef struct {
    PyObject_HEAD
    PyObject *lane, *routes, *invoker, *idle, *ids, *memo_type, *route_type, *flight_type;
    Py_ssize_t instance_limit, idle_per_address, max_head, requests;
    int ready;  /* __init__ ran to its end: every field is set */
    Py_ssize_t m_credential, m_namespace, m_until, m_generation, m_name, m_header, m_session_id, m_route,
        m_key, m_address;
    Py_ssize_t r_pod_ip, r_hard, r_idle, r_last;
    Py_ssize_t f_conn, f_key, f_data, f_extra;
} Fast;

typedef struct {
    PyObject_HEAD
    PyObject *fast, *memo, *flight, *tunnel, *upgraded, *transport, *forwarded_for, *queue;
    double idle_since;
    char closed, in_message, reading_paused;
} Client;

typedef struct {
    PyObject_HEAD
    PyObject *fast, *flight, *spare, *transport, *exchange, *address;
    double idle_since;
    Py_ssize_t used;
    char closed, reading_paused;
} Upstream;

static PyTypeObject FastType, ClientType, UpstreamType;
static PyObject *s_refresh, *s_data_received_py, *s_write, *s_close, *s_flight_done, *s_generation, *s_per_instance,
    *s_activity, *s_running, *s_n, *s_line, *s_routes, *s_invoker, *s_pool, *s_ids, *s_resume_reading, *empty, *one;

static double clock_now(clockid_t which) {  /* time.time() and time.monotonic() read these clocks */
    struct timespec t;
    clock_gettime(which, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int is_none(PyObject *o) { return o == NULL || o == Py_None; }

/* two bytes objects (or None) are equal */
static int same(PyObject *a, PyObject *b) {
    if (a == NULL) a = Py_None;
    if (b == NULL) b = Py_None;
    if (a == b) return 1;
    if (!PyBytes_CheckExact(a) || !PyBytes_CheckExact(b)) return 0;
    Py_ssize_t n = PyBytes_GET_SIZE(a);
    return n == PyBytes_GET_SIZE(b) && memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), n) == 0;
}

/* a slot's float (or int) value; -1 with an exception when unset or not a number */
static int slot_double(PyObject *o, Py_ssize_t off, double *out) {
    PyObject *v = SLOT(o, off);
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a lane slot is unset");
        return -1;
    }
    *out = PyFloat_CheckExact(v) ? PyFloat_AS_DOUBLE(v) : PyFloat_AsDouble(v);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

static void slot_set(PyObject *o, Py_ssize_t off, PyObject *v) {
    PyObject *old = SLOT(o, off);
    Py_INCREF(v);
    SLOT(o, off) = v;
    Py_XDECREF(old);
}

/* where the slot ``name`` of the class ``type`` sits in its instances */
static Py_ssize_t slot_offset(PyObject *type, const char *name) {
    PyObject *d = PyObject_GetAttrString(type, name);
    if (d == NULL) return -1;
    Py_ssize_t off = -1;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX &&
        PyType_IsSubtype((PyTypeObject *)type, ((PyMemberDescrObject *)d)->d_common.d_type))  /* its own layout */
        off = ((PyMemberDescrObject *)d)->d_member->offset;
    else
        PyErr_Format(PyExc_TypeError, "%R.%s is not a slot", type, name);
    Py_DECREF(d);
    return off;
}

/* --- Fast ----------------------------------------------------------------------------------------- */

static int fast_init(Fast *self, PyObject *args, PyObject *kwds) {
    PyObject *lane, *memo_type, *route_type, *flight_type, *pool = NULL;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Fast() takes no keyword arguments");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OO!O!O!nnn", &lane, &PyType_Type, &memo_type, &PyType_Type, &route_type,
                          &PyType_Type, &flight_type, &self->instance_limit, &self->idle_per_address, &self->max_head))
        return -1;
    Py_INCREF(lane);
    Py_XSETREF(self->lane, lane);
    Py_INCREF(memo_type);
    Py_XSETREF(self->memo_type, memo_type);
    Py_INCREF(route_type);
    Py_XSETREF(self->route_type, route_type);
    Py_INCREF(flight_type);
    Py_XSETREF(self->flight_type, flight_type);
    self->ready = 0;
    Py_XSETREF(self->routes, PyObject_GetAttr(lane, s_routes));
    if (self->routes == NULL) return -1;
    Py_XSETREF(self->invoker, PyObject_GetAttr(lane, s_invoker));
    if (self->invoker == NULL) return -1;
    Py_XSETREF(self->ids, PyObject_GetAttr(lane, s_ids));
    if (self->ids == NULL || (pool = PyObject_GetAttr(lane, s_pool)) == NULL) return -1;
    Py_XSETREF(self->idle, PyObject_GetAttrString(pool, "idle"));
    Py_DECREF(pool);
    if (self->idle == NULL) return -1;
    if (!PyDict_CheckExact(self->idle)) {
        PyErr_SetString(PyExc_TypeError, "Pool.idle must be a dict");
        return -1;
    }
#define OFF(field, type, name) if ((self->field = slot_offset(type, name)) < 0) return -1
    OFF(m_credential, memo_type, "credential"); OFF(m_namespace, memo_type, "namespace");
    OFF(m_until, memo_type, "until"); OFF(m_generation, memo_type, "generation"); OFF(m_name, memo_type, "name");
    OFF(m_header, memo_type, "header"); OFF(m_session_id, memo_type, "session_id"); OFF(m_route, memo_type, "route");
    OFF(m_key, memo_type, "key"); OFF(m_address, memo_type, "address");
    OFF(r_pod_ip, route_type, "pod_ip"); OFF(r_hard, route_type, "hard"); OFF(r_idle, route_type, "idle");
    OFF(r_last, route_type, "last");
    OFF(f_conn, flight_type, "conn"); OFF(f_key, flight_type, "key"); OFF(f_data, flight_type, "data");
    OFF(f_extra, flight_type, "extra");
#undef OFF
    self->ready = 1;
    return 0;
}

static int fast_traverse(Fast *self, visitproc visit, void *arg) {
    Py_VISIT(self->lane); Py_VISIT(self->routes); Py_VISIT(self->invoker); Py_VISIT(self->idle);
    Py_VISIT(self->ids); Py_VISIT(self->memo_type); Py_VISIT(self->route_type); Py_VISIT(self->flight_type);
    return 0;
}

static int fast_clear(Fast *self) {
    Py_CLEAR(self->lane); Py_CLEAR(self->routes); Py_CLEAR(self->invoker); Py_CLEAR(self->idle);
    Py_CLEAR(self->ids); Py_CLEAR(self->memo_type); Py_CLEAR(self->route_type); Py_CLEAR(self->flight_type);
    return 0;
}

static void fast_dealloc(Fast *self) {
    PyObject_GC_UnTrack(self);
    fast_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef fast_members[] = {
    {"requests", T_PYSSIZET, offsetof(Fast, requests), READONLY, "requests the C lane took"},
    {NULL},
};

/* --- the client side: a request for a known session, to an idle connection of its instance ---------- */

/* The request id header line, as RequestIds.header() makes it (the counter is shared with Python's). */
static PyObject *request_id_line(Fast *f) {
    PyObject *n = PyObject_GetAttr(f->ids, s_n), *line = NULL, *out = NULL;
    if (n == NULL) return NULL;
    PyObject *next = PyNumber_Add(n, one);
    Py_DECREF(n);
    if (next == NULL) return NULL;
    if (PyObject_SetAttr(f->ids, s_n, next) == 0 && (line = PyObject_GetAttr(f->ids, s_line)) != NULL)
        out = PyNumber_Remainder(line, next);
    Py_XDECREF(line);
    Py_DECREF(next);
    return out;
}

/* an idle connection to ``address`` from the Pool (Pool.take), or NULL (with an exception on error) */
static Upstream *pool_take(Fast *f, PyObject *address) {
    PyObject *conns = PyDict_GetItemWithError(f->idle, address);
    while (conns != NULL && PyList_CheckExact(conns) && PyList_GET_SIZE(conns) > 0) {
        Py_ssize_t last = PyList_GET_SIZE(conns) - 1;
        PyObject *u = PyList_GET_ITEM(conns, last);
        Py_INCREF(u);
        if (PyList_SetSlice(conns, last, last + 1, NULL) < 0) {
            Py_DECREF(u);
            return NULL;
        }
        if (!PyObject_TypeCheck(u, &UpstreamType)) {
            Py_DECREF(u);
            PyErr_SetString(PyExc_TypeError, "the pool holds a connection that is not an Upstream");
            return NULL;
        }
        if (!((Upstream *)u)->closed) return (Upstream *)u;
        Py_DECREF(u);
    }
    return NULL;
}

/* 1: the lane took the request in ``data``; 0: it declined (nothing changed); -1: an error */
static int lane_take(Client *c, Fast *f, PyObject *data) {
    if (PyBytes_GET_SIZE(data) > f->max_head) return 0;
    PyObject *m = c->memo;
    if (is_none(m) || !Py_IS_TYPE(m, (PyTypeObject *)f->memo_type)) m = NULL;
    PyObject *want = m != NULL && SLOT(m, f->m_header) != NULL ? SLOT(m, f->m_header) : empty;
    PyObject *fwd = c->forwarded_for != NULL && PyBytes_Check(c->forwarded_for) ? c->forwarded_for : empty;
    if (!PyBytes_Check(want)) want = empty;
    PyObject *parsed = scan_impl(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), PyBytes_AS_STRING(want),
                                 PyBytes_GET_SIZE(want), PyBytes_AS_STRING(fwd), PyBytes_GET_SIZE(fwd));
    if (parsed == NULL) return -1;
    if (parsed == Py_None) {
        Py_DECREF(parsed);
        return 0;
    }
    int rc = -1;
    PyObject *per = NULL, *activity = NULL, *running = NULL, *wall_f = NULL, *count = NULL, *extra = NULL, *r;
    PyObject *route = NULL, *ip = NULL, *address = NULL, *key = NULL, *transport = NULL;  /* held: Python runs below */
    PyObject *now_in = NULL;
    Upstream *up = NULL;
    double wall = clock_now(CLOCK_REALTIME), until, hard, idle, last;

    int valid = m != NULL && same(SLOT(m, f->m_credential), PyTuple_GET_ITEM(parsed, 1)) &&
                same(SLOT(m, f->m_namespace), PyTuple_GET_ITEM(parsed, 2)) &&
                same(SLOT(m, f->m_name), PyTuple_GET_ITEM(parsed, 0)) &&
                same(SLOT(m, f->m_session_id), PyTuple_GET_ITEM(parsed, 3));
    if (valid) {
        if (slot_double(m, f->m_until, &until) < 0) goto done;
        PyObject *generation = PyObject_GetAttr(f->routes, s_generation);
        if (generation == NULL) goto done;
        PyObject *mine = SLOT(m, f->m_generation);
        int equal = mine != NULL ? PyObject_RichCompareBool(generation, mine, Py_EQ) : 0;
        Py_DECREF(generation);
        if (equal < 0) goto done;
        valid = until > wall && equal;
    }
    if (!valid) {  /* a first request, or a memo gone stale: Lane.refresh finds it all again, in Python */
        PyObject *ok = PyObject_CallMethodObjArgs(f->lane, s_refresh, (PyObject *)c, data, parsed, NULL);
        if (ok == NULL) goto done;
        int yes = PyObject_IsTrue(ok);
        Py_DECREF(ok);
        if (yes <= 0) {
            rc = yes;
            goto done;
        }
        m = c->memo;
        if (is_none(m) || !Py_IS_TYPE(m, (PyTypeObject *)f->memo_type)) {
            rc = 0;
            goto done;
        }
    }
    route = SLOT(m, f->m_route);
    if (route == NULL || !Py_IS_TYPE(route, (PyTypeObject *)f->route_type)) {
        route = NULL;
        rc = 0;
        goto done;
    }
    Py_INCREF(route);
    if (slot_double(route, f->r_hard, &hard) < 0 || slot_double(route, f->r_idle, &idle) < 0 ||
        slot_double(route, f->r_last, &last) < 0)
        goto done;
    if (!(wall < hard && wall < last + idle)) {  /* past its deadline: the full path says so */
        rc = 0;
        goto done;
    }
    ip = SLOT(route, f->r_pod_ip), address = SLOT(m, f->m_address), key = SLOT(m, f->m_key);
    if (ip == NULL || address == NULL || key == NULL) {
        ip = address = key = NULL;
        rc = 0;
        goto done;
    }
    Py_INCREF(ip);
    Py_INCREF(address);
    Py_INCREF(key);
    if ((per = PyObject_GetAttr(f->invoker, s_per_instance)) == NULL) goto done;
    now_in = PyDict_GetItemWithError(per, ip);
    if (now_in == NULL && PyErr_Occurred()) goto done;
    Py_XINCREF(now_in);  /* held: the undo below puts it back */
    Py_ssize_t in_flight = now_in != NULL ? PyLong_AsSsize_t(now_in) : 0;
    if (in_flight == -1 && PyErr_Occurred()) goto done;
    if (in_flight >= f->instance_limit) {  /* the full path refuses it with FC's 429 */
        rc = 0;
        goto done;
    }
    up = pool_take(f, address);
    if (up == NULL) {
        rc = PyErr_Occurred() ? -1 : 0;  /* no idle connection: the full path opens one, in a task */
        goto done;
    }
    if (is_none(up->transport)) {  /* (as Pool.take then Lane: such a connection is dropped) */
        rc = 0;
        goto done;
    }

    /* everything that can fail is made ready first: the Flight, the request id line, the count, the
     * activity and running maps */
    PyObject *flight = up->spare;
    if (is_none(flight)) {
        flight = PyObject_CallFunctionObjArgs(f->flight_type, f->lane, (PyObject *)up, NULL);
        if (flight == NULL) goto give_back;
        Py_XSETREF(up->spare, flight);
    }
    if (!Py_IS_TYPE(flight, (PyTypeObject *)f->flight_type)) {
        PyErr_SetString(PyExc_TypeError, "an upstream connection's spare is not a Flight");
        goto give_back;
    }
    if ((extra = request_id_line(f)) == NULL || (count = PyLong_FromSsize_t(in_flight + 1)) == NULL ||
        (wall_f = PyFloat_FromDouble(wall)) == NULL || (activity = PyObject_GetAttr(f->invoker, s_activity)) == NULL ||
        (running = PyObject_GetAttr(f->invoker, s_running)) == NULL)
        goto give_back;
    PyObject *flights = PyDict_GetItemWithError(running, key), *fresh = NULL;
    if (flights == NULL) {
        if (PyErr_Occurred() || (fresh = flights = PySet_New(NULL)) == NULL) goto give_back;
    } else if (!PyAnySet_Check(flights)) {
        PyErr_SetString(PyExc_TypeError, "Invoker.running holds a value that is not a set");
        goto give_back;
    }

    /* taken, all or nothing (Lane.__call__'s order): the request is counted in flight only once it
     * is on its way; a failure on the way undoes every step, so no count stays raised */
    int steps = 0;
    if (PyDict_SetItem(per, ip, count) < 0) goto undo;
    steps = 1;
    if (PySet_Add(flights, flight) < 0) goto undo;
    steps = 2;
    if (fresh != NULL && PyDict_SetItem(running, key, fresh) < 0) goto undo;
    steps = 3;
    if (PyDict_SetItem(activity, key, wall_f) < 0) goto undo;
    slot_set(route, f->r_last, wall_f);
    slot_set(flight, f->f_conn, (PyObject *)c);
    slot_set(flight, f->f_key, key);
    slot_set(flight, f->f_data, data);
    slot_set(flight, f->f_extra, extra);
    Py_INCREF(flight);
    Py_XSETREF(up->flight, flight);
    up->used++;
    up->idle_since = clock_now(CLOCK_MONOTONIC);  /* (busy: when the request went; Listener.sweep) */
    Py_INCREF(f);
    Py_XSETREF(up->fast, (PyObject *)f);
    Py_INCREF(flight);
    Py_XSETREF(c->flight, flight);
    c->idle_since = 0.0;
    transport = up->transport;
    Py_INCREF(transport);
    if ((r = PyObject_CallMethodOneArg(transport, s_write, PyTuple_GET_ITEM(parsed, 4))) == NULL) {
        /* not on its way: undone, the connection dropped (it may hold part of the request) */
        Py_INCREF(Py_None);
        Py_XSETREF(up->flight, Py_None);
        Py_INCREF(Py_None);
        Py_XSETREF(c->flight, Py_None);
        up->used--;
        steps = 4;
        goto undo;
    }
    Py_DECREF(r);
    Py_XDECREF(fresh);
    f->requests++;
    rc = 1;
    goto done;
undo: {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (steps >= 1) {  /* the count as it was */
            if (now_in != NULL ? PyDict_SetItem(per, ip, now_in) < 0 : PyDict_DelItem(per, ip) < 0) PyErr_Clear();
        }
        if (steps >= 2 && PySet_Discard(flights, flight) < 0) PyErr_Clear();
        if (steps >= 3 && fresh != NULL && PyDict_DelItem(running, key) < 0) PyErr_Clear();
        if (steps >= 4) {
            c->idle_since = clock_now(CLOCK_MONOTONIC);
            if ((r = PyObject_CallMethodNoArgs((PyObject *)up, s_close)) == NULL) PyErr_Clear();
            else Py_DECREF(r);
        }
        PyErr_Restore(type, value, tb);
        Py_XDECREF(fresh);
        if (steps >= 4) goto done;
    }
give_back:  /* nothing taken: the connection goes back to the pool it came from */
    {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *conns = PyDict_GetItemWithError(f->idle, address);
        if (conns != NULL && PyList_Check(conns)) {
            if (PyList_Append(conns, (PyObject *)up) < 0) PyErr_Clear();
        } else {
            PyErr_Clear();
        }
        PyErr_Restore(type, value, tb);
    }
done:
    Py_DECREF(parsed);
    Py_XDECREF(route);
    Py_XDECREF(ip);
    Py_XDECREF(address);
    Py_XDECREF(key);
    Py_XDECREF(transport);
    Py_XDECREF(per);
    Py_XDECREF(activity);
    Py_XDECREF(running);
    Py_XDECREF(wall_f);
    Py_XDECREF(count);
    Py_XDECREF(extra);
    Py_XDECREF(now_in);
    Py_XDECREF((PyObject *)up);
    return rc;
}

static PyObject *call_py(PyObject *self, PyObject *data, int tried) {
    PyObject *args[3] = {self, data, tried ? Py_True : Py_False};
    return PyObject_VectorcallMethod(s_data_received_py, args, 3, NULL);
}

static PyObject *client_data_received(Client *self, PyObject *data) {
    Fast *f = (Fast *)self->fast;
    if (is_none((PyObject *)f) || !Py_IS_TYPE(f, &FastType) || !f->ready || !PyBytes_CheckExact(data) ||
        !is_none(self->tunnel) || !is_none(self->upgraded) || self->idle_since == 0.0)
        return call_py((PyObject *)self, data, 0);
    Py_INCREF(f);  /* held: the connection's reference may go while Python runs */
    int took = lane_take(self, f, data);
    Py_DECREF(f);
    if (took < 0) {  /* a failure (undone: nothing taken, nothing counted): reported, and the full path */
        PyErr_WriteUnraisable((PyObject *)self);
        took = 0;
    }
    if (took) Py_RETURN_NONE;
    return call_py((PyObject *)self, data, 1);  /* the lane declined: the full path, without asking it again */
}

/* --- the upstream side: the instance's whole answer, back to the client ------------------------------- */

static PyObject *upstream_data_received(Upstream *up, PyObject *data) {
    Fast *f = (Fast *)up->fast;
    PyObject *flight = up->flight;
    if (is_none(flight) || is_none((PyObject *)f) || !Py_IS_TYPE(f, &FastType) || !f->ready ||
        !Py_IS_TYPE(flight, (PyTypeObject *)f->flight_type) || !PyBytes_CheckExact(data))
        return call_py((PyObject *)up, data, 0);
    PyObject *conn = SLOT(flight, f->f_conn), *key = SLOT(flight, f->f_key), *extra = SLOT(flight, f->f_extra);
    PyObject *address = up->address;
    if (conn == NULL || key == NULL || extra == NULL || !PyObject_TypeCheck(conn, &ClientType) ||
        !PyBytes_Check(extra) || address == NULL || !PyTuple_Check(address) || PyTuple_GET_SIZE(address) < 1)
        return call_py((PyObject *)up, data, 0);
    PyObject *answer = whole_impl(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), PyBytes_AS_STRING(extra),
                                  PyBytes_GET_SIZE(extra));
    if (answer == NULL) return NULL;
    if (answer == Py_None) {  /* not one whole answer: Flight.answer makes it an Exchange */
        Py_DECREF(answer);
        return call_py((PyObject *)up, data, 0);
    }
    Client *c = (Client *)conn;
    PyObject *result = NULL, *per = NULL, *running = NULL, *transport = NULL, *r;
    /* held while Python runs (the transports' write, close, flight_done): */
    Py_INCREF(f);
    Py_INCREF(flight);
    Py_INCREF(conn);
    Py_INCREF(key);
    Py_INCREF(address);
    Py_INCREF(Py_None);
    Py_XSETREF(up->flight, Py_None);
    /* conn.write(answer) */
    if (!is_none(c->transport) && !c->closed) {
        transport = c->transport;
        Py_INCREF(transport);
        if ((r = PyObject_CallMethodOneArg(transport, s_write, answer)) == NULL) goto done;
        Py_DECREF(r);
    }
    /* pool.give(up) */
    Py_INCREF(Py_None);
    Py_XSETREF(up->exchange, Py_None);
    up->idle_since = clock_now(CLOCK_MONOTONIC);
    if (up->reading_paused) {  /* paused by this client's back-pressure, which has had its answer */
        if ((r = PyObject_CallMethodNoArgs((PyObject *)up, s_resume_reading)) == NULL) goto done;
        Py_DECREF(r);
    }
    PyObject *conns = PyDict_GetItemWithError(f->idle, address);
    if (conns == NULL) {
        if (PyErr_Occurred() || (conns = PyList_New(0)) == NULL) goto done;
        int bad = PyDict_SetItem(f->idle, address, conns);
        Py_DECREF(conns);
        if (bad < 0) goto done;
    }
    if (!PyList_Check(conns)) {
        PyErr_SetString(PyExc_TypeError, "Pool.idle holds a value that is not a list");
        goto done;
    }
    if (PyList_GET_SIZE(conns) >= f->idle_per_address || up->closed) {
        if ((r = PyObject_CallMethodNoArgs((PyObject *)up, s_close)) == NULL) goto done;
        Py_DECREF(r);
    } else if (PyList_Append(conns, (PyObject *)up) < 0) {
        goto done;
    }
    /* invoker.ended(flight) */
    PyObject *ip = PyTuple_GET_ITEM(address, 0);
    if ((per = PyObject_GetAttr(f->invoker, s_per_instance)) == NULL) goto done;
    PyObject *now_in = PyDict_GetItemWithError(per, ip);
    if (now_in == NULL && PyErr_Occurred()) goto done;
    Py_ssize_t left = (now_in != NULL ? PyLong_AsSsize_t(now_in) : 1) - 1;
    if (left == -2 && PyErr_Occurred()) goto done;
    if (left) {
        PyObject *n = PyLong_FromSsize_t(left);
        if (n == NULL) goto done;
        int bad = PyDict_SetItem(per, ip, n);
        Py_DECREF(n);
        if (bad < 0) goto done;
    } else if (now_in != NULL && PyDict_DelItem(per, ip) < 0) {
        goto done;
    }
    if ((running = PyObject_GetAttr(f->invoker, s_running)) == NULL) goto done;
    PyObject *flights = PyDict_GetItemWithError(running, key);
    if (flights == NULL && PyErr_Occurred()) goto done;
    if (flights != NULL && PyAnySet_Check(flights)) {
        if (PySet_Discard(flights, flight) < 0) goto done;
        if (PySet_GET_SIZE(flights) == 0 && PyDict_DelItem(running, key) < 0) goto done;
    }
    /* conn.flight_done() */
    Py_INCREF(Py_None);
    Py_XSETREF(c->flight, Py_None);
    if (!c->closed) {
        Py_ssize_t queued = is_none(c->queue) ? 0 : PyObject_Length(c->queue);
        if (queued < 0) goto done;
        if (queued || c->reading_paused || c->in_message) {  /* a pipelined request, a paused read, a head
                                                             * llhttp is still reading: Python's flight_done */
            if ((r = PyObject_CallMethodNoArgs(conn, s_flight_done)) == NULL) goto done;
            Py_DECREF(r);
        } else {
            c->idle_since = clock_now(CLOCK_MONOTONIC);
        }
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    Py_DECREF(answer);
    Py_DECREF(flight);
    Py_DECREF(conn);
    Py_DECREF(key);
    Py_DECREF(address);
    Py_XDECREF(transport);
    Py_DECREF(f);
    Py_XDECREF(per);
    Py_XDECREF(running);
    return result;
}

/* --- the two connection types ---------------------------------------------------------------------- */

static int client_traverse(Client *self, visitproc visit, void *arg) {
    Py_VISIT(self->fast); Py_VISIT(self->memo); Py_VISIT(self->flight); Py_VISIT(self->tunnel);
    Py_VISIT(self->upgraded); Py_VISIT(self->transport); Py_VISIT(self->forwarded_for); Py_VISIT(self->queue);
    return 0;
}

static int client_clear(Client *self) {
    Py_CLEAR(self->fast); Py_CLEAR(self->memo); Py_CLEAR(self->flight); Py_CLEAR(self->tunnel);
    Py_CLEAR(self->upgraded); Py_CLEAR(self->transport); Py_CLEAR(self->forwarded_for); Py_CLEAR(self->queue);
    return 0;
}

static void client_dealloc(Client *self) {
    PyObject_GC_UnTrack(self);
    client_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int upstream_traverse(Upstream *self, visitproc visit, void *arg) {
    Py_VISIT(self->fast); Py_VISIT(self->flight); Py_VISIT(self->spare); Py_VISIT(self->transport);
    Py_VISIT(self->exchange); Py_VISIT(self->address);
    return 0;
}

static int upstream_clear(Upstream *self) {
    Py_CLEAR(self->fast); Py_CLEAR(self->flight); Py_CLEAR(self->spare); Py_CLEAR(self->transport);
    Py_CLEAR(self->exchange); Py_CLEAR(self->address);
    return 0;
}

static void upstream_dealloc(Upstream *self) {
    PyObject_GC_UnTrack(self);
    upstream_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define MEMBER(cls, name, kind) {#name, kind, offsetof(cls, name), 0, NULL}
static PyMemberDef client_members[] = {
    MEMBER(Client, fast, T_OBJECT), MEMBER(Client, memo, T_OBJECT), MEMBER(Client, flight, T_OBJECT),
    MEMBER(Client, tunnel, T_OBJECT), MEMBER(Client, upgraded, T_OBJECT), MEMBER(Client, transport, T_OBJECT),
    MEMBER(Client, forwarded_for, T_OBJECT), MEMBER(Client, queue, T_OBJECT),
    MEMBER(Client, idle_since, T_DOUBLE), MEMBER(Client, closed, T_BOOL), MEMBER(Client, in_message, T_BOOL),
    MEMBER(Client, reading_paused, T_BOOL),
    {NULL},
};
static PyMemberDef upstream_members[] = {
    MEMBER(Upstream, fast, T_OBJECT), MEMBER(Upstream, flight, T_OBJECT), MEMBER(Upstream, spare, T_OBJECT),
    MEMBER(Upstream, transport, T_OBJECT), MEMBER(Upstream, exchange, T_OBJECT),
    MEMBER(Upstream, address, T_OBJECT), MEMBER(Upstream, idle_since, T_DOUBLE),
    MEMBER(Upstream, used, T_PYSSIZET), MEMBER(Upstream, closed, T_BOOL), MEMBER(Upstream, reading_paused, T_BOOL),
    {NULL},
};
#undef MEMBER

static PyMethodDef client_methods[] = {
    {"data_received", (PyCFunction)client_data_received, METH_O,
     "A read from the client: the lane's request taken here, or data_received_py(data, tried)."},
    {NULL},
};
static PyMethodDef upstream_methods[] = {
    {"data_received", (PyCFunction)upstream_data_received, METH_O,
     "A read from the instance: the lane's whole answer sent back here, or data_received_py(data, False)."},
    {NULL},
};

static PyTypeObject FastType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fnsession.gateway._lane.Fast",
    .tp_doc = "Fast(lane, Memo, Route, Flight, instance_limit, idle_per_address, max_head): the lane's state for C",
    .tp_basicsize = sizeof(Fast),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)fast_init,
    .tp_traverse = (traverseproc)fast_traverse,
    .tp_clear = (inquiry)fast_clear,
    .tp_dealloc = (destructor)fast_dealloc,
    .tp_members = fast_members,
};

static PyTypeObject ClientType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fnsession.gateway._lane.Client",
    .tp_doc = "The base of http.ServerConnection: the attributes the lane reads, and data_received.",
    .tp_basicsize = sizeof(Client),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)client_traverse,
    .tp_clear = (inquiry)client_clear,
    .tp_dealloc = (destructor)client_dealloc,
    .tp_members = client_members,
    .tp_methods = client_methods,
};

static PyTypeObject UpstreamType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fnsession.gateway._lane.Upstream",
    .tp_doc = "The base of http.UpstreamConnection: the attributes the lane reads, and data_received.",
    .tp_basicsize = sizeof(Upstream),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)upstream_traverse,
    .tp_clear = (inquiry)upstream_clear,
    .tp_dealloc = (destructor)upstream_dealloc,
    .tp_members = upstream_members,
    .tp_methods = upstream_methods,
};

static int add_types(PyObject *m) {
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1
    INTERN(s_refresh, "refresh"); INTERN(s_data_received_py, "data_received_py"); INTERN(s_write, "write");
    INTERN(s_close, "close"); INTERN(s_flight_done, "flight_done"); INTERN(s_generation, "generation");
    INTERN(s_per_instance, "per_instance"); INTERN(s_activity, "activity"); INTERN(s_running, "running");
    INTERN(s_n, "n"); INTERN(s_line, "line"); INTERN(s_routes, "routes"); INTERN(s_invoker, "invoker");
    INTERN(s_pool, "pool"); INTERN(s_ids, "ids"); INTERN(s_resume_reading, "resume_reading");
#undef INTERN
    if ((empty = PyBytes_FromStringAndSize("", 0)) == NULL || (one = PyLong_FromLong(1)) == NULL) return -1;
    PyTypeObject *types[] = {&FastType, &ClientType, &UpstreamType};
    const char *names[] = {"Fast", "Client", "Upstream"};
    for (int i = 0; i < 3; i++) {
        if (PyType_Ready(types[i]) < 0) return -1;
        Py_INCREF(types[i]);
        if (PyModule_AddObject(m, names[i], (PyObject *)types[i]) < 0) {
            Py_DECREF(types[i]);
            return -1;
        }
    }
    return 0;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL, "scan(data, want, forwarded) -> (function, credential, namespace, wanted, upstream) or None"},
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
    if (m != NULL && (add_types(m) < 0 || add_table(m, "HOP_BY_HOP", HOP) < 0 || add_table(m, "FORWARDED", FWD) < 0))
        Py_CLEAR(m);
    return m;
}
