// Command plugin is the Go side of vault-plugin-shim's interop tests: a real
// HashiCorp go-plugin (Debian's 1.0.1) gRPC plugin that a Vault-like host can
// launch. It serves go-plugin's own test services (proto package grpctest):
//
//	grpctest.Test/Double         Output = Input * multiplier
//	grpctest.Test/Stream         each TestRequest answered with Input * multiplier, in order
//	grpctest.Test/PrintKV        logs Key/Value at info; a Key "log.<level>"
//	                             (trace|debug|info|warn|error) logs the string value
//	                             as the message at that level instead
//	grpctest.Test/Bidirectional  broker exercise, see below
//	grpctest.PingPong/Ping       Msg = "version=<version>"
//
// Build-time settings (strings, via the linker):
//
//	go build -ldflags "-X main.version=1.0.0 -X main.multiplier=2"
//
// Handshake: magic cookie VAULT_BACKEND_PLUGIN=6669da05-b1c8-4f49-97d9-c8e5bed98e20,
// protocol version 5, gRPC only (plugin.DefaultGRPCServer). AutoMTLS is used
// whenever the host sends PLUGIN_CLIENT_CERT.
//
// Broker convention (Test/Bidirectional, ids come from GRPCBroker.NextId and are
// never 0):
//
//	Id == 0: the plugin picks a fresh broker id, serves a grpctest.PingPong on it
//	         with GRPCBroker.AcceptAndServe (Ping answers "brokered version=<version>")
//	         and returns that id. The host then dials it ("host dials").
//	Id != 0: the plugin GRPCBroker.Dial()s that id (which the host serves),
//	         calls PingPong/Ping on it, then serves a fresh id whose Ping answers
//	         "relayed <msg it got from the host> via version=<version>" and
//	         returns that id ("plugin dials", then "host dials" to read the
//	         result). Dial/Ping failures are returned as the RPC error.
//
// Logging: hclog JSON on the original stderr, at trace level, with an info line
// "gopeer plugin starting" naming version and multiplier.
//
// Test hooks (environment):
//
//	GOPEER_PLUGIN_EXIT_EARLY=<code>  log an error line and exit with <code>
//	                                 before the handshake.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	grpctest "github.com/hashicorp/go-plugin/test/grpc"
	"google.golang.org/grpc"
)

// Set with -ldflags "-X main.version=... -X main.multiplier=...".
var (
	version    = "0.0.0-dev"
	multiplier = "2"
)

var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  5,
	MagicCookieKey:   "VAULT_BACKEND_PLUGIN",
	MagicCookieValue: "6669da05-b1c8-4f49-97d9-c8e5bed98e20",
}

type testServer struct {
	mult   int32
	broker *plugin.GRPCBroker
	log    hclog.Logger
}

func (s *testServer) Double(ctx context.Context, req *grpctest.TestRequest) (*grpctest.TestResponse, error) {
	return &grpctest.TestResponse{Output: req.Input * s.mult}, nil
}

func (s *testServer) PrintKV(ctx context.Context, req *grpctest.PrintKVRequest) (*grpctest.PrintKVResponse, error) {
	var value interface{}
	switch v := req.Value.(type) {
	case *grpctest.PrintKVRequest_ValueString:
		value = v.ValueString
	case *grpctest.PrintKVRequest_ValueInt:
		value = v.ValueInt
	}
	switch req.Key {
	case "log.trace", "log.debug", "log.info", "log.warn", "log.error":
		msg := fmt.Sprint(value)
		switch req.Key {
		case "log.trace":
			s.log.Trace(msg)
		case "log.debug":
			s.log.Debug(msg)
		case "log.info":
			s.log.Info(msg)
		case "log.warn":
			s.log.Warn(msg)
		case "log.error":
			s.log.Error(msg)
		}
	default:
		s.log.Info("kv", req.Key, value)
	}
	return &grpctest.PrintKVResponse{}, nil
}

// serveBrokered serves a PingPong answering msg on a fresh broker id.
func (s *testServer) serveBrokered(msg string) uint32 {
	id := s.broker.NextId()
	go s.broker.AcceptAndServe(id, func(opts []grpc.ServerOption) *grpc.Server {
		srv := grpc.NewServer(opts...)
		grpctest.RegisterPingPongServer(srv, &pingServer{msg: msg})
		return srv
	})
	return id
}

func (s *testServer) Bidirectional(ctx context.Context, req *grpctest.BidirectionalRequest) (*grpctest.BidirectionalResponse, error) {
	if req.Id == 0 {
		id := s.serveBrokered("brokered version=" + version)
		s.log.Debug("serving brokered PingPong", "broker_id", id)
		return &grpctest.BidirectionalResponse{Id: id}, nil
	}
	conn, err := s.broker.Dial(req.Id)
	if err != nil {
		s.log.Error("broker dial failed", "broker_id", req.Id, "error", err.Error())
		return nil, fmt.Errorf("plugin broker dial id %d: %v", req.Id, err)
	}
	defer conn.Close()
	resp, err := grpctest.NewPingPongClient(conn).Ping(ctx, &grpctest.PingRequest{})
	if err != nil {
		s.log.Error("brokered ping failed", "broker_id", req.Id, "error", err.Error())
		return nil, fmt.Errorf("plugin brokered ping on id %d: %v", req.Id, err)
	}
	id := s.serveBrokered("relayed " + resp.Msg + " via version=" + version)
	s.log.Debug("relaying brokered PingPong", "dialed_id", req.Id, "broker_id", id)
	return &grpctest.BidirectionalResponse{Id: id}, nil
}

func (s *testServer) Stream(stream grpctest.Test_StreamServer) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&grpctest.TestResponse{Output: req.Input * s.mult}); err != nil {
			return err
		}
	}
}

type pingServer struct{ msg string }

func (p *pingServer) Ping(ctx context.Context, req *grpctest.PingRequest) (*grpctest.PongResponse, error) {
	return &grpctest.PongResponse{Msg: p.msg}, nil
}

// peerPlugin registers both services on go-plugin's gRPC server. The plugin
// binary never acts as a client, so GRPCClient is not implemented here.
type peerPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	mult int32
	log  hclog.Logger
}

func (p *peerPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	grpctest.RegisterTestServer(s, &testServer{mult: p.mult, broker: broker, log: p.log})
	grpctest.RegisterPingPongServer(s, &pingServer{msg: "version=" + version})
	return nil
}

func (p *peerPlugin) GRPCClient(ctx context.Context, b *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return nil, fmt.Errorf("gopeer plugin binary has no client side")
}

func main() {
	logger := hclog.New(&hclog.LoggerOptions{
		Name:       "gopeer-plugin",
		Level:      hclog.Trace,
		Output:     os.Stderr,
		JSONFormat: true,
	})
	mult, err := strconv.ParseInt(multiplier, 10, 32)
	if err != nil {
		logger.Error("bad build-time multiplier", "multiplier", multiplier, "error", err.Error())
		os.Exit(2)
	}
	if code := os.Getenv("GOPEER_PLUGIN_EXIT_EARLY"); code != "" {
		n, err := strconv.Atoi(code)
		if err != nil {
			n = 3
		}
		logger.Error("exiting early on request", "version", version, "code", n)
		os.Exit(n)
	}
	logger.Info("gopeer plugin starting", "version", version, "multiplier", mult, "pid", os.Getpid())
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: handshake,
		Plugins: plugin.PluginSet{
			"backend": &peerPlugin{mult: int32(mult), log: logger},
		},
		GRPCServer: plugin.DefaultGRPCServer,
		Logger:     logger,
	})
}
