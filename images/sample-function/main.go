// sample-function: the function instance fnsession's tests and benchmarks run. A static binary with only
// the standard library, so that a benchmark measures the gateway in front of it, not the function.
//
//	GET  /               (any path not below) JSON: pod name, uid, gid, method, path, request headers;
//	                     with header X-Sample-Status: C, status C and a plain-text body instead
//	GET  /file?path=P    read file P;  PUT/POST /file?path=P  write the body to P (under a mounted path)
//	GET  /slow?ms=N      answer after N milliseconds (in-flight limits, fencing)
//	GET  /sse?n=N&ms=M   N Server-Sent Events, M milliseconds apart, each flushed at once
//	GET  /ws             WebSocket echo (text and binary), RFC 6455
//	GET  /status?code=C  answer with HTTP status C (a function's own error)
//	GET  /healthz        200 "ok"
//	POST/GET/DELETE /mcp  a minimal MCP Streamable HTTP server (mcp.go); GET /mcp/sse and
//	                     POST /mcp/messages?sessionId=ID the older MCP HTTP+SSE transport
package main

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

var podName = func() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	n, _ := os.Hostname()
	return n
}()

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]any{"error": err.Error(), "pod": podName, "uid": os.Getuid(), "gid": os.Getgid()})
}

func info(w http.ResponseWriter, r *http.Request) {
	if code, err := strconv.Atoi(r.Header.Get("X-Sample-Status")); err == nil && code >= 200 && code <= 599 {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(code) // a function's own error, as plain text (FC's SDK cannot parse it as JSON)
		fmt.Fprintf(w, "%s from %s\n", http.StatusText(code), podName)
		return
	}
	headers := map[string]string{}
	for k, v := range r.Header {
		headers[strings.ToLower(k)] = strings.Join(v, ", ")
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	writeJSON(w, http.StatusOK, map[string]any{
		"pod": podName, "uid": os.Getuid(), "gid": os.Getgid(),
		"method": r.Method, "path": r.URL.Path, "query": r.URL.RawQuery,
		"headers": headers, "bodyBytes": len(body),
	})
}

func file(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Query().Get("path")
	if p == "" || !filepath.IsAbs(p) {
		fail(w, http.StatusBadRequest, errors.New("query parameter path must be an absolute path"))
		return
	}
	switch r.Method {
	case http.MethodGet:
		data, err := os.ReadFile(p)
		if err != nil {
			fail(w, statusFor(err), err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(data)
	case http.MethodPut, http.MethodPost:
		data, _ := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err := os.WriteFile(p, data, 0o600); err != nil {
			fail(w, statusFor(err), err)
			return
		}
		st, _ := os.Stat(p)
		writeJSON(w, http.StatusOK, map[string]any{"pod": podName, "path": p, "bytes": len(data),
			"mode": fmt.Sprintf("%04o", st.Mode().Perm()), "uid": os.Getuid(), "gid": os.Getgid()})
	default:
		fail(w, http.StatusMethodNotAllowed, errors.New("use GET to read, PUT or POST to write"))
	}
}

func statusFor(err error) int {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return http.StatusNotFound
	case errors.Is(err, os.ErrPermission):
		return http.StatusForbidden
	}
	return http.StatusInternalServerError
}

func intParam(r *http.Request, name string, def int) int {
	if v, err := strconv.Atoi(r.URL.Query().Get(name)); err == nil && v >= 0 {
		return v
	}
	return def
}

func slow(w http.ResponseWriter, r *http.Request) {
	ms := intParam(r, "ms", 1000)
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
		writeJSON(w, http.StatusOK, map[string]any{"pod": podName, "sleptMs": ms})
	case <-r.Context().Done(): // the client (or the gateway fencing the session) went away
	}
}

func sse(w http.ResponseWriter, r *http.Request) {
	n, ms := intParam(r, "n", 5), intParam(r, "ms", 100)
	fl, ok := w.(http.Flusher)
	if !ok {
		fail(w, http.StatusInternalServerError, errors.New("streaming unsupported"))
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	for i := 0; i < n; i++ {
		if i > 0 {
			select {
			case <-time.After(time.Duration(ms) * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
		fmt.Fprintf(w, "id: %d\nevent: tick\ndata: {\"pod\":%q,\"seq\":%d,\"unixMs\":%d}\n\n", i, podName, i, time.Now().UnixMilli())
		fl.Flush()
	}
}

func status(w http.ResponseWriter, r *http.Request) {
	code := intParam(r, "code", 500)
	if code < 200 || code > 599 {
		code = 500
	}
	writeJSON(w, code, map[string]any{"pod": podName, "status": code, "error": http.StatusText(code)})
}

// websocket echoes every data frame back; a close frame is answered and ends the connection.
func websocket(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Sec-WebSocket-Key")
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || key == "" {
		fail(w, http.StatusBadRequest, errors.New("expected a WebSocket upgrade"))
		return
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: %s\r\nX-Pod-Name: %s\r\n\r\n", base64.StdEncoding.EncodeToString(sum[:]), podName)
	if rw.Flush() != nil {
		return
	}
	for {
		op, payload, err := readFrame(rw.Reader)
		if err != nil {
			return
		}
		switch op {
		case 0x8: // close
			_ = writeFrame(rw.Writer, 0x8, payload)
			return
		case 0x9: // ping
			op = 0xA
		case 0xA: // pong
			continue
		}
		if writeFrame(rw.Writer, op, payload) != nil {
			return
		}
	}
}

func readFrame(r *bufio.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 {
		return 0, nil, errors.New("fragmented frames are not supported by this echo")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 16<<20 {
		return 0, nil, errors.New("frame too large")
	}
	var mask [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(r, mask[:]); err != nil {
			return 0, nil, err
		}
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range payload {
			payload[i] ^= mask[i%4]
		}
	}
	return h[0] & 0x0f, payload, nil
}

func writeFrame(w *bufio.Writer, op byte, payload []byte) error {
	_ = w.WriteByte(0x80 | op)
	switch n := len(payload); {
	case n < 126:
		_ = w.WriteByte(byte(n))
	case n <= 0xffff:
		_ = w.WriteByte(126)
		_ = binary.Write(w, binary.BigEndian, uint16(n))
	default:
		_ = w.WriteByte(127)
		_ = binary.Write(w, binary.BigEndian, uint64(n))
	}
	_, _ = w.Write(payload)
	return w.Flush()
}

func main() {
	addr := ":" + envOr("PORT", "9000")
	mux := http.NewServeMux()
	mux.HandleFunc("/file", file)
	mux.HandleFunc("/slow", slow)
	mux.HandleFunc("/sse", sse)
	mux.HandleFunc("/mcp", streamable)
	mux.HandleFunc("/mcp/sse", sseStream)
	mux.HandleFunc("/mcp/messages", sseMessage)
	mux.HandleFunc("/ws", websocket)
	mux.HandleFunc("/status", status)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", info)
	log.Printf("sample-function %s listening on %s as uid=%d gid=%d", podName, addr, os.Getuid(), os.Getgid())
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
