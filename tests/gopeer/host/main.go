// Command host is the Go side of vault-plugin-shim's interop tests: it launches a
// plugin the way Vault does, with HashiCorp go-plugin (Debian's 1.0.1)
// plugin.NewClient: magic cookie VAULT_BACKEND_PLUGIN, protocol version 5, gRPC
// only, AutoMTLS, SecureConfig (sha256), StartTimeout, and an hclog JSON logger
// at trace level on stderr (so the plugin's stderr lines are re-logged there with
// their own @level, under the module name "host.<plugin file name>").
//
// Usage:
//
//	host --plugin PATH [flags] ACTION [ARGS...]
//
// Flags (Go flag syntax: -name or --name, "--name value" or "--name=value";
// booleans need "--name=false"; all flags come before ACTION):
//
//	--plugin PATH          plugin executable (required); becomes exec.Cmd.Path
//	--arg ARG              argument for the plugin (repeatable, in order)
//	--env K=V              extra environment entry for the plugin (repeatable).
//	                       cmd.Env starts as PATH=/usr/local/bin:/usr/bin:/bin,
//	                       then VAULT_PLUGIN_AUTOMTLS_ENABLED=true (if --automtls),
//	                       then these. NOTE go-plugin 1.0.1 then appends the HOST's
//	                       own os.Environ() and its handshake variables, so start
//	                       the host with a minimal environment.
//	--sha256 HEX           expected sha256 for SecureConfig. Default: hash the plugin
//	                       file once at start (like a catalog registration). Any hex
//	                       string is accepted, so a WRONG checksum can be given.
//	                       "none" disables SecureConfig.
//	--cookie-key K         magic cookie key   (default VAULT_BACKEND_PLUGIN)
//	--cookie-value V       magic cookie value (default 6669da05-b1c8-4f49-97d9-c8e5bed98e20)
//	--protocol N           HandshakeConfig.ProtocolVersion (default 5)
//	--automtls=BOOL        ClientConfig.AutoMTLS (default true)
//	--start-timeout D      ClientConfig.StartTimeout (default 60s)
//	--call-timeout D       deadline of each RPC (default 30s)
//	--kill MODE            after the action: "graceful" (client.Kill(), default) or
//	                       "hard" (SIGKILL the started PID, then client.Kill())
//	--hold-ms N            sleep N ms after the action, before killing
//	--hold-stdin           after the action, log {"@message":"gopeer host holding",
//	                       "pid":N} on stderr and wait for EOF on stdin, then kill
//	--iterations N         bench / unary-bench: iterations or total calls (default 10 / 1000)
//	--concurrency C        unary-bench: concurrent callers on one client (default 1)
//	--method M             unary-bench: "ping" (default) or "double"
//
// Actions (results are JSON values, in order):
//
//	start                  launch + handshake only; results []
//	ping                   PingPong.Ping; results ["version=<plugin version>"]
//	double N...            Test.Double per N; results [outputs...]
//	stream [N...]          one bidirectional Test.Stream sending N... (default 1 2 3),
//	                       results [outputs...] in order received
//	printkv KEY VALUE      Test.PrintKV with ValueString (an integer VALUE is sent as
//	                       ValueInt); KEY "log.error" etc. makes the plugin log VALUE
//	                       at that level; results []
//	broker SCENARIO...     GRPCBroker exercises (see the plugin's Bidirectional):
//	                         host-dials:   plugin AcceptAndServes a PingPong, host Dials it
//	                         plugin-dials: host AcceptAndServes a PingPong answering
//	                                       "host nonce=<random>", plugin Dials it and
//	                                       relays the answer on a new id the host dials
//	                       results [{"scenario","ok","broker_id","msg","error"}...];
//	                       the run is ok only if every scenario is.
//	bench                  --iterations times: new client, launch, handshake, first
//	                       Ping, Kill. results [{"iteration","pid","handshake_ms",
//	                       "first_call_ms","kill_ms"}...]; timings holds
//	                       {"min","p50","mean","max"} of each, in ms.
//	unary-bench            one client, --iterations calls of --method spread over
//	                       --concurrency goroutines; results [{"calls","concurrency",
//	                       "method","p50_us","p99_us","mean_us","max_us","calls_per_s"}]
//
// Output: exactly one JSON object on stdout when done:
//
//	{"ok": bool, "error": string, "pid": int|null, "results": [...], "timings": {...},
//	 "action": string, "pids": [...], "plugin_exited": bool}
//
// "pid" is the plugin process this host started (the last one for bench; null if
// none was started). Timings (ms) for single runs: checksum_ms (only when the host
// hashed the file), handshake_ms (NewClient until client.Client() returned:
// checksum, exec, handshake line, gRPC client created; go-plugin 1.0.1 dials
// lazily, so the TLS handshake itself lands in the first call), dispense_ms,
// first_call_ms (from launch until the first RPC answered), action_ms, kill_ms,
// total_ms. Exit code 0 if ok, 1 otherwise (2 for usage errors).
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	grpctest "github.com/hashicorp/go-plugin/test/grpc"
	"google.golang.org/grpc"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

