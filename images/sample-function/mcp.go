// Minimal MCP servers, so that fnsession's MCP session affinity is tested against a real server on the
// real kubelet: the Streamable HTTP transport (protocol 2025-03-26 / 2025-06-18) at /mcp and the older
// HTTP+SSE transport at /mcp/sse (stream) and /mcp/messages?sessionId=ID (client messages).
//
// Both speak JSON-RPC 2.0 with: initialize, notifications/initialized, ping, tools/list and tools/call
// of one tool, "whoami", which answers with the pod's name and how many calls this session made, so a
// client sees whether its session stayed on one instance.
//
// Streamable HTTP: a POST of initialize without Mcp-Session-Id gets a new id in the Mcp-Session-Id
// response header; later POSTs and GETs must carry a live id (404 otherwise, as the spec says); a GET
// opens the server-to-client SSE stream (comments every 15 s keep it open); a DELETE ends the session.
// HTTP+SSE: GET /mcp/sse opens the stream; its first event, "endpoint", names the message URL with the
// session id; each POST there is answered 202 and its JSON-RPC response goes out as a "message" event.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

type mcpSession struct {
	calls  int
	events chan []byte // HTTP+SSE only: responses for the stream
}

var mcp = struct {
	sync.Mutex
	sessions map[string]*mcpSession
}{sessions: map[string]*mcpSession{}}

type rpcRequest struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params,omitempty"`
}

func newMCPSessionID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func mcpLookup(id string) *mcpSession {
	mcp.Lock()
	defer mcp.Unlock()
	return mcp.sessions[id]
}

// answer returns the JSON-RPC response to req (nil for a notification).
func answer(s *mcpSession, req rpcRequest) any {
	if len(req.ID) == 0 {
		return nil
	}
	reply := func(result any) any { return map[string]any{"jsonrpc": "2.0", "id": req.ID, "result": result} }
	switch req.Method {
	case "initialize":
		version := "2025-03-26"
		var p struct {
			ProtocolVersion string `json:"protocolVersion"`
		}
		if json.Unmarshal(req.Params, &p) == nil && (p.ProtocolVersion == "2025-06-18" || p.ProtocolVersion == "2024-11-05") {
			version = p.ProtocolVersion
		}
		return reply(map[string]any{"protocolVersion": version, "capabilities": map[string]any{"tools": map[string]any{}},
			"serverInfo": map[string]any{"name": "fnsession-sample-function", "version": "1"}})
	case "ping":
		return reply(map[string]any{})
	case "tools/list":
		return reply(map[string]any{"tools": []any{map[string]any{
			"name": "whoami", "description": "The instance (pod) serving this session and the session's call count",
			"inputSchema": map[string]any{"type": "object", "properties": map[string]any{}}}}})
	case "tools/call":
		mcp.Lock()
		s.calls++
		n := s.calls
		mcp.Unlock()
		text := fmt.Sprintf(`{"pod":%q,"calls":%d}`, podName, n)
		return reply(map[string]any{"content": []any{map[string]any{"type": "text", "text": text}}, "isError": false})
	}
	return map[string]any{"jsonrpc": "2.0", "id": req.ID, "error": map[string]any{"code": -32601, "message": "method not found: " + req.Method}}
}

func readRPC(w http.ResponseWriter, r *http.Request) (rpcRequest, bool) {
	var req rpcRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err == nil {
		err = json.Unmarshal(body, &req)
	}
	if err != nil || req.JSONRPC != "2.0" || req.Method == "" {
		writeJSON(w, http.StatusBadRequest, map[string]any{"jsonrpc": "2.0", "error": map[string]any{"code": -32700, "message": "not a JSON-RPC 2.0 request"}})
		return req, false
	}
	return req, true
}

// streamable serves /mcp (MCP Streamable HTTP).
func streamable(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("Mcp-Session-Id")
	switch r.Method {
	case http.MethodPost:
		req, ok := readRPC(w, r)
		if !ok {
			return
		}
		var s *mcpSession
		if req.Method == "initialize" && id == "" {
			id = newMCPSessionID()
			s = &mcpSession{}
			mcp.Lock()
			mcp.sessions[id] = s
			mcp.Unlock()
		} else if s = mcpLookup(id); s == nil {
			http.Error(w, "unknown or ended Mcp-Session-Id", http.StatusNotFound)
			return
		}
		w.Header().Set("Mcp-Session-Id", id)
		out := answer(s, req)
		if out == nil {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		writeJSON(w, http.StatusOK, out)
	case http.MethodGet:
		if mcpLookup(id) == nil {
			http.Error(w, "unknown or ended Mcp-Session-Id", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Mcp-Session-Id", id)
		w.WriteHeader(http.StatusOK)
		keepOpen(w, r, nil)
	case http.MethodDelete:
		mcp.Lock()
		_, ok := mcp.sessions[id]
		delete(mcp.sessions, id)
		mcp.Unlock()
		if !ok {
			http.Error(w, "unknown or ended Mcp-Session-Id", http.StatusNotFound)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header().Set("Allow", "GET, POST, DELETE")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// keepOpen flushes events (if any) and a comment every 15 s until the client goes away.
func keepOpen(w http.ResponseWriter, r *http.Request, events <-chan []byte) {
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			_, _ = io.WriteString(w, ": keep-alive\n\n")
		case data := <-events:
			_, _ = fmt.Fprintf(w, "event: message\ndata: %s\n\n", data)
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
}

// sseStream serves GET /mcp/sse (MCP HTTP+SSE): the session lives as long as its stream.
func sseStream(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	id := newMCPSessionID()
	s := &mcpSession{events: make(chan []byte, 16)}
	mcp.Lock()
	mcp.sessions[id] = s
	mcp.Unlock()
	defer func() {
		mcp.Lock()
		delete(mcp.sessions, id)
		mcp.Unlock()
	}()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	// relative to the stream's URL, as the MCP SDKs resolve it: the gateway's prefix (/fn/NAME) is kept
	_, _ = fmt.Fprintf(w, "event: endpoint\ndata: messages?sessionId=%s\n\n", id)
	keepOpen(w, r, s.events)
}

// sseMessage serves POST /mcp/messages?sessionId=ID (MCP HTTP+SSE).
func sseMessage(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	s := mcpLookup(r.URL.Query().Get("sessionId"))
	if s == nil || s.events == nil {
		http.Error(w, "unknown or ended sessionId", http.StatusNotFound)
		return
	}
	req, ok := readRPC(w, r)
	if !ok {
		return
	}
	if out := answer(s, req); out != nil {
		data, _ := json.Marshal(out)
		select {
		case s.events <- data:
		case <-time.After(5 * time.Second):
			http.Error(w, "the session's stream is not reading", http.StatusServiceUnavailable)
			return
		}
	}
	w.WriteHeader(http.StatusAccepted)
}
