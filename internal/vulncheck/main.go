// Command vulncheck reads the JSON stream of govulncheck (-format json) on
// its standard input and decides what make test makes of it: a
// vulnerability that the code calls in a module the project requires
// fails, with its ID and fixed version; one in the Go standard library is
// reported as a warning naming the Go release that fixes it, since the
// standard library is the builder's toolchain, not a requirement of
// go.mod (release images build with the newest patch release; see
// docs/OPERATIONS.md, "Vulnerabilities").
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
)

// finding is what the command reads of govulncheck's "finding" messages.
type finding struct {
	OSV          string `json:"osv"`
	FixedVersion string `json:"fixed_version"`
	Trace        []struct {
		Module   string `json:"module"`
		Version  string `json:"version"`
		Package  string `json:"package"`
		Function string `json:"function"`
	} `json:"trace"`
}

func main() {
	failed, err := check(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulncheck:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

// check reports the called vulnerabilities of in to out, and whether any
// is in a required module.
func check(in io.Reader, out io.Writer) (failed bool, err error) {
	dec := json.NewDecoder(in)
	called := map[string]string{} // "module version: OSV" -> fixed version
	messages := 0
	for {
		var msg struct {
			Finding *finding `json:"finding"`
		}
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return false, fmt.Errorf("reading govulncheck's output: %w", err)
		}
		messages++
		f := msg.Finding
		// Only a trace whose innermost frame is a function is a call;
		// the others say a vulnerable package or module is present.
		if f == nil || len(f.Trace) == 0 || f.Trace[0].Function == "" {
			continue
		}
		called[f.Trace[0].Module+" "+f.Trace[0].Version+": "+f.OSV] = f.FixedVersion
	}
	if messages == 0 {
		return false, errors.New("no output from govulncheck")
	}
	keys := slices.Sorted(maps.Keys(called))
	for _, k := range keys {
		if strings.HasPrefix(k, "stdlib ") {
			fmt.Fprintf(out, "warning: the code calls %s, fixed in Go %s: build releases with it\n", k, strings.TrimPrefix(called[k], "v"))
			continue
		}
		fmt.Fprintf(out, "FAIL: the code calls %s, fixed in %s: raise the requirement in go.mod\n", k, called[k])
		failed = true
	}
	if !failed {
		fmt.Fprintf(out, "vulncheck: no called vulnerability in a required module (%d in the Go standard library)\n", len(keys))
	}
	return failed, nil
}
