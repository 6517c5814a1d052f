package agentsim

import "net/http"

// handleOpenAPI serves a small, valid OpenAPI 3.1 document naming the
// routes the simulator implements.
func (s *Server) handleOpenAPI(*http.Request) (int, any) {
	op := func(summary string) map[string]any {
		return map[string]any{
			"summary":   summary,
			"responses": map[string]any{"200": map[string]any{"description": "OK"}},
		}
	}
	sessionParam := []map[string]any{{"name": "id", "in": "path", "required": true, "schema": map[string]any{"type": "string"}}}
	withParam := func(m map[string]any) map[string]any { m["parameters"] = sessionParam; return m }
	return http.StatusOK, map[string]any{
		"openapi": "3.1.0",
		"info":    map[string]any{"title": "Stakpak agent server (agentsim)", "version": s.opts.Version},
		"components": map[string]any{"securitySchemes": map[string]any{
			"bearer": map[string]any{"type": "http", "scheme": "bearer"},
		}},
		"paths": map[string]any{
			"/v1/health":                        map[string]any{"get": op("Health")},
			"/v1/models":                        map[string]any{"get": op("Known models")},
			"/v1/sessions/{id}/tools/resolve":   withParam(map[string]any{"post": op("Decide tool calls (alias)")}),
			"/v1/openapi.json":                  map[string]any{"get": op("This document")},
			"/v1/sessions":                      map[string]any{"post": op("Create a session")},
			"/v1/sessions/{id}":                 withParam(map[string]any{"get": op("Get a session")}),
			"/v1/sessions/{id}/messages":        withParam(map[string]any{"post": op("Send a message"), "get": op("List messages")}),
			"/v1/sessions/{id}/events":          withParam(map[string]any{"get": op("Event stream (SSE)")}),
			"/v1/sessions/{id}/tools/pending":   withParam(map[string]any{"get": op("Pending tool calls")}),
			"/v1/sessions/{id}/tools/decisions": withParam(map[string]any{"post": op("Decide tool calls")}),
			"/v1/sessions/{id}/cancel":          withParam(map[string]any{"post": op("Cancel the active run")}),
			"/v1/sessions/{id}/tools/{tool_call_id}/decision": map[string]any{
				"parameters": append(sessionParam, map[string]any{"name": "tool_call_id", "in": "path", "required": true, "schema": map[string]any{"type": "string"}}),
				"post":       op("Decide one tool call"),
			},
		},
	}
}