type options struct {
	pluginPath   string
	args         multiFlag
	envs         multiFlag
	sha256Hex    string
	cookieKey    string
	cookieValue  string
	protocol     uint
	autoMTLS     bool
	startTimeout time.Duration
	callTimeout  time.Duration
	kill         string
	holdMs       int
	holdStdin    bool
	iterations   int
	concurrency  int
	method       string
}

type output struct {
	OK           bool                   `json:"ok"`
	Error        string                 `json:"error"`
	PID          *int                   `json:"pid"`
	Results      []interface{}          `json:"results"`
	Timings      map[string]interface{} `json:"timings"`
	Action       string                 `json:"action"`
	PIDs         []int                  `json:"pids"`
	PluginExited bool                   `json:"plugin_exited"`
}

// peer is what Dispense returns: clients for both services plus the broker.
type peer struct {
	test   grpctest.TestClient
	ping   grpctest.PingPongClient
	broker *plugin.GRPCBroker
}

type peerPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (p *peerPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("gopeer host has no server side")
}

func (p *peerPlugin) GRPCClient(ctx context.Context, b *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return &peer{test: grpctest.NewTestClient(c), ping: grpctest.NewPingPongClient(c), broker: b}, nil
}

var (
	logger hclog.Logger
	opts   options
	out    = output{Results: []interface{}{}, Timings: map[string]interface{}{}, PIDs: []int{}}

	// current client, for the signal handler
	curMu     sync.Mutex
	curClient *plugin.Client
)

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000.0 }

