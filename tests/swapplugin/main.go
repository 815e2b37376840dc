// Command vpsswaptest is a secrets engine that goes wrong on purpose, for the hot swap tests
// (tests/swap/, tests/openbao/test_swap_openbao.py). The fault is fixed at build time:
//
//	-ldflags "-X main.version=v3.0.0 -X main.fault=exit-in-setup"
//
// faults: exit-at-start (before the handshake), exit-in-setup, hang-in-setup, setup-error,
// special-paths (answers other special paths), type (answers type credential), none.
// Without a fault it is a plain backend: Setup dials the broker id, every read answers its
// version. It uses the demo plugins' protos (vaultpluginshim/baoplugin/pb).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"vaultpluginshim/baoplugin/logicalpb"
	"vaultpluginshim/baoplugin/pb"
)

var (
	version = "v0.0.0"
	fault   = "none"
)

var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  5,
	MagicCookieKey:   "VAULT_BACKEND_PLUGIN",
	MagicCookieValue: "6669da05-b1c8-4f49-97d9-c8e5bed98e20",
}

type backend struct {
	pb.UnimplementedBackendServer
	broker *plugin.GRPCBroker
	log    hclog.Logger
	conn   *grpc.ClientConn
}

func (b *backend) Setup(ctx context.Context, args *pb.SetupArgs) (*pb.SetupReply, error) {
	switch fault {
	case "exit-in-setup":
		b.log.Error("fault: exiting during Setup")
		os.Exit(3)
	case "hang-in-setup":
		b.log.Error("fault: hanging in Setup")
		<-ctx.Done()
		select {}
	case "setup-error":
		return &pb.SetupReply{Err: "fault: this version refuses its configuration"}, nil
	}
	conn, err := b.broker.Dial(args.BrokerId)
	if err != nil {
		return &pb.SetupReply{Err: fmt.Sprintf("dial broker id %d: %v", args.BrokerId, err)}, nil
	}
	b.conn = conn
	return &pb.SetupReply{}, nil
}

func (b *backend) Type(context.Context, *pb.Empty) (*pb.TypeReply, error) {
	if fault == "type" {
		return &pb.TypeReply{Type: 2}, nil
	}
	return &pb.TypeReply{Type: 1}, nil
}

func (b *backend) SpecialPaths(context.Context, *pb.Empty) (*pb.SpecialPathsReply, error) {
	paths := &pb.Paths{}
	if fault == "special-paths" {
		paths.Unauthenticated = []string{"open/*"}
	}
	return &pb.SpecialPathsReply{Paths: paths}, nil
}

func (b *backend) Initialize(context.Context, *pb.InitializeArgs) (*pb.InitializeReply, error) {
	return &pb.InitializeReply{}, nil
}

func (b *backend) Cleanup(context.Context, *pb.Empty) (*pb.Empty, error) {
	if b.conn != nil {
		b.conn.Close()
	}
	return &pb.Empty{}, nil
}

func (b *backend) InvalidateKey(context.Context, *pb.InvalidateKeyArgs) (*pb.Empty, error) {
	return &pb.Empty{}, nil
}

func (b *backend) HandleExistenceCheck(context.Context, *pb.HandleExistenceCheckArgs) (*pb.HandleExistenceCheckReply, error) {
	return &pb.HandleExistenceCheckReply{}, nil
}

func (b *backend) HandleRequest(ctx context.Context, args *pb.HandleRequestArgs) (*pb.HandleRequestReply, error) {
	data, _ := json.Marshal(map[string]interface{}{"version": version, "fault": fault, "pid": os.Getpid()})
	return &pb.HandleRequestReply{Response: &pb.Response{Data: string(data)}}, nil
}

type versionServer struct{}

func (versionServer) Version(context.Context, *logicalpb.Empty) (*logicalpb.VersionReply, error) {
	return &logicalpb.VersionReply{PluginVersion: version}, nil
}

type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	log hclog.Logger
}

func (p grpcPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterBackendServer(s, &backend{broker: broker, log: p.log})
	logicalpb.RegisterPluginVersionServer(s, versionServer{})
	return nil
}

func (p grpcPlugin) GRPCClient(context.Context, *plugin.GRPCBroker, *grpc.ClientConn) (interface{}, error) {
	return nil, nil
}

func main() {
	logger := hclog.New(&hclog.LoggerOptions{Name: "vpsswaptest", Level: hclog.Debug, Output: os.Stderr,
		JSONFormat: true}).With("plugin_version", version, "fault", fault)
	if fault == "exit-at-start" {
		logger.Error("fault: exiting before the handshake")
		os.Exit(2)
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: handshake,
		Plugins:         plugin.PluginSet{"backend": grpcPlugin{log: logger}},
		GRPCServer:      plugin.DefaultGRPCServer,
		Logger:          logger,
	})
}
