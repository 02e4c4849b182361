package api

import (
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/godwit-vm/godwit/vmm"
)

// yamlKeys reads the block-mapping keys of a YAML document as
// dot-separated paths ("paths./v1/vm.get"), enough to check the
// structure of openapi.yaml without a YAML library. Scalars after a key
// are kept as the path's value; block scalars (|) and sequences are
// skipped.
func yamlKeys(t *testing.T, text string) map[string]string {
	t.Helper()
	keys := map[string]string{}
	type level struct {
		indent int
		key    string
	}
	var stack []level
	blockIndent := -1 // inside a | block scalar deeper than this
	for n, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		indent := len(line) - len(strings.TrimLeft(line, " "))
		if blockIndent >= 0 {
			if trimmed == "" || indent > blockIndent {
				continue
			}
			blockIndent = -1
		}
		if trimmed == "" || strings.HasPrefix(trimmed, "#") || strings.HasPrefix(trimmed, "- ") {
			continue
		}
		if strings.Contains(line, "\t") {
			t.Fatalf("openapi.yaml:%d: tab", n+1)
		}
		k, v, ok := strings.Cut(trimmed, ":")
		if !ok {
			continue // a continuation of a flow scalar
		}
		k = strings.Trim(k, `"`)
		v = strings.TrimSpace(v)
		for len(stack) > 0 && stack[len(stack)-1].indent >= indent {
			stack = stack[:len(stack)-1]
		}
		stack = append(stack, level{indent, k})
		var p []string
		for _, l := range stack {
			p = append(p, l.key)
		}
		path := strings.Join(p, ".")
		if _, dup := keys[path]; dup {
			t.Fatalf("openapi.yaml:%d: duplicate key %s", n+1, path)
		}
		if v == "|" || v == ">" {
			blockIndent = indent
			v = ""
		}
		keys[path] = strings.Trim(v, `"`)
	}
	return keys
}

// children returns the keys directly under prefix.
func children(keys map[string]string, prefix string) []string {
	var out []string
	for k := range keys {
		if rest, ok := strings.CutPrefix(k, prefix+"."); ok && !strings.Contains(rest, ".") {
			out = append(out, rest)
		}
	}
	slices.Sort(out)
	return out
}

func jsonFields(v any) []string {
	var out []string
	rt := reflect.TypeOf(v)
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// TestAPIOpenAPIMatchesServer: openapi.yaml describes exactly the routes
// the server serves, with their methods and statuses, and exactly the
// fields of the types it sends and reads.
func TestAPIOpenAPIMatchesServer(t *testing.T) {
	b, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	keys := yamlKeys(t, string(b))
	if v := keys["openapi"]; !strings.HasPrefix(v, "3.0") {
		t.Errorf("openapi: %q", v)
	}

	// Paths, methods, statuses.
	var served []string
	for p := range routes {
		served = append(served, p)
	}
	slices.Sort(served)
	documented := children(keys, "paths")
	if !slices.Equal(served, documented) {
		t.Errorf("served paths %v, documented %v", served, documented)
	}
	for p, rt := range routes {
		ops := children(keys, "paths."+p)
		if want := []string{strings.ToLower(rt.method)}; !slices.Equal(ops, want) {
			t.Errorf("%s: documented methods %v, served %v", p, ops, want)
			continue
		}
		prefix := "paths." + p + "." + strings.ToLower(rt.method) + ".responses"
		var want []string
		for _, s := range append(slices.Clone(rt.statuses), 405) {
			want = append(want, fmt.Sprint(s))
		}
		slices.Sort(want)
		if got := children(keys, prefix); !slices.Equal(got, want) {
			t.Errorf("%s %s: documented statuses %v, served %v", rt.method, p, got, want)
		}
		for _, s := range want {
			if s[0] != '2' {
				if ref := keys[prefix+"."+s+".$ref"]; !strings.HasPrefix(ref, "#/components/responses/") {
					t.Errorf("%s %s %s: not an Error response (%q)", rt.method, p, s, ref)
				}
			}
		}
		if rt.method == "PUT" && len(children(keys, "paths."+p+".put.requestBody")) == 0 {
			t.Errorf("PUT %s: no requestBody", p)
		}
	}

	// Schemas against the Go types.
	for name, v := range map[string]any{
		"Info":            vmm.Info{},
		"Operation":       vmm.Operation{},
		"SnapshotResult":  vmm.SnapshotResult{},
		"SnapshotRequest": SnapshotRequest{},
		"MigrateRequest":  MigrateRequest{},
		"MigrationResult": vmm.MigrationResult{},
		"MigrationInfo":   vmm.MigrationInfo{},
		"Error":           ErrorResponse{},
	} {
		got := children(keys, "components.schemas."+name+".properties")
		if want := jsonFields(v); !slices.Equal(got, want) {
			t.Errorf("schema %s: documented properties %v, Go fields %v", name, got, want)
		}
	}
	enums := map[string]string{
		"components.schemas.SnapshotRequest.properties.type.enum":  "[full, diff]",
		"components.schemas.SnapshotRequest.properties.disks.enum": "[overlay, internal]",
		"components.schemas.SnapshotResult.properties.type.enum":   "[full, diff]",
	}
	for k, want := range enums {
		if got := keys[k]; got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if fmt.Sprintf("[%s, %s]", vmm.SnapshotFull, vmm.SnapshotDiff) != "[full, diff]" ||
		fmt.Sprintf("[%s, %s]", vmm.DisksOverlay, vmm.DisksInternal) != "[overlay, internal]" {
		t.Error("vmm's enum values changed: update openapi.yaml and this test")
	}

	// Every $ref resolves.
	for k, v := range keys {
		if strings.HasSuffix(k, ".$ref") {
			target := strings.ReplaceAll(strings.TrimPrefix(v, "#/"), "/", ".")
			if _, ok := keys[target]; !ok {
				t.Errorf("%s: $ref %q resolves to nothing", k, v)
			}
		}
	}
}
