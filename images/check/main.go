// Command check reads Dockerfiles with BuildKit's own parser and runs BuildKit's build checks on
// them (what `docker build --check` reports), without a Docker engine and without a network:
// every base image resolves to a minimal image config, so nothing is pulled.
//
//	go run . FILE...
//
// It prints one JSON object per file: its stages (name, base, number of instructions), the
// check warnings and any error. The exit status is 1 when a file has an error or a warning.
// tests/unit/images builds it into the user's cache and compares its view with dockerlint's.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	digest "github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

type stage struct {
	Name     string `json:"name"`
	Base     string `json:"base"`
	Commands int    `json:"commands"`
}

type warning struct {
	Rule   string `json:"rule"`
	Detail string `json:"detail"`
	Line   int    `json:"line"`
}

type report struct {
	File     string    `json:"file"`
	Stages   []stage   `json:"stages"`
	Warnings []warning `json:"warnings"`
	Error    string    `json:"error,omitempty"`
}

// offlineResolver answers every image lookup with a linux/amd64 config that sets only PATH, as the
// python and nvidia/cuda images do, so the checks that follow ENV and ARG see a realistic base.
type offlineResolver struct{}

func (offlineResolver) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	config := []byte(`{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}}`)
	return ref, digest.FromBytes([]byte(ref)), config, nil
}

func check(ctx context.Context, path string) report {
	out := report{File: path, Stages: []stage{}, Warnings: []warning{}}
	dt, err := os.ReadFile(path)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	parsed, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		out.Error = err.Error()
		return out
	}
	for _, w := range parsed.Warnings {
		line := 0
		if w.Location != nil {
			line = w.Location.Start.Line
		}
		out.Warnings = append(out.Warnings, warning{Rule: "parser", Detail: w.Short, Line: line})
	}
	stages, _, err := instructions.Parse(parsed.AST, nil)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	for _, s := range stages {
		out.Stages = append(out.Stages, stage{Name: s.Name, Base: s.BaseName, Commands: len(s.Commands)})
	}
	definition, err := llb.Scratch().Marshal(ctx)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	sourceMap := llb.NewSourceMap(nil, path, "Dockerfile", dt)
	sourceMap.Definition = definition
	results, err := dockerfile2llb.DockerfileLint(ctx, dt, dockerfile2llb.ConvertOpt{
		SourceMap:    sourceMap,
		MetaResolver: offlineResolver{},
	})
	if err != nil {
		out.Error = err.Error()
		return out
	}
	for _, w := range results.Warnings {
		line := 0
		if w.Location != nil && len(w.Location.Ranges) > 0 {
			line = int(w.Location.Ranges[0].Start.Line)
		}
		out.Warnings = append(out.Warnings, warning{Rule: w.RuleName, Detail: w.Detail, Line: line})
	}
	if results.Error != nil {
		out.Error = results.Error.Message
	}
	return out
}

func main() {
	logrus.SetLevel(logrus.WarnLevel)
	ctx := context.Background()
	status := 0
	encoder := json.NewEncoder(os.Stdout)
	for _, path := range os.Args[1:] {
		result := check(ctx, path)
		if result.Error != "" || len(result.Warnings) > 0 {
			status = 1
		}
		if err := encoder.Encode(result); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	os.Exit(status)
}
