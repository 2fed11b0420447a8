package client_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	_ "github.com/cachet-dev/cachet/clients/go/gen/envoy/service/ratelimit/v3"
)

// The README's examples are the Example functions (with the test server's address
// shown as localhost:50051), so what the README shows is what go test runs.
func TestReadmeShowsTheExamples(t *testing.T) {
	readme := must(os.ReadFile("../README.md"))(t)
	source := string(must(os.ReadFile("example_test.go"))(t))
	shown := regexp.MustCompile("(?s)<!-- (Example\\w+) -->\n```go\n(.*?)\n```").FindAllSubmatch(readme, -1)
	if len(shown) < 6 {
		t.Fatalf("the README shows %d examples, want one per service", len(shown))
	}
	for _, match := range shown {
		name, code := string(match[1]), string(match[2])
		body := regexp.MustCompile(`(?s)func ` + name + `\(\) \{\n(.*?)\n\}\n`).FindStringSubmatch(source)
		if body == nil {
			t.Errorf("the README shows %s, which example_test.go lacks", name)
			continue
		}
		lines := strings.Split(body[1], "\n")
		for i, line := range lines {
			lines[i] = strings.Replace(strings.TrimPrefix(line, "\t"), "serverAddr", `"localhost:50051"`, 1)
		}
		if want := strings.Join(lines, "\n"); code != want {
			t.Errorf("the README's %s differs from example_test.go:\n%s\nwant:\n%s", name, code, want)
		}
	}
}

// The README's `<!-- example: name -->` blocks are the `// example: name` ... `// end`
// blocks of the tests (the TLS one needs a TLS server, so it is a test, not an Example).
func TestReadmeShowsTheTestBlocks(t *testing.T) {
	readme := string(must(os.ReadFile("../README.md"))(t))
	files := must(filepath.Glob("*_test.go"))(t)
	found := 0
	for _, file := range files {
		source := string(must(os.ReadFile(file))(t))
		for _, block := range regexp.MustCompile(`(?s)\n\t// example: ([\w ]+)\n(.*?)\n\t// end\n`).FindAllStringSubmatch(source, -1) {
			found++
			name, lines := block[1], strings.Split(block[2], "\n")
			for i, line := range lines {
				lines[i] = strings.TrimPrefix(line, "\t")
			}
			shown := regexp.MustCompile("(?s)<!-- example: " + regexp.QuoteMeta(name) + " -->\n```go\n(.*?)\n```").FindStringSubmatch(readme)
			if shown == nil {
				t.Errorf("the README lacks the %s example of %s", name, file)
			} else if want := strings.Join(lines, "\n"); shown[1] != want {
				t.Errorf("the README's %s example differs from %s:\n%s\nwant:\n%s", name, file, shown[1], want)
			}
		}
	}
	if strings.Count(readme, "<!-- example: ") != found {
		t.Errorf("the README shows %d test blocks, the tests have %d", strings.Count(readme, "<!-- example: "), found)
	}
}

// Every RPC of every service has a row in the README's coverage table.
func TestReadmeCoversEveryRPC(t *testing.T) {
	readme := string(must(os.ReadFile("../README.md"))(t))
	rows, serviceCount := 0, 0
	protoregistry.GlobalFiles.RangeFiles(func(file protoreflect.FileDescriptor) bool {
		services := file.Services()
		for i := range services.Len() {
			service := services.Get(i)
			label := string(service.Name())
			if strings.HasPrefix(string(service.FullName()), "envoy.") {
				label = "envoy " + label
			}
			if !strings.HasPrefix(string(service.FullName()), "cachet.") && !strings.HasPrefix(string(service.FullName()), "envoy.") {
				continue
			}
			serviceCount++
			methods := service.Methods()
			for j := range methods.Len() {
				rows++
				row := "| " + label + " | " + string(methods.Get(j).Name()) + " | "
				if !strings.Contains(readme, row) {
					t.Errorf("README coverage table lacks a row %q", row)
				}
			}
		}
		return true
	})
	if serviceCount != 6 || rows < 90 {
		t.Fatalf("found %d services and %d RPCs in the registry, want all six services", serviceCount, rows)
	}
}
