// Command loadgen is the benchmark's closed-loop V2 gRPC client, in Go so that on a small
// machine the load generator takes as little CPU as possible from the server it measures.
//
//	loadgen -target 127.0.0.1:8001 -request req.bin -output-bytes 40 -concurrency 64 \
//	    -duration 8 -warmup 2
//
// Each of `concurrency` clients sends the same pre-serialized ModelInferRequest (written by
// bench_server.py from the protocol's own messages), waits for the answer, checks that it
// carries one output of the expected size (raw or typed FP32), and sends the next. All
// clients share one connection. It prints one JSON line: the measured window's request
// count, errors, throughput and latency percentiles (the warm-up is discarded).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

const method = "/inference.GRPCInferenceService/ModelInfer"

// rawCodec passes serialized messages through: the request is built once, and the answer is
// read with protowire, so no generated code is needed.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

// Field numbers of the V2 protocol's ModelInferResponse, InferOutputTensor and
// InferTensorContents.
const (
	responseOutputs   = 5
	responseRaw       = 6
	outputContents    = 5
	contentsFP32      = 6
	bytesPerFP32Value = 4
)

// field returns the bytes of the first length-delimited field `number` of a message.
func field(message []byte, number protowire.Number) ([]byte, bool) {
	for len(message) > 0 {
		num, typ, n := protowire.ConsumeTag(message)
		if n < 0 {
			return nil, false
		}
		message = message[n:]
		if num == number && typ == protowire.BytesType {
			value, m := protowire.ConsumeBytes(message)
			return value, m >= 0
		}
		m := protowire.ConsumeFieldValue(num, typ, message)
		if m < 0 {
			return nil, false
		}
		message = message[m:]
	}
	return nil, false
}

// outputBytes is the size of the answer's first output, raw or as typed FP32 contents.
func outputBytes(response []byte) (int, error) {
	if raw, ok := field(response, responseRaw); ok {
		return len(raw), nil
	}
	output, ok := field(response, responseOutputs)
	if !ok {
		return 0, errors.New("response has no outputs")
	}
	contents, ok := field(output, outputContents)
	if !ok {
		return 0, errors.New("output has no contents")
	}
	packed, ok := field(contents, contentsFP32)
	if !ok {
		return 0, errors.New("output has no fp32_contents")
	}
	return len(packed) / bytesPerFP32Value * bytesPerFP32Value, nil
}

func percentile(sorted []float64, q float64) float64 {
	// numpy's default (linear interpolation), as the Python load generator reports.
	pos := q / 100 * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return sorted[lo] + (sorted[hi]-sorted[lo])*(pos-float64(lo))
}

func main() {
	target := flag.String("target", "127.0.0.1:8001", "host:port of the server (loopback only)")
	requestPath := flag.String("request", "", "file holding one serialized ModelInferRequest")
	expected := flag.Int("output-bytes", 0, "size of the first output every answer must carry")
	concurrency := flag.Int("concurrency", 1, "closed-loop clients")
	duration := flag.Float64("duration", 8, "measured seconds")
	warmup := flag.Float64("warmup", 2, "discarded seconds before the measured window")
	flag.Parse()

	// The project's network rule: benchmarks dial 127.0.0.0/8 and nothing else.
	host, _, err := net.SplitHostPort(*target)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		fmt.Fprintf(os.Stderr, "loadgen: -target %q is not a loopback IP address and port\n", *target)
		os.Exit(2)
	}
	payload, err := os.ReadFile(*requestPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	conn, err := grpc.NewClient("passthrough:///"+*target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{}), grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	defer conn.Close()

	begin := time.Now()
	startMeasure := begin.Add(time.Duration(*warmup * float64(time.Second)))
	stopAt := startMeasure.Add(time.Duration(*duration * float64(time.Second)))
	var (
		mu        sync.Mutex
		latencies []float64
		failures  int
		bad       error
	)
	var wg sync.WaitGroup
	for i := 0; i < *concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]float64, 0, 4096)
			errorsSeen := 0
			request := payload
			for {
				sent := time.Now()
				if !sent.Before(stopAt) {
					break
				}
				var response []byte
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := conn.Invoke(ctx, method, &request, &response)
				cancel()
				done := time.Now()
				if err != nil {
					errorsSeen++
					continue
				}
				if size, err := outputBytes(response); err != nil || size != *expected {
					mu.Lock()
					bad = fmt.Errorf("unexpected response (output bytes %d, want %d): %v", size, *expected, err)
					mu.Unlock()
					return
				}
				if !sent.Before(startMeasure) && !done.After(stopAt) {
					mine = append(mine, done.Sub(sent).Seconds()*1000)
				}
			}
			mu.Lock()
			latencies = append(latencies, mine...)
			failures += errorsSeen
			mu.Unlock()
		}()
	}
	wg.Wait()
	if bad != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", bad)
		os.Exit(1)
	}
	sort.Float64s(latencies)
	summary := map[string]any{
		"requests":   len(latencies),
		"errors":     failures,
		"throughput": float64(len(latencies)) / *duration,
		"p50_ms":     nil, // JSON has no NaN: no answer in the window means no percentiles
		"p99_ms":     nil,
	}
	if len(latencies) > 0 {
		summary["p50_ms"] = percentile(latencies, 50)
		summary["p99_ms"] = percentile(latencies, 99)
	}
	out, err := json.Marshal(summary)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	fmt.Println(string(out))
}
