package daemon

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestOpenAPIDocumentsTheAPI checks that openapi.yaml lists every path
// the server routes and every field of the request bodies.
func TestOpenAPIDocumentsTheAPI(t *testing.T) {
	b, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, p := range []string{"/v1/host:", "/v1/vms:", "/v1/vms/{name}:", "/v1/vms/{name}/start:", "/v1/vms/{name}/stop:",
		"/v1/vms/{name}/kill:", "/v1/vms/{name}/pause:", "/v1/vms/{name}/resume:", "/v1/vms/{name}/events:",
		"/v1/vms/{name}/snapshots:", "/v1/vms/{name}/restore:", "/v1/vms/{name}/console:",
		"/v1/vms/{name}/export:", "/v1/import:", "/v1/vms/{name}/template:", "/v1/vms/{name}/clone:"} {
		if !strings.Contains(doc, "\n  "+p+"\n") {
			t.Errorf("openapi.yaml lacks path %s", p)
		}
	}
	for _, v := range []any{Definition{}, SnapshotRequest{}, RestoreRequest{}, VM{}, Host{}, Event{}, Snapshot{}, CloneRequest{}} {
		rt := reflect.TypeOf(v)
		for i := range rt.NumField() {
			name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
			if !strings.Contains(doc, "\n        "+name+":") {
				t.Errorf("openapi.yaml lacks %s.%s (%q)", rt.Name(), rt.Field(i).Name, name)
			}
		}
	}
}