func emit(code int) {
	if len(out.PIDs) > 0 {
		p := out.PIDs[len(out.PIDs)-1]
		out.PID = &p
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(&out); err != nil {
		fmt.Fprintf(os.Stderr, "gopeer host: cannot encode output: %v\n", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func fail(err error) {
	out.OK = false
	if out.Error == "" {
		out.Error = err.Error()
	}
	logger.Error("gopeer host failed", "error", out.Error)
	emit(1)
}

func fileSHA256(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// launched is one started plugin.
type launched struct {
	client *plugin.Client
	cmd    *exec.Cmd
	peer   *peer
	pid    int
}

func newClient(sum []byte) (*plugin.Client, *exec.Cmd) {
	cmd := exec.Command(opts.pluginPath, opts.args...)
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	if opts.autoMTLS {
		cmd.Env = append(cmd.Env, "VAULT_PLUGIN_AUTOMTLS_ENABLED=true")
	}
	cmd.Env = append(cmd.Env, opts.envs...)
	cfg := &plugin.ClientConfig{
		HandshakeConfig: plugin.HandshakeConfig{
			ProtocolVersion:  opts.protocol,
			MagicCookieKey:   opts.cookieKey,
			MagicCookieValue: opts.cookieValue,
		},
		Plugins:          plugin.PluginSet{"backend": &peerPlugin{}},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         opts.autoMTLS,
		StartTimeout:     opts.startTimeout,
		Logger:           logger,
	}
	if sum != nil {
		cfg.SecureConfig = &plugin.SecureConfig{Checksum: sum, Hash: sha256.New()}
	}
	c := plugin.NewClient(cfg)
	curMu.Lock()
	curClient = c
	curMu.Unlock()
	return c, cmd
}

// launch starts the plugin and dispenses the peer; the pid is recorded in out
// as soon as the process exists, even if the handshake then fails.
func launch(sum []byte, timings map[string]interface{}) (*launched, error) {
	t0 := time.Now()
	c, cmd := newClient(sum)
	l := &launched{client: c, cmd: cmd}
	rpc, err := c.Client()
	if cmd.Process != nil {
		l.pid = cmd.Process.Pid
		out.PIDs = append(out.PIDs, l.pid)
	}
	if err != nil {
		return l, err
	}
	t1 := time.Now()
	raw, err := rpc.Dispense("backend")
	if err != nil {
		return l, err
	}
	l.peer = raw.(*peer)
	if timings != nil {
		timings["handshake_ms"] = ms(t1.Sub(t0))
		timings["dispense_ms"] = ms(time.Since(t1))
	}
	return l, nil
}

func (l *launched) kill(mode string) error {
	switch mode {
	case "graceful", "":
	case "hard":
		if l.pid > 0 {
			if err := syscall.Kill(l.pid, syscall.SIGKILL); err != nil {
				logger.Warn("SIGKILL of plugin failed", "pid", l.pid, "error", err.Error())
			}
		}
	default:
		return fmt.Errorf("unknown --kill mode %q", mode)
	}
	l.client.Kill()
	return nil
}

func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opts.callTimeout)
}

func doPing(p *peer) (string, error) {
	ctx, cancel := callCtx()
	defer cancel()
	r, err := p.ping.Ping(ctx, &grpctest.PingRequest{})
	if err != nil {
		return "", err
	}
	return r.Msg, nil
}

func doDouble(p *peer, n int32) (int32, error) {
	ctx, cancel := callCtx()
	defer cancel()
	r, err := p.test.Double(ctx, &grpctest.TestRequest{Input: n})
	if err != nil {
		return 0, err
	}
	return r.Output, nil
}

func parseInts(args []string) ([]int32, error) {
	var ns []int32
	for _, a := range args {
		n, err := strconv.ParseInt(a, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("not an int32: %q", a)
		}
		ns = append(ns, int32(n))
	}
	return ns, nil
}

func doStream(p *peer, ns []int32) ([]interface{}, error) {
	ctx, cancel := callCtx()
	defer cancel()
	st, err := p.test.Stream(ctx)
	if err != nil {
		return nil, err
	}
	var res []interface{}
	for _, n := range ns {
		if err := st.Send(&grpctest.TestRequest{Input: n}); err != nil {
			return res, err
		}
		r, err := st.Recv()
		if err != nil {
			return res, err
		}
		res = append(res, r.Output)
	}
	if err := st.CloseSend(); err != nil {
		return res, err
	}
	if _, err := st.Recv(); err != io.EOF {
		if err == nil {
			err = errors.New("unexpected extra stream message")
		}
		return res, err
	}
	return res, nil
}

type brokerResult struct {
	Scenario string `json:"scenario"`
	OK       bool   `json:"ok"`
	BrokerID uint32 `json:"broker_id"`
	Msg      string `json:"msg"`
	Error    string `json:"error"`
}

type hostPing struct{ msg string }

func (h *hostPing) Ping(ctx context.Context, req *grpctest.PingRequest) (*grpctest.PongResponse, error) {
	return &grpctest.PongResponse{Msg: h.msg}, nil
}

// dialAndPing dials a broker id the plugin serves and pings it.
func dialAndPing(p *peer, id uint32) (string, error) {
	conn, err := p.broker.Dial(id)
	if err != nil {
		return "", fmt.Errorf("host broker dial id %d: %v", id, err)
	}
	defer conn.Close()
	ctx, cancel := callCtx()
	defer cancel()
	r, err := grpctest.NewPingPongClient(conn).Ping(ctx, &grpctest.PingRequest{})
	if err != nil {
		return "", fmt.Errorf("host brokered ping on id %d: %v", id, err)
	}
	return r.Msg, nil
}

func doBroker(p *peer, scenario string) brokerResult {
	res := brokerResult{Scenario: scenario}
	var err error
	switch scenario {
	case "host-dials":
		ctx, cancel := callCtx()
		var r *grpctest.BidirectionalResponse
		r, err = p.test.Bidirectional(ctx, &grpctest.BidirectionalRequest{Id: 0})
		cancel()
		if err == nil {
			res.BrokerID = r.Id
			res.Msg, err = dialAndPing(p, r.Id)
		}
	case "plugin-dials":
		nb := make([]byte, 8)
		if _, err = rand.Read(nb); err != nil {
			break
		}
		nonce := hex.EncodeToString(nb)
		id := p.broker.NextId()
		res.BrokerID = id
		go p.broker.AcceptAndServe(id, func(o []grpc.ServerOption) *grpc.Server {
			s := grpc.NewServer(o...)
			grpctest.RegisterPingPongServer(s, &hostPing{msg: "host nonce=" + nonce})
			return s
		})
		ctx, cancel := callCtx()
		var r *grpctest.BidirectionalResponse
		r, err = p.test.Bidirectional(ctx, &grpctest.BidirectionalRequest{Id: id})
		cancel()
		if err == nil {
			res.Msg, err = dialAndPing(p, r.Id)
		}
		if err == nil && !strings.Contains(res.Msg, "nonce="+nonce) {
			err = fmt.Errorf("relayed message %q lacks nonce %s", res.Msg, nonce)
		}
	default:
		err = fmt.Errorf("unknown broker scenario %q (want host-dials or plugin-dials)", scenario)
	}
	if err != nil {
		res.Error = err.Error()
	} else {
		res.OK = true
	}
	return res
}

type stats struct {
	Min  float64 `json:"min"`
	P50  float64 `json:"p50"`
	Mean float64 `json:"mean"`
	Max  float64 `json:"max"`
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	// nearest rank
	k := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	if k < 0 {
		k = 0
	}
	if k >= len(sorted) {
		k = len(sorted) - 1
	}
	return sorted[k]
}

func summarize(xs []float64) stats {
	if len(xs) == 0 {
		return stats{}
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	return stats{Min: s[0], P50: percentile(s, 50), Mean: sum / float64(len(s)), Max: s[len(s)-1]}
}

func hold() {
	if opts.holdMs > 0 {
		time.Sleep(time.Duration(opts.holdMs) * time.Millisecond)
	}
	if opts.holdStdin {
		pid := 0
		if len(out.PIDs) > 0 {
			pid = out.PIDs[len(out.PIDs)-1]
		}
		logger.Info("gopeer host holding", "pid", pid)
		io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	}
}

func runBench(sum []byte) error {
	var hs, fc, kl []float64
	for i := 0; i < opts.iterations; i++ {
		t0 := time.Now()
		l, err := launch(sum, nil)
		if err != nil {
			if l != nil {
				l.client.Kill()
			}
			return fmt.Errorf("iteration %d: %v", i, err)
		}
		t1 := time.Now()
		if _, err := doPing(l.peer); err != nil {
			l.client.Kill()
			return fmt.Errorf("iteration %d: ping: %v", i, err)
		}
		t2 := time.Now()
		if err := l.kill(opts.kill); err != nil {
			return err
		}
		t3 := time.Now()
		h, f, k := ms(t1.Sub(t0)), ms(t2.Sub(t0)), ms(t3.Sub(t2))
		hs, fc, kl = append(hs, h), append(fc, f), append(kl, k)
		out.Results = append(out.Results, map[string]interface{}{
			"iteration": i, "pid": l.pid, "handshake_ms": h, "first_call_ms": f, "kill_ms": k,
		})
	}
	out.Timings["handshake_ms"] = summarize(hs)
	out.Timings["first_call_ms"] = summarize(fc)
	out.Timings["kill_ms"] = summarize(kl)
	return nil
}

func runUnaryBench(p *peer) error {
	n, c := opts.iterations, opts.concurrency
	if c < 1 {
		c = 1
	}
	call := func() error { _, err := doPing(p); return err }
	switch opts.method {
	case "ping":
	case "double":
		call = func() error { _, err := doDouble(p, 21); return err }
	default:
		return fmt.Errorf("unknown --method %q", opts.method)
	}
	// warm-up: establishes the connection (TLS handshake) outside the measurement
	if err := call(); err != nil {
		return err
	}
	lat := make([]float64, n)
	var next int64 = -1
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				next++
				i := next
				stop := firstErr != nil
				mu.Unlock()
				if stop || i >= int64(n) {
					return
				}
				t := time.Now()
				err := call()
				lat[i] = float64(time.Since(t).Nanoseconds()) / 1000.0
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	if firstErr != nil {
		return firstErr
	}
	s := append([]float64(nil), lat...)
	sort.Float64s(s)
	sum := 0.0
	for _, x := range s {
		sum += x
	}
	r := map[string]interface{}{
		"calls": n, "concurrency": c, "method": opts.method,
		"p50_us": percentile(s, 50), "p99_us": percentile(s, 99),
		"mean_us": 0.0, "max_us": 0.0, "calls_per_s": 0.0,
	}
	if n > 0 {
		r["mean_us"] = sum / float64(n)
		r["max_us"] = s[n-1]
		r["calls_per_s"] = float64(n) / wall.Seconds()
	}
	out.Results = append(out.Results, r)
	out.Timings["wall_ms"] = ms(wall)
	return nil
}

func runAction(l *launched, action string, args []string, t0 time.Time) error {
	p := l.peer
	first := true
	markFirst := func() {
		if first {
			out.Timings["first_call_ms"] = ms(time.Since(t0))
			first = false
		}
	}
	switch action {
	case "start":
		return nil
	case "ping":
		msg, err := doPing(p)
		if err != nil {
			return err
		}
		markFirst()
		out.Results = append(out.Results, msg)
	case "double":
		ns, err := parseInts(args)
		if err != nil {
			return err
		}
		for _, n := range ns {
			r, err := doDouble(p, n)
			if err != nil {
				return err
			}
			markFirst()
			out.Results = append(out.Results, r)
		}
	case "stream":
		if len(args) == 0 {
			args = []string{"1", "2", "3"}
		}
		ns, err := parseInts(args)
		if err != nil {
			return err
		}
		res, err := doStream(p, ns)
		out.Results = append(out.Results, res...)
		if err != nil {
			return err
		}
		markFirst()
	case "printkv":
		if len(args) != 2 {
			return errors.New("printkv needs KEY VALUE")
		}
		req := &grpctest.PrintKVRequest{Key: args[0]}
		if n, err := strconv.ParseInt(args[1], 10, 32); err == nil {
			req.Value = &grpctest.PrintKVRequest_ValueInt{ValueInt: int32(n)}
		} else {
			req.Value = &grpctest.PrintKVRequest_ValueString{ValueString: args[1]}
		}
		ctx, cancel := callCtx()
		defer cancel()
		if _, err := p.test.PrintKV(ctx, req); err != nil {
			return err
		}
		markFirst()
	case "broker":
		if len(args) == 0 {
			return errors.New("broker needs SCENARIO... (host-dials, plugin-dials)")
		}
		var errs []string
		for _, sc := range args {
			r := doBroker(p, sc)
			markFirst()
			out.Results = append(out.Results, r)
			if !r.OK {
				errs = append(errs, sc+": "+r.Error)
			}
		}
		if len(errs) > 0 {
			return errors.New(strings.Join(errs, "; "))
		}
	case "unary-bench":
		if err := runUnaryBench(p); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown action %q", action)
	}
	return nil
}

func main() {
	fs := flag.NewFlagSet("host", flag.ContinueOnError)
	fs.StringVar(&opts.pluginPath, "plugin", "", "plugin executable")
	fs.Var(&opts.args, "arg", "plugin argument (repeatable)")
	fs.Var(&opts.envs, "env", "K=V for the plugin environment (repeatable)")
	fs.StringVar(&opts.sha256Hex, "sha256", "", "expected sha256 hex; default: computed; 'none': no SecureConfig")
	fs.StringVar(&opts.cookieKey, "cookie-key", "VAULT_BACKEND_PLUGIN", "magic cookie key")
	fs.StringVar(&opts.cookieValue, "cookie-value", "6669da05-b1c8-4f49-97d9-c8e5bed98e20", "magic cookie value")
	fs.UintVar(&opts.protocol, "protocol", 5, "plugin protocol version")
	fs.BoolVar(&opts.autoMTLS, "automtls", true, "AutoMTLS")
	fs.DurationVar(&opts.startTimeout, "start-timeout", 60*time.Second, "StartTimeout")
	fs.DurationVar(&opts.callTimeout, "call-timeout", 30*time.Second, "per-RPC deadline")
	fs.StringVar(&opts.kill, "kill", "graceful", "graceful|hard")
	fs.IntVar(&opts.holdMs, "hold-ms", 0, "sleep before killing")
	fs.BoolVar(&opts.holdStdin, "hold-stdin", false, "wait for stdin EOF before killing")
	fs.IntVar(&opts.iterations, "iterations", -1, "bench iterations / unary-bench calls")
	fs.IntVar(&opts.concurrency, "concurrency", 1, "unary-bench concurrency")
	fs.StringVar(&opts.method, "method", "ping", "unary-bench method: ping|double")

	logger = hclog.New(&hclog.LoggerOptions{
		Name:       "host",
		Level:      hclog.Trace,
		Output:     os.Stderr,
		JSONFormat: true,
	})

	if err := fs.Parse(os.Args[1:]); err != nil {
		out.Error = "usage: " + err.Error()
		emit(2)
	}
	rest := fs.Args()
	if opts.pluginPath == "" || len(rest) == 0 {
		out.Error = "usage: host --plugin PATH [flags] ACTION [ARGS...]"
		emit(2)
	}
	action, args := rest[0], rest[1:]
	out.Action = action
	if opts.kill != "graceful" && opts.kill != "hard" {
		out.Error = fmt.Sprintf("usage: --kill must be graceful or hard, not %q", opts.kill)
		emit(2)
	}
	if opts.iterations < 0 {
		opts.iterations = 10
		if action == "unary-bench" {
			opts.iterations = 1000
		}
	}

	// Kill the plugin if we are told to stop.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigs
		curMu.Lock()
		c := curClient
		curMu.Unlock()
		if c != nil {
			c.Kill()
		}
		out.Error = "host interrupted by " + s.String()
		emit(1)
	}()

	tStart := time.Now()
	var sum []byte
	switch opts.sha256Hex {
	case "none":
	case "":
		t := time.Now()
		s, err := fileSHA256(opts.pluginPath)
		if err != nil {
			fail(fmt.Errorf("hashing plugin: %v", err))
		}
		sum = s
		out.Timings["checksum_ms"] = ms(time.Since(t))
	default:
		s, err := hex.DecodeString(opts.sha256Hex)
		if err != nil {
			out.Error = "usage: --sha256 is not hex: " + err.Error()
			emit(2)
		}
		sum = s
	}

	if action == "bench" {
		if err := runBench(sum); err != nil {
			fail(err)
		}
		out.OK = true
		out.PluginExited = true
		out.Timings["total_ms"] = ms(time.Since(tStart))
		emit(0)
	}

	t0 := time.Now()
	l, err := launch(sum, out.Timings)
	if err != nil {
		if l != nil {
			l.client.Kill()
			out.PluginExited = l.client.Exited()
		}
		fail(err)
	}
	tAction := time.Now()
	actErr := runAction(l, action, args, t0)
	out.Timings["action_ms"] = ms(time.Since(tAction))
	hold()
	tKill := time.Now()
	if err := l.kill(opts.kill); err != nil && actErr == nil {
		actErr = err
	}
	out.Timings["kill_ms"] = ms(time.Since(tKill))
	out.PluginExited = l.client.Exited()
	out.Timings["total_ms"] = ms(time.Since(tStart))
	if actErr != nil {
		fail(actErr)
	}
	out.OK = true
	emit(0)
}
